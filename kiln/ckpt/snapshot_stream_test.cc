// The in-memory tier's streams between ranks (internal/snapshot_stream.h):
// a buddy that dies while it streams fails the receiver at once, naming it.
#include "kiln/ckpt/internal/snapshot_stream.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "kiln/ckpt/testing/run_options.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt::internal {
namespace {

using comm::Communicator;
using comm::testing::run_ranks;

// Zeros, until the stream asks for the chunk at `die_at`: then this process
// is SIGKILLed, as a crashing buddy would be.
class DyingSource final : public ChunkSource {
 public:
  explicit DyingSource(std::uint64_t die_at) : die_at_(die_at) {}
  Result<const std::byte*> chunk(std::uint64_t offset, std::size_t n, std::byte* bounce) override {
    if (offset >= die_at_) ::kill(::getpid(), SIGKILL);
    std::fill(bounce, bounce + n, std::byte{0});
    return static_cast<const std::byte*>(bounce);
  }

 private:
  std::uint64_t die_at_;
};

TEST(StreamRing, ABuddyThatDiesMidStreamFailsTheReceiverNamingIt) {
  constexpr std::uint64_t kBytes = 6 * kStreamChunk + 123;
  // The stream's own timeout is far past the run's deadline: only the
  // transport noticing the dead process can end the receiver's wait in time.
  constexpr auto kStreamTimeout = std::chrono::seconds(600);
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        Bounce bounce;
        Status local;
        if (comm.rank() == 0) {
          DyingSource source(3 * kStreamChunk);
          return stream_ring(comm, 1, &source, kBytes, 1, nullptr, 0, kStreamTimeout, bounce,
                             &local);
        }
        DiscardSink sink;
        Status s =
            stream_ring(comm, 0, nullptr, 0, 0, &sink, kBytes, kStreamTimeout, bounce, &local);
        if (s.code() == Code::kAborted && s.message().find("rank 0") != std::string::npos) {
          return Status::ok();
        }
        return internal_error("want Aborted naming rank 0, got " + s.to_string());
      },
      testing::quick());
  ASSERT_EQ(r.ranks.size(), 2u);
  EXPECT_EQ(r.ranks[0].signal, SIGKILL) << r.report;
  EXPECT_EQ(r.ranks[1].exit_code, 0) << r.report;
  EXPECT_FALSE(r.ranks[1].timed_out) << r.report;
}

}  // namespace
}  // namespace kiln::ckpt::internal
