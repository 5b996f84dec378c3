#include "kiln/serve/event_front.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <optional>
#include <set>
#include <unordered_map>

#include "kiln/base/logging.h"
#include "kiln/base/socket.h"
#include "kiln/serve/request.h"
#include "kiln/serve/thread_cpus.h"

namespace kiln::serve {
namespace {

constexpr std::uint64_t kListenerKey = 0;
constexpr std::uint64_t kWakeKey = 1;
constexpr std::uint64_t kFirstConnKey = 2;
constexpr auto kSweepPeriod = std::chrono::milliseconds(200);
// Bytes read from one connection per wake-up: level-triggered epoll comes
// back for the rest after every other ready connection had its turn.
constexpr std::size_t kMaxReadPerWake = 256 * 1024;
// Accepting paused this long when out of descriptors (or memory).
constexpr auto kAcceptPause = std::chrono::milliseconds(100);

const char* reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 417:
      return "Expectation Failed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Status";
  }
}

// Adds "Connection: close" to a serialized answer's headers.
void add_connection_close(std::string& answer) {
  const auto end = answer.find("\r\n\r\n");
  if (end != std::string::npos) answer.insert(end + 2, "Connection: close\r\n");
}

}  // namespace

std::string serialize_answer(const HttpAnswer& a, bool close) {
  std::string out;
  out.reserve(128 + a.body.size());
  fmt::format_to(std::back_inserter(out),
                 "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n", a.status,
                 reason_phrase(a.status), a.content_type, a.body.size());
  if (a.retry_after_s >= 0)
    fmt::format_to(std::back_inserter(out), "Retry-After: {}\r\n", a.retry_after_s);
  if (close) out += "Connection: close\r\n";
  out += "\r\n";
  out += a.body;
  return out;
}

class EventFront::Loop {
 public:
  Loop(const EventFrontOptions& o, Handler handler, EventFrontCounters* counters)
      : o_(o), handler_(std::move(handler)), counters_(counters) {}

