#include "kiln/serve/autoscaler.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace kiln::serve {
namespace {

AutoscalerOptions opts() {
  AutoscalerOptions o;
  o.min_replicas = 1;
  o.max_replicas = 20;
  o.target = 4;
  o.down_window_s = 60;
  o.up_period_s = 15;
  o.down_period_s = 15;
  return o;
}

TEST(Autoscaler, WithinToleranceHolds) {
  Autoscaler a(opts());
  // 4 replicas, target 4 each: 17.5 is 9% over, inside the 10% band.
  Decision d = a.decide(0, 4, 17.5);
  EXPECT_EQ(d.desired, 4);
  EXPECT_NE(d.reason.find("within tolerance"), std::string::npos) << d.reason;
  // 18 is 12.5% over: ceil(18 / 4) = 5.
  EXPECT_EQ(a.decide(1, 4, 18).desired, 5);
}

TEST(Autoscaler, ScalesUpAtOnceByTheQueueRule) {
  Autoscaler a(opts());
  Decision d = a.decide(0, 2, 24);  // 12 per replica: 24 / 4 = 6 replicas
  EXPECT_EQ(d.desired, 6);
  EXPECT_EQ(d.reason.rfind("scale up", 0), 0u) << d.reason;
}

TEST(Autoscaler, ScaleUpIsRateLimitedPerPeriod) {
  AutoscalerOptions o = opts();
  o.up_pods = 2;
  o.up_percent = 50;
  Autoscaler a(o);
  // From 2: max(2 + 2, ceil(2 * 1.5)) = 4, though the queue asks for 20.
  Decision d = a.decide(0, 2, 80);
  EXPECT_EQ(d.desired, 4);
  EXPECT_NE(d.reason.find("rate limited"), std::string::npos) << d.reason;
  // Same period: the limit counts from the period's start (2): no more.
  EXPECT_EQ(a.decide(5, 4, 80).desired, 4);
  // A new period: from 4, max(6, 6) = 6.
  EXPECT_EQ(a.decide(16, 4, 80).desired, 6);
}

TEST(Autoscaler, ScaleDownWaitsForTheStabilizationWindow) {
  Autoscaler a(opts());
  EXPECT_EQ(a.decide(0, 4, 32).desired, 8);
  // The load is gone at t=10, but 8 was recommended within the last 60 s.
  Decision held = a.decide(10, 8, 0);
  EXPECT_EQ(held.desired, 8);
  EXPECT_NE(held.reason.find("stabilization window"), std::string::npos) << held.reason;
  EXPECT_EQ(a.decide(59, 8, 0).desired, 8);
  // t=61: the recommendation of 8 (t=0) left the window; the rest say 1.
  Decision down = a.decide(61, 8, 0);
  EXPECT_EQ(down.desired, 1);
  EXPECT_EQ(down.reason.rfind("scale down", 0), 0u) << down.reason;
}

TEST(Autoscaler, ScaleDownIsRateLimited) {
  AutoscalerOptions o = opts();
  o.down_window_s = 0;
  o.down_percent = 50;
  Autoscaler a(o);
  EXPECT_EQ(a.decide(0, 8, 0).desired, 4);  // -50% of 8
  EXPECT_EQ(a.decide(5, 4, 0).desired, 4);  // same period: counted from 8, limit 4
  EXPECT_EQ(a.decide(16, 4, 0).desired, 2);
}

TEST(Autoscaler, ClampsToTheReplicaRange) {
  AutoscalerOptions o = opts();
  o.min_replicas = 2;
  o.max_replicas = 3;
  Autoscaler a(o);
  EXPECT_EQ(a.decide(0, 2, 1000).desired, 3);
  o.down_window_s = 0;
  Autoscaler b(o);
  EXPECT_EQ(b.decide(0, 3, 0).desired, 2);
}

TEST(Autoscaler, DecisionIsOneJsonLine) {
  Autoscaler a(opts());
  Decision d = a.decide(12.5, 2, 24);
  std::string line = d.to_json();
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["time"], 12.5);
  EXPECT_EQ(j["metric"], "queue");
  EXPECT_EQ(j["value"], 24);
  EXPECT_EQ(j["current"], 2);
  EXPECT_EQ(j["desired"], 6);
  EXPECT_FALSE(j["reason"].get<std::string>().empty());
}

}  // namespace
}  // namespace kiln::serve
