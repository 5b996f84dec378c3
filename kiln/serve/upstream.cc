#include "kiln/serve/upstream.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>

#include "kiln/base/fd.h"
#include "kiln/base/logging.h"
#include "kiln/base/socket.h"
#include "kiln/serve/request.h"
#include "kiln/serve/response_reader.h"

namespace kiln::serve {
namespace {

constexpr std::uint64_t kWakeKey = 0;
constexpr std::uint64_t kFirstConnKey = 1;
constexpr auto kSweepPeriod = std::chrono::milliseconds(100);

}  // namespace

class Upstream::Loop {
 public:
  Loop(const UpstreamOptions& o, Sink sink, UpstreamCounters* counters)
      : o_(o), sink_(std::move(sink)), counters_(counters) {}

  Status open() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!epoll_.valid() || !wake_.valid()) return errno_status("router: epoll/eventfd", errno);
    epoll_event ev{.events = EPOLLIN, .data = {.u64 = kWakeKey}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) {
      return errno_status("router: epoll_ctl", errno);
    }
    return Status::ok();
  }

  // Runs `command` on the loop thread; one wake-up per batch of commands.
  void post(std::function<void()> command) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(mu_);
      was_empty = commands_.empty();
      commands_.push_back(std::move(command));
    }
    if (was_empty) {
      const std::uint64_t one = 1;
      [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof one);
    }
  }

  // job: the upstream loop, until stop and nothing in flight.
  void run() {
    std::vector<epoll_event> events(256);
    auto last_sweep = Clock::now();
    while (true) {
      const int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                 static_cast<int>(kSweepPeriod.count()));
      if (n < 0 && errno != EINTR) {
        log()->error("router: epoll_wait: {}", std::strerror(errno));
        break;
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t key = events[i].data.u64;
        if (key == kWakeKey) {
          std::uint64_t count;
          [[maybe_unused]] auto r = ::read(wake_.get(), &count, sizeof count);
          continue;
        }
        if (events[i].events & EPOLLOUT) flush_later(key);
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_answers(key);
      }
      std::vector<std::function<void()>> commands;
      {
        std::lock_guard<std::mutex> lock(mu_);
        commands.swap(commands_);
      }
      for (auto& c : commands) c();
      const auto now = Clock::now();
      if (now - last_sweep >= kSweepPeriod) {
        sweep(now);
        last_sweep = now;
      }
      flush_all();
      deliver();
      if (stopping_ && ((in_flight_ == 0 && waiting_.empty()) || stop_deadline_.expired())) break;
    }
    // Past the grace: what is left is answered, never dropped.
    for (auto& [key, c] : conns_) {
      for (auto& job : c->inflight) fail(std::move(job), 502, "the router stopped first");
      c->inflight.clear();
    }
    for (auto& job : waiting_) fail(std::move(job), 503, "the router stopped");
    waiting_.clear();
    deliver();
    conns_.clear();
  }

  // Loop-thread commands.
  void submit(std::vector<UpstreamRequest>& requests) {
    for (auto& r : requests) {
      auto job = std::make_unique<Job>();
      job->request = std::move(r);
      dispatch(std::move(job));
    }
  }
  void add_replica(int id, int port) {
    replicas_[id] = Replica{id, port, 0};
    std::deque<JobPtr> waiting;
    waiting.swap(waiting_);
    for (auto& job : waiting) dispatch(std::move(job));
  }
  void remove_replica(int id) {
    replicas_.erase(id);
    // Its connections close once their requests are answered.
    std::vector<std::uint64_t> idle;
    for (auto& [key, c] : conns_) {
      if (c->replica == id && c->inflight.empty()) idle.push_back(key);
    }
    for (auto key : idle) conns_.erase(key);
  }
  void refuse_waiting() {
    refusing_ = true;
    std::deque<JobPtr> waiting;
    waiting.swap(waiting_);
    for (auto& job : waiting) finish_failed(std::move(job));
  }
  void begin_stop(std::chrono::milliseconds grace) {
    refuse_waiting();
    stopping_ = true;
    stop_deadline_ = Deadline::after(grace);
  }

 private:
  struct Job {
    UpstreamRequest request;
    std::vector<int> tried;
    std::string failures;
    bool all_refused = true;  // every attempt got 503: the client should retry later
    Deadline wait_until = Deadline::never();
    Clock::time_point sent;
  };
  using JobPtr = std::unique_ptr<Job>;

  struct Replica {
    int id = 0;
    int port = 0;
    std::size_t outstanding = 0;  // requests sent and not answered
  };

  struct Conn {
    std::uint64_t key = 0;
    int replica = 0;
    int port = 0;
    Fd fd;
    ResponseReader reader;
    std::deque<JobPtr> inflight;  // in the order sent: answers come in this order
    std::string out;              // requests not yet written
    std::size_t out_offset = 0;
    bool wants_out = false;
  };

  Replica* pick(const std::vector<int>& tried) {
    Replica* best = nullptr;
    for (auto& [id, r] : replicas_) {
      if (std::find(tried.begin(), tried.end(), id) != tried.end()) continue;
      if (best == nullptr || r.outstanding < best->outstanding) best = &r;
    }
    return best;
  }

  // The replica's connection with the fewest requests in flight; a new one
  // while it has fewer than connections_per_replica and all are busy.
  Result<Conn*> connection(const Replica& r) {
    Conn* best = nullptr;
    int count = 0;
    for (auto& [key, c] : conns_) {
      if (c->replica != r.id) continue;
      ++count;
      if (best == nullptr || c->inflight.size() < best->inflight.size()) best = c.get();
    }
    if (best != nullptr && (best->inflight.empty() || count >= o_.connections_per_replica)) {
      return best;
    }
    // Loopback: a connect is answered at once (refused when the replica is gone).
    KILN_ASSIGN_OR_RETURN(Fd fd, net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(r.port),
                                                  Deadline::after_seconds(2)));
    auto c = std::make_unique<Conn>();
    c->key = next_key_++;
    c->replica = r.id;
    c->port = r.port;
    c->fd = std::move(fd);
    epoll_event ev{.events = EPOLLIN, .data = {.u64 = c->key}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) {
      return errno_status(fmt::format("router: epoll_ctl for replica port {}", r.port), errno);
    }
    Conn* raw = c.get();
    conns_.emplace(raw->key, std::move(c));
    return raw;
  }

  void dispatch(JobPtr job) {
    while (true) {
      if (static_cast<int>(job->tried.size()) >= o_.max_attempts) break;
      Replica* r = pick(job->tried);
      if (r == nullptr) {
        if (job->tried.empty() && !refusing_) {
          // Note: it stays in the queue the autoscaler sees (router.h).
          if (job->wait_until.is_never()) job->wait_until = Deadline::after(o_.wait_for_replica);
          waiting_.push_back(std::move(job));
          return;
        }
        break;
      }
      if (!job->tried.empty()) counters_->retries.fetch_add(1, std::memory_order_relaxed);
      job->tried.push_back(r->id);
      auto conn = connection(*r);
      if (!conn.is_ok()) {
        note_failure(*job, r->id, r->port, conn.status().message());
        continue;
      }
      Conn& c = **conn;
      ++r->outstanding;
      ++in_flight_;
      job->sent = Clock::now();
      fmt::format_to(std::back_inserter(c.out),
                     "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: "
                     "application/json\r\nContent-Length: {}\r\n\r\n",
                     c.port, job->request.body.size());
      c.out += job->request.body;
      c.inflight.push_back(std::move(job));
      flush_later(c.key);
      return;
    }
    finish_failed(std::move(job));
  }

  void note_failure(Job& job, int id, int port, const std::string& what) {
    job.all_refused = false;
    job.failures +=
        fmt::format("{}replica {} (port {}): {}", job.failures.empty() ? "" : "; ", id, port, what);
  }

  void finish_failed(JobPtr job) {
    counters_->failed.fetch_add(1, std::memory_order_relaxed);
    if (job->tried.empty()) {
      fail(std::move(job), 503,
           fmt::format(
               "no ready replica within {} ms (the fleet is starting, or every replica failed)",
               o_.wait_for_replica.count()));
    } else if (job->all_refused) {
      std::string message = "every replica tried is busy or draining: " + job->failures;
      fail(std::move(job), 503, message);
    } else {
      log()->warn("router: a request failed on {} replica(s): {}", job->tried.size(),
                  job->failures);
      std::string message =
          fmt::format("the request failed on {} replica(s): {}", job->tried.size(), job->failures);
      fail(std::move(job), 502, message);
    }
  }

  void fail(JobPtr job, int status, const std::string& message) {
    answer(*job, HttpAnswer{.status = status,
                            .body = error_json(message),
                            .retry_after_s = status == 503 ? o_.retry_after_s : -1});
  }

  void answer(Job& job, HttpAnswer a) {
    answers_.push_back({job.request.ticket, std::move(a), job.request.received});
  }

  void deliver() {
    if (answers_.empty()) return;
    sink_(answers_);  // one hand-off to the front per wake-up
    answers_.clear();
  }

  void flush_later(std::uint64_t key) { to_flush_.push_back(key); }

  void flush_all() {
    std::sort(to_flush_.begin(), to_flush_.end());
    to_flush_.erase(std::unique(to_flush_.begin(), to_flush_.end()), to_flush_.end());
    std::vector<std::uint64_t> keys;
    keys.swap(to_flush_);
    for (auto key : keys) {
      auto it = conns_.find(key);
      if (it != conns_.end()) flush(*it->second);
    }
  }

  void flush(Conn& c) {
    while (c.out_offset < c.out.size()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_offset, c.out.size() - c.out_offset,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.wants_out) {
          c.wants_out = true;
          epoll_event ev{.events = EPOLLIN | EPOLLOUT, .data = {.u64 = c.key}};
          ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
        }
        return;
      }
      if (n < 0) {
        fail_connection(c.key, fmt::format("send: {}", std::strerror(errno)));
        return;
      }
      c.out_offset += static_cast<std::size_t>(n);
    }
    c.out.clear();
    c.out_offset = 0;
    if (c.wants_out) {
      c.wants_out = false;
      epoll_event ev{.events = EPOLLIN, .data = {.u64 = c.key}};
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
    }
  }

  void read_answers(std::uint64_t key) {
    auto it = conns_.find(key);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    char buf[65536];
    while (true) {
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) {
        fail_connection(key, n == 0 ? std::string("the replica closed the connection")
                                    : fmt::format("recv: {}", std::strerror(errno)));
        return;
      }
      c.reader.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      if (static_cast<std::size_t>(n) < sizeof buf) break;
    }
    while (true) {
      auto r = c.reader.next();
      if (!r.is_ok()) {
        fail_connection(key, r.status().message());
        return;
      }
      if (!r->has_value()) return;
      HttpResponse& response = **r;
      if (c.inflight.empty()) {
        fail_connection(key, "an answer to no request");
        return;
      }
      JobPtr job = std::move(c.inflight.front());
      c.inflight.pop_front();
      settled(c);
      if (response.status == 503) {
        job->failures += fmt::format("{}replica {}: 503 {}", job->failures.empty() ? "" : "; ",
                                     c.replica, response.body);
        dispatch(std::move(job));
      } else {
        answer(*job, HttpAnswer{.status = response.status, .body = std::move(response.body)});
      }
      if (response.close || (c.inflight.empty() && !replicas_.contains(c.replica))) {
        fail_connection(key, "the replica closed the connection after an answer");
        return;
      }
    }
  }

  // One request of `c` answered or failed: the replica's count.
  void settled(const Conn& c) {
    --in_flight_;
    auto r = replicas_.find(c.replica);
    if (r != replicas_.end() && r->second.outstanding > 0) --r->second.outstanding;
  }

  // The connection is unusable: every request on it goes to another replica.
  void fail_connection(std::uint64_t key, const std::string& what) {
    auto it = conns_.find(key);
    if (it == conns_.end()) return;
    std::unique_ptr<Conn> c = std::move(it->second);
    conns_.erase(it);
    for (auto& job : c->inflight) {
      settled(*c);
      note_failure(*job, c->replica, c->port, what);
      dispatch(std::move(job));
    }
  }

  void sweep(Clock::time_point now) {
    std::vector<std::uint64_t> late;
    for (auto& [key, c] : conns_) {
      if (!c->inflight.empty() && now - c->inflight.front()->sent > o_.replica_timeout) {
        late.push_back(key);
      }
    }
    for (auto key : late) {
      fail_connection(key, fmt::format("no answer within {} ms", o_.replica_timeout.count()));
    }
    while (!waiting_.empty() && waiting_.front()->wait_until.expired()) {
      JobPtr job = std::move(waiting_.front());
      waiting_.pop_front();
      finish_failed(std::move(job));
    }
  }

  const UpstreamOptions o_;
  Sink sink_;
  UpstreamCounters* counters_;
  Fd epoll_, wake_;
  std::mutex mu_;
  std::vector<std::function<void()>> commands_;  // GUARDED_BY(mu_)
  // Loop thread only:
  std::map<int, Replica> replicas_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns_;
  std::uint64_t next_key_ = kFirstConnKey;
  std::deque<JobPtr> waiting_;  // no routable replica yet
  std::vector<UpstreamAnswer> answers_;
  std::vector<std::uint64_t> to_flush_;
  std::size_t in_flight_ = 0;
  bool refusing_ = false;
  bool stopping_ = false;
  Deadline stop_deadline_ = Deadline::never();
};

