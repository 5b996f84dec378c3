#include "kiln/elastic/script_master.h"

#include <gtest/gtest.h>

#include "kiln/base/socket.h"
#include "kiln/store/memory_store.h"

namespace kiln::elastic {
namespace {

TEST(ScriptMaster, TheLeaderPublishesAFreePortTheOthersRead) {
  store::MemoryStore store;
  auto leader = agree_script_master(store, "g1/script_master", true, "10.0.0.1",
                                    Deadline::after(std::chrono::seconds(1)));
  ASSERT_TRUE(leader.is_ok()) << leader.status().to_string();
  EXPECT_EQ(leader->host, "10.0.0.1");
  auto other = agree_script_master(store, "g1/script_master", false, "ignored",
                                   Deadline::after(std::chrono::seconds(1)));
  ASSERT_TRUE(other.is_ok()) << other.status().to_string();
  EXPECT_EQ(other->host, "10.0.0.1");
  EXPECT_EQ(other->port, leader->port);
  // The port is free for the script's rank 0 to bind.
  std::uint16_t bound = 0;
  auto fd = net::listen_tcp("0.0.0.0", static_cast<std::uint16_t>(leader->port), 1, &bound);
  ASSERT_TRUE(fd.is_ok()) << fd.status().to_string();
  EXPECT_EQ(bound, leader->port);
}

TEST(ScriptMaster, AMissingLeaderTimesOut) {
  store::MemoryStore store;
  auto other = agree_script_master(store, "g2/script_master", false, "",
                                   Deadline::after(std::chrono::milliseconds(50)));
  EXPECT_EQ(other.status().code(), Code::kDeadlineExceeded) << other.status().to_string();
}

TEST(ScriptMaster, AMalformedValueIsDataLossNamingTheKey) {
  store::MemoryStore store;
  ASSERT_TRUE(store.set("g3/script_master", "host-without-port").is_ok());
  auto other = agree_script_master(store, "g3/script_master", false, "",
                                   Deadline::after(std::chrono::seconds(1)));
  EXPECT_EQ(other.status().code(), Code::kDataLoss);
  EXPECT_NE(other.status().to_string().find("g3/script_master"), std::string::npos);
}

}  // namespace
}  // namespace kiln::elastic
