#include "kiln/diag/metrics_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

namespace kiln::diag {
namespace {

StepRecord step(std::int64_t n, double data, double fwd) {
  StepRecord r;
  r.step = n;
  r.rank = 1;
  r[Phase::kDataWait] = data;
  r[Phase::kForward] = fwd;
  r.step_s = data + fwd;
  r.samples = 64;
  r.comm_bytes = 1000;
  r.comm_s = 0.001;
  r.loss = 0.5;
  return r;
}

TEST(MetricsServer, ServesPrometheusTextOverHttp) {
  auto server = MetricsServer::start("127.0.0.1", 0, 1);
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  (*server)->record_step(step(0, 0.25, 0.75));
  (*server)->record_step(step(1, 0.5, 0.5));

  httplib::Client client("127.0.0.1", (*server)->port());
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  const std::string& body = res->body;
  EXPECT_NE(body.find("kiln_steps_total{rank=\"1\"} 2\n"), std::string::npos) << body;
  EXPECT_NE(body.find("kiln_step_seconds{rank=\"1\"} 1\n"), std::string::npos) << body;
  EXPECT_NE(body.find("kiln_phase_seconds{rank=\"1\",phase=\"data_wait\"} 0.5\n"),
            std::string::npos);
  EXPECT_NE(body.find("kiln_phase_seconds_total{rank=\"1\",phase=\"data_wait\"} 0.75\n"),
            std::string::npos);
  EXPECT_NE(body.find("kiln_samples_per_second{rank=\"1\"} 64\n"), std::string::npos);
  EXPECT_NE(body.find("kiln_comm_bandwidth_bytes_per_second{rank=\"1\"} 1000000\n"),
            std::string::npos);
  EXPECT_NE(body.find("kiln_loader_wait_seconds{rank=\"1\"} 0.5\n"), std::string::npos);
  EXPECT_NE(body.find("kiln_checkpoint_stall_seconds{rank=\"1\"} 0\n"), std::string::npos);
  EXPECT_EQ(client.Get("/other")->status, 404);
}

TEST(MetricsServer, BusyPortIsUnavailableNamingIt) {
  auto first = MetricsServer::start("127.0.0.1", 0, 0);
  ASSERT_TRUE(first.is_ok());
  auto second = MetricsServer::start("127.0.0.1", (*first)->port(), 0);
  ASSERT_FALSE(second.is_ok());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
  EXPECT_NE(second.status().message().find(std::to_string((*first)->port())), std::string::npos);
}

}  // namespace
}  // namespace kiln::diag
