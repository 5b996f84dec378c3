#include "kiln/elastic/worker_link.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <string>

#include "kiln/base/fd.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A non-blocking pipe standing in for the agent's heartbeat pipe.
struct Pipe {
  Fd read_end, write_end;
  Pipe() {
    int fds[2] = {-1, -1};
    EXPECT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }
  // Everything written so far.
  std::string drain() const {
    std::string out;
    char buf[256];
    ssize_t r;
    while ((r = ::read(read_end.get(), buf, sizeof(buf))) > 0) {
      out.append(buf, static_cast<size_t>(r));
    }
    return out;
  }
  // Whether a byte arrives within `wait`.
  bool beat_within(milliseconds wait) const {
    pollfd p{read_end.get(), POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(wait.count())) > 0;
  }
};

TEST(BusyBeat, BeatsNulBytesWhileItLives) {
  Pipe pipe;
  std::string got;
  {
    BusyBeat busy(pipe.write_end.get(), milliseconds(10), Deadline::after(seconds(30)));
    Deadline limit = Deadline::after(seconds(20));
    while (got.size() < 3 && !limit.expired()) {
      pipe.beat_within(milliseconds(100));
      got += pipe.drain();
    }
    EXPECT_TRUE(busy.beating());
  }
  ASSERT_GE(got.size(), 3u);
  EXPECT_EQ(got, std::string(got.size(), '\0')) << "busy beats are not steps";
  // Destroyed: its thread is joined, nothing more comes.
  pipe.drain();
  EXPECT_FALSE(pipe.beat_within(milliseconds(100)));
}

TEST(BusyBeat, StopsAtItsDeadlineSoStuckWorkStillLooksHung) {
  Pipe pipe;
  BusyBeat busy(pipe.write_end.get(), milliseconds(10), Deadline::after(milliseconds(150)));
  Deadline limit = Deadline::after(seconds(20));
  while (busy.beating() && !limit.expired()) pipe.beat_within(milliseconds(20));
  ASSERT_FALSE(busy.beating());
  EXPECT_FALSE(pipe.drain().empty());
  EXPECT_FALSE(pipe.beat_within(milliseconds(100))) << "beats after the deadline";
  EXPECT_FALSE(busy.extend(Deadline::after(seconds(30)))) << "ended beats do not restart";
  EXPECT_FALSE(pipe.beat_within(milliseconds(100)));
}

TEST(BusyBeat, ExtendingMovesTheEnd) {
  Pipe pipe;
  BusyBeat busy(pipe.write_end.get(), milliseconds(10), Deadline::after(milliseconds(100)));
  EXPECT_TRUE(busy.extend(Deadline::after(seconds(30))));
  // Well past the first end it still beats.
  auto start = Clock::now();
  while (Clock::now() - start < milliseconds(400)) {
    pipe.drain();
    ASSERT_TRUE(pipe.beat_within(milliseconds(5000)));
  }
  EXPECT_TRUE(busy.beating());
}

TEST(WorkerLink, IsInertOutsideKilnRun) {
  ASSERT_EQ(std::getenv("KILN_HEARTBEAT_FD"), nullptr);
  WorkerLink& link = WorkerLink::instance();
  EXPECT_FALSE(link.active());
  EXPECT_EQ(link.busy(Deadline::after(seconds(1))), nullptr);
  link.heartbeat();  // a no-op, not a write to descriptor -1
}

}  // namespace
}  // namespace kiln::elastic