Result<std::unique_ptr<Upstream>> Upstream::start(const UpstreamOptions& options, Sink sink) {
  std::unique_ptr<Upstream> u(new Upstream());
  u->loop_ = std::make_unique<Loop>(options, std::move(sink), &u->counters_);
  KILN_RETURN_IF_ERROR(u->loop_->open());
  u->thread_ = std::thread([loop = u->loop_.get()] { loop->run(); });
  return u;
}

Upstream::~Upstream() { stop(); }

void Upstream::submit(std::vector<UpstreamRequest> requests) {
  auto shared = std::make_shared<std::vector<UpstreamRequest>>(std::move(requests));
  loop_->post([this, shared] { loop_->submit(*shared); });
}

void Upstream::add_replica(int id, int port) {
  {
    std::lock_guard<std::mutex> lock(ids_mu_);
    ids_.insert(id);
  }
  loop_->post([this, id, port] { loop_->add_replica(id, port); });
}

void Upstream::remove_replica(int id) {
  {
    std::lock_guard<std::mutex> lock(ids_mu_);
    ids_.erase(id);
  }
  loop_->post([this, id] { loop_->remove_replica(id); });
}

void Upstream::refuse_waiting() {
  loop_->post([this] { loop_->refuse_waiting(); });
}

void Upstream::stop(std::chrono::milliseconds grace) {
  std::call_once(stopped_, [&] {
    if (!loop_) return;
    loop_->post([this, grace] { loop_->begin_stop(grace); });
    if (thread_.joinable()) thread_.join();
  });
}

}  // namespace kiln::serve
