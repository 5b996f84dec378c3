#include "kiln/serve/load_gen.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/socket.h"
#include "kiln/serve/response_reader.h"

namespace kiln::serve {
namespace {

constexpr std::uint64_t kTimerKey = ~0ull;
constexpr auto kAnswerTimeout = std::chrono::seconds(60);

struct Conn {
  Fd fd;
  ResponseReader reader;
  bool busy = false;
  Clock::time_point at;    // the scheduled time of the request in flight
  std::size_t sent = 0;    // bytes of it written
  bool wants_out = false;  // EPOLLOUT armed: the socket buffer was full
};

timespec to_timespec(Clock::time_point tp) {
  // libstdc++'s steady_clock is CLOCK_MONOTONIC, the timer's clock.
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(tp.time_since_epoch()).count();
  return {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
}

// Note [One thread for the load]: the generator shares this host's two
// cores with the server it measures. A thread per connection costs two
// context switches per request (hand-off from the scheduler, the answer's
// wake-up), CPU the server then lacks, and more of it the more a server
// batches. One epoll loop sends every request that is due and reads every
// answer that has arrived per wake-up; the timer that schedules the next
// request is a timerfd in the same loop.
class LoadLoop {
 public:
  explicit LoadLoop(const LoadOptions& o) : o_(o), rng_(o.seed) {
    request_ = fmt::format(
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n"
        "Content-Length: {}\r\n\r\n{}",
        o.port, o.body.size(), o.body);
    conns_.resize(static_cast<std::size_t>(std::max(1, o.clients)));
    for (std::size_t i = conns_.size(); i-- > 0;) idle_.push_back(i);
  }

  LoadResult run() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!epoll_.valid() || !timer_.valid()) {
      result_.dropped = 1;
      result_.drop_reasons.push_back(
          fmt::format("load generator: epoll/timerfd: {}", std::strerror(errno)));
      return std::move(result_);
    }
    epoll_event ev{.events = EPOLLIN, .data = {.u64 = kTimerKey}};
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, timer_.get(), &ev);
    start_ = Clock::now();
    schedule_next();
    std::vector<epoll_event> events(conns_.size() + 1);
    Clock::time_point last_check = start_;
    while (scheduling_ || !due_.empty() || busy_ > 0) {
      Clock::time_point now = Clock::now();
      while (scheduling_ && next_at_ <= now) {
        due_.push_back(next_at_);
        schedule_next();
      }
      dispatch();
      if (now - last_check > std::chrono::milliseconds(100)) {
        expire(now);
        last_check = now;
      }
      if (!scheduling_ && due_.empty() && busy_ == 0) break;
      arm_timer();
      const int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                 scheduling_ ? 1000 : 100);
      for (int i = 0; i < n; ++i) {
        const std::uint64_t key = events[i].data.u64;
        if (key == kTimerKey) {
          std::uint64_t expirations;
          [[maybe_unused]] auto r = ::read(timer_.get(), &expirations, sizeof expirations);
          continue;
        }
        if (events[i].events & EPOLLOUT) write_more(key);
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_answers(key);
      }
    }
    result_.wall_s = std::chrono::duration<double>(Clock::now() - start_).count();
    return std::move(result_);
  }

 private:
  double seconds(Clock::time_point tp) const {
    return std::chrono::duration<double>(tp - start_).count();
  }

  // Exponential gaps at the current rate (thinning-free: the rate changes
  // slowly against the gaps).
  void schedule_next() {
    const double rate = std::max(1e-3, o_.rate(t_));
    t_ += std::exponential_distribution<double>(rate)(rng_);
    scheduling_ = t_ < o_.duration_s;
    next_at_ =
        start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t_));
  }

  void arm_timer() {
    itimerspec spec{};
    if (scheduling_) spec.it_value = to_timespec(next_at_);  // zero disarms
    ::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
  }

  void drop(std::string reason) {
    ++result_.dropped;
    if (result_.drop_reasons.size() < 5) result_.drop_reasons.push_back(std::move(reason));
  }

  // Sends due requests on idle connections, oldest first.
  void dispatch() {
    while (!due_.empty() && !idle_.empty()) {
      const std::size_t i = idle_.back();
      idle_.pop_back();
      Conn& c = conns_[i];
      if (!c.fd.valid() && !connect(i)) {
        idle_.push_back(i);
        // Nothing can be sent: the server is gone. Answer the due requests.
        while (!due_.empty()) {
          due_.pop_front();
          drop(fmt::format("no answer: cannot connect to 127.0.0.1:{}", o_.port));
        }
        return;
      }
      c.busy = true;
      c.at = due_.front();
      c.sent = 0;
      due_.pop_front();
      ++busy_;
      write_more(i);
    }
  }

  bool connect(std::size_t i) {
    auto fd = net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(o_.port),
                               Deadline::after_seconds(10));
    if (!fd.is_ok()) return false;
    Conn& c = conns_[i];
    c = Conn{};
    c.fd = std::move(fd).value();
    epoll_event ev{.events = EPOLLIN, .data = {.u64 = i}};
    return ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev) == 0;
  }

  void write_more(std::size_t i) {
    Conn& c = conns_[i];
    if (!c.busy || c.sent >= request_.size()) return;
    while (c.sent < request_.size()) {
      const ssize_t n = ::send(c.fd.get(), request_.data() + c.sent, request_.size() - c.sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.sent += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.wants_out) {
          epoll_event ev{.events = EPOLLIN | EPOLLOUT, .data = {.u64 = i}};
          ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
          c.wants_out = true;
        }
        return;
      } else {
        fail(i, fmt::format("no answer: send: {}", std::strerror(errno)));
        return;
      }
    }
    if (c.wants_out) {  // a syscall per request otherwise
      epoll_event ev{.events = EPOLLIN, .data = {.u64 = i}};
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
      c.wants_out = false;
    }
  }

  void read_answers(std::size_t i) {
    Conn& c = conns_[i];
    char buf[16384];
    while (c.fd.valid()) {
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) {
        fail(i, n == 0 ? std::string("no answer: the server closed the connection")
                       : fmt::format("no answer: recv: {}", std::strerror(errno)));
        return;
      }
      c.reader.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      while (true) {
        auto r = c.reader.next();
        if (!r.is_ok()) {
          fail(i, r.status().message());
          return;
        }
        if (!r->has_value()) break;
        if (!c.busy) {
          fail(i, "an answer to no request");
          return;
        }
        answered(i, **r);
        if (!c.fd.valid()) return;
      }
    }
  }

  void answered(std::size_t i, const HttpResponse& r) {
    Conn& c = conns_[i];
    const auto end = Clock::now();
    if (r.status == 200) {
      ++result_.ok;
      result_.latencies_s.push_back(std::chrono::duration<double>(end - c.at).count());
      result_.sent_at_s.push_back(seconds(c.at));
    } else if (r.status == 503) {
      ++result_.rejected;
    } else {
      drop(fmt::format("HTTP {}: {}", r.status, r.body.substr(0, 200)));
    }
    c.busy = false;
    --busy_;
    if (r.close) c.fd.reset();  // reconnects on its next request
    idle_.push_back(i);
  }

  // The connection is unusable: its request in flight (if any) has no
  // answer; it reconnects on its next request.
  void fail(std::size_t i, std::string reason) {
    Conn& c = conns_[i];
    if (c.busy) {
      drop(std::move(reason));
      c.busy = false;
      --busy_;
      idle_.push_back(i);
    }
    c.fd.reset();  // close() removes it from the epoll set
  }

  void expire(Clock::time_point now) {
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].busy && now - conns_[i].at > kAnswerTimeout) {
        fail(i, fmt::format("no answer within {} s", kAnswerTimeout.count()));
      }
    }
  }

  const LoadOptions& o_;
  std::mt19937_64 rng_;
  std::string request_;
  Fd epoll_, timer_;
  std::vector<Conn> conns_;
  std::vector<std::size_t> idle_;      // LIFO: the warmest connection next
  std::deque<Clock::time_point> due_;  // scheduled, waiting for an idle connection
  std::size_t busy_ = 0;
  Clock::time_point start_, next_at_;
  double t_ = 0;
  bool scheduling_ = true;
  LoadResult result_;
};

}  // namespace

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::clamp(q, 0.0, 1.0) * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

LoadResult run_load(const LoadOptions& options) { return LoadLoop(options).run(); }

}  // namespace kiln::serve
