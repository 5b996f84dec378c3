#include "kiln/store/tcp/server_state.h"

#include <gtest/gtest.h>

namespace kiln::store::tcp {
namespace {

using std::chrono::milliseconds;

Request get(std::uint64_t id, std::string key, std::uint64_t timeout_ms = kNoTimeout) {
  return {.id = id, .op = Op::kGet, .keys = {std::move(key)}, .timeout_ms = timeout_ms};
}
Request set(std::uint64_t id, std::string key, std::string value) {
  return {.id = id, .op = Op::kSet, .keys = {std::move(key)}, .value = std::move(value)};
}

TEST(TcpStoreServerState, ParkedGetIsAnsweredWhenTheKeyIsSet) {
  ServerState state;
  std::vector<Reply> out;
  auto now = Clock::now();
  state.handle(/*conn=*/7, get(1, "k"), now, &out);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(state.parked(), 1u);
  state.handle(/*conn=*/8, set(2, "k", "v"), now, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].conn, 8u);  // the set's own reply first
  EXPECT_EQ(out[1].conn, 7u);
  EXPECT_EQ(out[1].response.id, 1u);
  EXPECT_EQ(out[1].response.value, "v");
  EXPECT_EQ(state.parked(), 0u);
}

TEST(TcpStoreServerState, WaitCountsKeysAndTimesOutNamingTheRest) {
  ServerState state;
  std::vector<Reply> out;
  auto now = Clock::now();
  state.handle(1, {.id = 1, .op = Op::kWait, .keys = {"a", "b", "a"}, .timeout_ms = 100}, now,
               &out);
  state.handle(2, {.id = 2, .op = Op::kAdd, .keys = {"a"}, .delta = 1}, now, &out);
  ASSERT_EQ(out.size(), 1u);  // only the add's reply
  EXPECT_EQ(state.next_deadline(), now + milliseconds(100));
  out.clear();
  state.expire(now + milliseconds(99), &out);
  EXPECT_TRUE(out.empty());
  state.expire(now + milliseconds(100), &out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].response.status.code(), Code::kDeadlineExceeded);
  EXPECT_NE(out[0].response.status.message().find("still missing ['b']"), std::string::npos)
      << out[0].response.status.message();
  EXPECT_EQ(state.parked(), 0u);
  EXPECT_EQ(state.next_deadline(), Clock::time_point::max());
}

TEST(TcpStoreServerState, ClosedConnectionsLeaveNothingParked) {
  ServerState state;
  std::vector<Reply> out;
  auto now = Clock::now();
  state.handle(1, get(1, "x", 1000), now, &out);
  state.handle(1, get(2, "y"), now, &out);
  state.handle(2, get(3, "x"), now, &out);
  state.drop_connection(1);
  EXPECT_EQ(state.parked(), 1u);
  state.handle(3, set(4, "x", "1"), now, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].conn, 2u);
  out.clear();
  state.handle(3, set(5, "y", "1"), now, &out);
  EXPECT_EQ(out.size(), 1u);  // nobody waits on y any more
  EXPECT_EQ(state.next_deadline(), Clock::time_point::max());
}

TEST(TcpStoreServerState, ZeroTimeoutAnswersAtOnce) {
  ServerState state;
  std::vector<Reply> out;
  state.handle(1, get(1, "x", 0), Clock::now(), &out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].response.status.code(), Code::kDeadlineExceeded);
  EXPECT_EQ(state.parked(), 0u);
}

}  // namespace
}  // namespace kiln::store::tcp