  Status open(int* port) {
    std::uint16_t bound = 0;
    auto listener =
        net::listen_tcp(o_.host, static_cast<std::uint16_t>(o_.port), o_.backlog, &bound);
    if (!listener.is_ok()) {
      return unavailable(fmt::format("{}: cannot listen on {}:{}: {}", o_.what, o_.host, o_.port,
                                     listener.status().message()));
    }
    listener_ = std::move(listener).value();
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!epoll_.valid() || !wake_.valid()) {
      return errno_status(fmt::format("{}: epoll/eventfd", o_.what), errno);
    }
    if (!add(listener_.get(), kListenerKey, EPOLLIN) || !add(wake_.get(), kWakeKey, EPOLLIN)) {
      return errno_status(fmt::format("{}: epoll_ctl", o_.what), errno);
    }
    *port = bound;
    return Status::ok();
  }

  // job: the event loop, until stop() and every answer is out.
  void run() {
    loop_thread_ = std::this_thread::get_id();
    // Named for per-thread CPU accounting (`kiln bench serve`, top -H); a
    // thread's name is at most 15 characters.
    pthread_setname_np(pthread_self(), fmt::format("{}-front", o_.what).substr(0, 15).c_str());
    if (Status pinned = pin_calling_thread(o_.cpus); !pinned.is_ok()) {
      log()->warn("{}: the front runs unpinned: {}", o_.what, pinned.to_string());
    }
    std::vector<epoll_event> events(256);
    auto last_sweep = Clock::now();
    while (true) {
      int timeout_ms = static_cast<int>(kSweepPeriod.count());
      if (resume_accept_at_ != Clock::time_point::max()) {
        const auto until =
            std::chrono::ceil<std::chrono::milliseconds>(resume_accept_at_ - Clock::now());
        timeout_ms =
            static_cast<int>(std::clamp<std::int64_t>(until.count(), 0, kSweepPeriod.count()));
      }
      const int n =
          ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
      if (n < 0 && errno != EINTR) {
        log()->error("{}: epoll_wait: {}", o_.what, std::strerror(errno));
        break;
      }
      const auto now = Clock::now();
      if (n > 0) counters_->wakeups.fetch_add(1, std::memory_order_relaxed);
      if (now >= resume_accept_at_) {
        resume_accept_at_ = Clock::time_point::max();
        if (listener_.valid()) {
          epoll_event ev{.events = EPOLLIN, .data = {.u64 = kListenerKey}};
          ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
        }
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t key = events[i].data.u64;
        if (key == kListenerKey) {
          accept_all(now);
        } else if (key == kWakeKey) {
          std::uint64_t count;
          [[maybe_unused]] auto r = ::read(wake_.get(), &count, sizeof count);
        } else {
          auto it = conns_.find(key);
          if (it == conns_.end()) continue;
          if (events[i].events & (EPOLLHUP | EPOLLERR)) {
            // Both directions closed or broken (a reset): nothing more can
            // be read, and answers owed have no reader.
            close(key);
            continue;
          }
          if (events[i].events & EPOLLIN) read_requests(*it->second, now);
          if (events[i].events & EPOLLOUT) touched_.push_back(key);
        }
      }
      // Before the handler runs: the requests the last reads take go to it in this pass.
      if (stop_requested_.load(std::memory_order_acquire) && !stopping_) begin_stop(now);
      // A flush that resumes a paused connection may read more requests.
      do {
        if (!incoming_.empty()) {
          std::vector<IncomingRequest> batch;
          batch.swap(incoming_);
          handler_(batch);  // its answers on this thread land in place at once
        }
        take_inbox();
        flush_touched(now);
      } while (!incoming_.empty());
      if (now - last_sweep >= kSweepPeriod) {
        sweep(now);
        last_sweep = now;
      }
      if (stopping_ && (conns_.empty() || stop_deadline_.expired())) break;
    }
    conns_.clear();
  }

  void answer(std::vector<std::pair<RequestTicket, HttpAnswer>>&& answers) {
    if (answers.empty()) return;
    if (std::this_thread::get_id() == loop_thread_) {
      for (auto& [ticket, a] : answers) place(ticket, std::move(a));
      return;
    }
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(inbox_mu_);
      was_empty = inbox_.empty();
      if (was_empty) {
        inbox_ = std::move(answers);
      } else {
        for (auto& a : answers) inbox_.push_back(std::move(a));
      }
    }
    // One wake-up per hand-off: a loop that has not taken the inbox yet
    // will see these too.
    if (was_empty) wake();
  }

  void request_stop(std::chrono::milliseconds grace) {
    stop_deadline_ = Deadline::after(grace);
    stop_requested_.store(true, std::memory_order_release);
    wake();
  }

 private:
  struct Conn {
    std::uint64_t key = 0;
    Fd fd;
    RequestReader reader;
    std::uint64_t next_seq = 0;   // the next request read gets this
    std::uint64_t write_seq = 0;  // the oldest request not yet answered on the wire
    std::deque<std::optional<std::string>> slots;  // answers from write_seq on, in order
    std::deque<std::string> out;                   // serialized, not yet written
    std::size_t out_offset = 0;                    // bytes of out.front() written
    std::optional<std::uint64_t> close_after;      // close once this seq is written
    std::set<std::uint64_t> heads;  // HEAD requests not answered yet: answers without a body
    bool finished = false;          // no request is read from it any more (EOF, close, error, stop)
    bool paused = false;            // not read until answers go out (max_pipelined)
    bool peer_closed = false;       // EOF read: no recv any more, the reader's requests still taken
    bool wants_out = false;         // EPOLLOUT armed: the socket buffer was full
    Clock::time_point last_read, last_write;

    std::size_t outstanding() const { return static_cast<std::size_t>(next_seq - write_seq); }
    bool idle() const { return outstanding() == 0 && out.empty() && reader.buffered() == 0; }
  };

  bool add(int fd, std::uint64_t key, std::uint32_t events) {
    epoll_event ev{.events = events, .data = {.u64 = key}};
    return ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  }

  void rearm(Conn& c) {
    epoll_event ev{.events = (!c.finished && !c.paused && !c.peer_closed ? EPOLLIN : 0u) |
                             (c.wants_out ? EPOLLOUT : 0u),
                   .data = {.u64 = c.key}};
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
  }

  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof one);
  }

  void accept_all(Clock::time_point now) {
    while (true) {
      const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        const int err = errno;  // before log(), which may change it
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        // EMFILE and the like: the connection waits in the backlog. The
        // level-triggered listener would stay readable and spin the loop,
        // so stop watching it for a moment (as TcpStoreServer does).
        log()->warn("{}: accept failed, pausing accepts for {} ms: {}", o_.what,
                    kAcceptPause.count(), std::strerror(err));
        epoll_event ev{.events = 0, .data = {.u64 = kListenerKey}};
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
        resume_accept_at_ = now + kAcceptPause;
        return;
      }
      // Note [TCP_NODELAY]: an answer that leaves in two sends (a writev
      // cut short by a full socket buffer) would, with Nagle's algorithm,
      // have its second part wait for the peer's delayed ACK (40 ms on
      // Linux): half a 100 ms SLO. Every HTTP socket of kiln serve turns it
      // off.
      (void)net::set_nodelay(fd);
      auto c = std::make_unique<Conn>();
      c->key = next_key_++;
      c->fd.reset(fd);
      c->reader = RequestReader(o_.limits);
      c->last_read = c->last_write = now;
      if (!add(fd, c->key, EPOLLIN)) {
        log()->warn("{}: epoll_ctl: {}", o_.what, std::strerror(errno));
        continue;  // c closes fd
      }
      counters_->connections.fetch_add(1, std::memory_order_relaxed);
      conns_.emplace(c->key, std::move(c));
    }
  }

  // Reads what the socket holds (up to kMaxReadPerWake: one client cannot
  // hold the loop) and takes every complete request out of it as it comes,
  // so the reader holds at most one request in progress plus one read and
  // its limits are checked read by read.
  void read_requests(Conn& c, Clock::time_point now) {
    if (c.finished || c.paused) return;
    char buf[64 * 1024];
    std::size_t taken = 0;
    while (!c.peer_closed && !c.finished && !c.paused && !c.reader.error() &&
           taken < kMaxReadPerWake) {
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n < 0) {
        close(c.key);  // broken: answers owed have no reader
        return;
      }
      if (n == 0) {
        // The client closed its side: nothing more comes, but the requests
        // already in the reader are still taken and answered.
        c.peer_closed = true;
        rearm(c);
        break;
      }
      taken += static_cast<std::size_t>(n);
      c.last_read = now;
      c.reader.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      take_requests(c, now);
      if (static_cast<std::size_t>(n) < sizeof buf) break;
    }
    take_requests(c, now);  // those left in the reader by a pause
    if (c.reader.take_continue() && c.outstanding() == 0 && c.out.empty()) {
      // Answers to earlier requests would have to go first: then the client
      // sends the body after its own wait instead.
      static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      [[maybe_unused]] auto w =
          ::send(c.fd.get(), kContinue, sizeof kContinue - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (const auto& e = c.reader.error(); e && !c.finished) {
      counters_->malformed.fetch_add(1, std::memory_order_relaxed);
      refuse(c, e->status, e->message);
    }
    if (c.peer_closed && !c.paused) {
      finish(c);
      maybe_close(c);
    }
  }

  void take_requests(Conn& c, Clock::time_point now) {
    HttpRequest r;
    while (!c.finished && !c.paused && c.reader.next(&r)) {
      counters_->requests.fetch_add(1, std::memory_order_relaxed);
      const RequestTicket ticket{c.key, c.next_seq++};
      c.slots.emplace_back();
      if (r.method == "HEAD") c.heads.insert(ticket.seq);
      if (!r.keep_alive) {
        c.close_after = ticket.seq;
        finish(c);
      }
      incoming_.push_back({ticket, std::move(r), now});
      if (c.outstanding() >= o_.max_pipelined && !c.finished) {
        // Resumes once answers go out (flush).
        c.paused = true;
        rearm(c);
      }
    }
  }

  // Answers the next request slot with `status` naming the problem, then closes.
  void refuse(Conn& c, int status, const std::string& message) {
    const RequestTicket ticket{c.key, c.next_seq++};
    c.slots.emplace_back();
    c.close_after = ticket.seq;
    finish(c);
    place(ticket, HttpAnswer{.status = status, .body = error_json(message)});
  }

  void finish(Conn& c) {
    if (c.finished) return;
    c.finished = true;
    rearm(c);
  }

  // Closes a connection that will read nothing more once everything owed is out.
  void maybe_close(Conn& c) {
    if (c.finished && c.outstanding() == 0 && c.out.empty()) close(c.key);
  }

  void take_inbox() {
    std::vector<std::pair<RequestTicket, HttpAnswer>> answers;
    {
      std::lock_guard<std::mutex> lock(inbox_mu_);
      answers.swap(inbox_);
    }
    for (auto& [ticket, a] : answers) place(ticket, std::move(a));
  }

  void place(const RequestTicket& t, HttpAnswer&& a) {
    auto it = conns_.find(t.conn);
    if (it == conns_.end()) return;  // the client went away
    Conn& c = *it->second;
    if (t.seq < c.write_seq || t.seq >= c.next_seq) {
      log()->error("{}: an answer for request {} of a connection at {}..{}: ignored", o_.what,
                   t.seq, c.write_seq, c.next_seq);
      return;
    }
    auto& slot = c.slots[static_cast<std::size_t>(t.seq - c.write_seq)];
    if (slot) {
      log()->error("{}: a second answer for request {}: ignored", o_.what, t.seq);
      return;
    }
    slot = serialize_answer(a, c.close_after == t.seq);
    if (c.heads.erase(t.seq) > 0) slot->resize(slot->size() - a.body.size());  // headers only
    if (t.seq == c.write_seq) touched_.push_back(c.key);
  }

  void flush_touched(Clock::time_point now) {
    // A flush may touch connections again (a resumed connection reads a
    // malformed request and refuses it): swap the list out and go on until
    // nothing is left, never iterating the vector being appended to.
    std::vector<std::uint64_t> batch;
    while (!touched_.empty()) {
      batch.clear();
      batch.swap(touched_);
      std::sort(batch.begin(), batch.end());
      batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
      for (std::uint64_t key : batch) {
        auto it = conns_.find(key);
        if (it != conns_.end()) flush(*it->second, now);
      }
    }
  }

  // Moves the answers that are next in order to the output and writes as
  // much of it as the socket takes: one writev for all of them.
  void flush(Conn& c, Clock::time_point now) {
    if (c.out.empty()) c.last_write = now;  // the write timeout runs from here
    while (!c.slots.empty() && c.slots.front()) {
      c.out.push_back(std::move(*c.slots.front()));
      c.slots.pop_front();
      ++c.write_seq;
    }
    while (!c.out.empty()) {
      iovec iov[64];
      int n = 0;
      for (std::size_t i = 0; i < c.out.size() && n < 64; ++i, ++n) {
        const std::size_t skip = i == 0 ? c.out_offset : 0;
        iov[n].iov_base = c.out[i].data() + skip;
        iov[n].iov_len = c.out[i].size() - skip;
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(n);
      const ssize_t w = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.wants_out) {
          c.wants_out = true;
          rearm(c);
        }
        return;
      }
      if (w < 0) {
        close(c.key);  // the client is gone: its answers have no reader
        return;
      }
      c.last_write = now;
      auto left = static_cast<std::size_t>(w);
      while (left > 0) {
        const std::size_t rest = c.out.front().size() - c.out_offset;
        if (left >= rest) {
          left -= rest;
          c.out.pop_front();
          c.out_offset = 0;
        } else {
          c.out_offset += left;
          left = 0;
        }
      }
    }
    if (c.close_after && c.write_seq > *c.close_after) {
      close(c.key);
      return;
    }
    const bool resume =
        c.paused && !c.finished &&
        c.outstanding() < std::max<std::size_t>(1, o_.max_pipelined / 2);  // 1: resumes at 0
    if (c.wants_out || resume) {
      c.wants_out = false;
      c.paused = c.paused && !resume;
      rearm(c);
      if (resume) {
        // Requests that waited in the reader while reading was paused (it
        // may close the connection: `c` is not used after).
        read_requests(c, now);
        return;
      }
    }
    maybe_close(c);
  }

  // The FIN goes out behind every answer written; the Fd then closes,
  // leaving the epoll set.
  void close(std::uint64_t key) {
    auto it = conns_.find(key);
    if (it == conns_.end()) return;
    ::shutdown(it->second->fd.get(), SHUT_WR);
    conns_.erase(it);
  }

  // Stops accepting and reading, but first takes what the kernel already
  // holds: the connections completed in the backlog and the bytes in every
  // socket, so no request a client sent before stop() goes unanswered. Each
  // connection's last answer says Connection: close.
  void begin_stop(Clock::time_point now) {
    stopping_ = true;
    if (listener_.valid()) {
      resume_accept_at_ = Clock::time_point::max();
      accept_all(now);
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
      listener_.reset();
    }
    std::vector<std::uint64_t> keys;
    keys.reserve(conns_.size());
    for (auto& [key, c] : conns_) keys.push_back(key);
    for (auto key : keys) {
      if (auto it = conns_.find(key); it != conns_.end()) read_requests(*it->second, now);
    }
    std::vector<std::uint64_t> done;
    for (auto& [key, c] : conns_) {
      finish(*c);
      if (c->outstanding() == 0) {
        if (c->out.empty()) done.push_back(key);
        continue;  // the answers in `out` go out, then it closes
      }
      if (!c->close_after) {
        const std::uint64_t last = c->next_seq - 1;
        c->close_after = last;
        auto& slot = c->slots[static_cast<std::size_t>(last - c->write_seq)];
        if (slot) add_connection_close(*slot);  // answered, not yet in order to go out
      }
    }
    for (auto key : done) close(key);
  }

  void sweep(Clock::time_point now) {
    std::vector<std::uint64_t> expired;
    for (auto& [key, c] : conns_) {
      if (!c->out.empty() && now - c->last_write > o_.write_timeout) {
        expired.push_back(key);  // the client does not take its answers
      } else if (!c->finished && !c->paused && c->reader.buffered() > 0 &&
                 now - c->last_read > o_.read_timeout) {
        counters_->timed_out.fetch_add(1, std::memory_order_relaxed);
        refuse(*c, 408,
               fmt::format("request not complete {} ms after its last byte ({} bytes received)",
                           o_.read_timeout.count(), c->reader.buffered()));
        touched_.push_back(key);
      } else if (!c->finished && c->idle() && now - c->last_read > o_.idle_timeout &&
                 now - c->last_write > o_.idle_timeout) {
        expired.push_back(key);
      }
    }
    for (auto key : expired) {
      counters_->timed_out.fetch_add(1, std::memory_order_relaxed);
      close(key);
    }
    flush_touched(now);
  }

  const EventFrontOptions o_;
  Handler handler_;
  EventFrontCounters* counters_;
  Fd epoll_, listener_, wake_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns_;  // loop thread only
  std::uint64_t next_key_ = kFirstConnKey;
  std::vector<IncomingRequest> incoming_;  // loop thread only
  std::vector<std::uint64_t> touched_;     // loop thread only: connections to flush
  std::thread::id loop_thread_;
  std::mutex inbox_mu_;
  std::vector<std::pair<RequestTicket, HttpAnswer>> inbox_;  // GUARDED_BY(inbox_mu_)
  std::atomic<bool> stop_requested_{false};
  Deadline stop_deadline_ = Deadline::never();  // written before stop_requested_
  bool stopping_ = false;                       // loop thread only
  // max: accepting; else when to watch the listener again (loop thread only)
  Clock::time_point resume_accept_at_ = Clock::time_point::max();
};

Result<std::unique_ptr<EventFront>> EventFront::bind(const EventFrontOptions& options,
                                                     Handler handler) {
  std::unique_ptr<EventFront> f(new EventFront());
  f->loop_ = std::make_unique<Loop>(options, std::move(handler), &f->counters_);
  KILN_RETURN_IF_ERROR(f->loop_->open(&f->port_));
  return f;
}

void EventFront::serve() {
  if (thread_.joinable()) return;
  thread_ = std::thread([loop = loop_.get()] { loop->run(); });
}

Result<std::unique_ptr<EventFront>> EventFront::start(const EventFrontOptions& options,
                                                      Handler handler) {
  KILN_ASSIGN_OR_RETURN(auto f, bind(options, std::move(handler)));
  f->serve();
  return f;
}

EventFront::~EventFront() { stop(); }

void EventFront::answer(std::vector<std::pair<RequestTicket, HttpAnswer>> answers) {
  loop_->answer(std::move(answers));
}

void EventFront::answer(RequestTicket ticket, HttpAnswer a) {
  std::vector<std::pair<RequestTicket, HttpAnswer>> one;
  one.emplace_back(ticket, std::move(a));
  loop_->answer(std::move(one));
}

void EventFront::stop(std::chrono::milliseconds grace) {
  std::call_once(stopped_, [&] {
    if (!loop_) return;
    loop_->request_stop(grace);
    if (thread_.joinable()) thread_.join();
  });
}

HttpAnswer unrouted_answer(const HttpRequest& r) {
  for (const char* path : {"/healthz", "/readyz", "/metrics", "/v1/predict"}) {
    if (r.target == path) {
      return {.status = 405,
              .body = error_json(fmt::format("{} does not take {}: use {}", path, r.method,
                                             r.target == "/v1/predict" ? "POST" : "GET"))};
    }
  }
  return {.status = 404,
          .body = error_json(fmt::format(
              "no such path '{}': POST /v1/predict, GET /healthz, /readyz or /metrics", r.target))};
}

}  // namespace kiln::serve
