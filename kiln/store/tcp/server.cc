#include "kiln/store/tcp/server.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <climits>
#include <deque>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kiln/base/auth/handshake.h"
#include "kiln/base/check.h"
#include "kiln/base/logging.h"
#include "kiln/store/tcp/server_state.h"
#include "kiln/base/socket.h"

namespace kiln::store::tcp {

using namespace ::kiln::net;  // socket helpers (kiln/base/socket.h)
namespace {

constexpr std::uint64_t kListenerToken = 0;
constexpr std::uint64_t kWakeToken = 1;
constexpr ConnId kFirstConnId = 2;
// Read at most this much from one connection per wakeup, so one fast sender
// cannot starve the others (epoll is level-triggered: the rest comes next).
constexpr std::size_t kReadBudgetBytes = std::size_t{4} << 20;
// After accept() runs out of descriptors, stop accepting this long.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);

// A connection reads the client's hello, then (the server having sent its
// hello and an authentication challenge) the client's proof, and only then
// requests.
enum class Phase { kHello, kProof, kReady };

struct Conn {
  Fd fd;
  std::string peer;
  Phase phase = Phase::kHello;
  std::optional<auth::Acceptor> auth;
  bool want_write = false;  // EPOLLOUT registered
  FrameReader in;
  std::string out;
  std::size_t out_pos = 0;
};

}  // namespace

// Everything the loop thread owns. Only stop() is called from elsewhere.
class TcpStoreServer::Loop {
 public:
  Loop(TcpStoreServerOptions options, std::string name, Fd listener, Fd epoll, Fd wake,
       std::atomic<std::size_t>* parked, std::atomic<std::size_t>* connections,
       std::atomic<std::size_t>* refused)
      : options_(options),
        name_(std::move(name)),
        listener_(std::move(listener)),
        epoll_(std::move(epoll)),
        wake_(std::move(wake)),
        parked_(parked),
        connections_(connections),
        refused_(refused) {}

  void run();

  void request_stop() {
    stop_.store(true);
    std::uint64_t one = 1;
    // eventfd writes of 8 bytes cannot be partial; failure would mean a bug.
    KILN_CHECK(::write(wake_.get(), &one, sizeof(one)) == sizeof(one));
  }

 private:
  int epoll_timeout_ms() const;
  void accept_all();
  void on_conn_event(ConnId id, std::uint32_t events);
  // Handles the hello and every complete frame buffered on `id`.
  void process(ConnId id, Conn& conn, std::vector<Reply>* replies);
  // The hello and authentication; false while they are not complete (or the
  // connection was closed for failing them).
  bool handshake(ConnId id, Conn& conn);
  void expire_handshakes(Clock::time_point now);
  void deliver(std::vector<Reply>& replies);
  void flush(ConnId id);
  void close_conn(ConnId id, std::string_view reason, bool warn);
  void set_events(int fd, std::uint64_t token, std::uint32_t events);

  TcpStoreServerOptions options_;
  std::string name_;  // "store server HOST:PORT" for logs
  Fd listener_;
  Fd epoll_;
  Fd wake_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t>* parked_;
  std::atomic<std::size_t>* connections_;
  std::atomic<std::size_t>* refused_;

  ServerState state_;
  // Connections still in the handshake, by deadline (all get the same
  // timeout, so accept order is deadline order).
  std::deque<std::pair<Clock::time_point, ConnId>> handshakes_;
  std::unordered_map<ConnId, Conn> conns_;
  ConnId next_id_ = kFirstConnId;
  Clock::time_point resume_accept_at_ = Clock::time_point::max();  // max: accepting
};

void TcpStoreServer::Loop::run() {
  std::vector<epoll_event> events(128);
  std::vector<Reply> replies;
  while (!stop_.load()) {
    int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                         epoll_timeout_ms());
    if (n < 0) {
      if (errno == EINTR) continue;
      log()->error("{}: epoll_wait failed, stopping: {}", name_,
                   errno_status("epoll_wait", errno).to_string());
      break;
    }
    for (int i = 0; i < n; ++i) {
      std::uint64_t token = events[i].data.u64;
      if (token == kListenerToken) {
        accept_all();
      } else if (token != kWakeToken) {
        on_conn_event(token, events[i].events);
      }
    }
    auto now = Clock::now();
    replies.clear();
    state_.expire(now, &replies);
    deliver(replies);
    expire_handshakes(now);
    if (now >= resume_accept_at_) {
      resume_accept_at_ = Clock::time_point::max();
      set_events(listener_.get(), kListenerToken, EPOLLIN);
    }
    parked_->store(state_.parked());
    connections_->store(conns_.size());
  }
  // Closing every socket fails the clients' pending calls at once.
  for (auto& [id, conn] : conns_) state_.drop_connection(id);
  conns_.clear();
  parked_->store(0);
  connections_->store(0);
}

int TcpStoreServer::Loop::epoll_timeout_ms() const {
  auto next = std::min(state_.next_deadline(), resume_accept_at_);
  if (!handshakes_.empty()) next = std::min(next, handshakes_.front().first);
  if (next == Clock::time_point::max()) return -1;
  auto now = Clock::now();
  if (next <= now) return 0;
  // Round up: waking a little late is fine, spinning until the deadline is not.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::min<std::int64_t>(ms, INT_MAX));
}

void TcpStoreServer::Loop::accept_all() {
  while (true) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    int fd = ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      // Out of descriptors or memory: the listener would stay readable and
      // spin the loop, so mute it for a moment.
      log()->warn("{}: accept failed, pausing accepts for {}ms: {}", name_, kAcceptPause.count(),
                  errno_status("accept", errno).to_string());
      set_events(listener_.get(), kListenerToken, 0);
      resume_accept_at_ = Clock::now() + kAcceptPause;
      return;
    }
    Conn conn;
    conn.fd.reset(fd);
    conn.peer = format_address(addr);
    conn.in = FrameReader(options_.max_frame_bytes);
    if (Status s = set_nodelay(fd); !s.is_ok()) {
      log()->warn("{}: connection from {}: {}", name_, conn.peer, s.to_string());
    }
    ConnId id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      log()->warn("{}: dropping connection from {}: {}", name_, conn.peer,
                  errno_status("epoll_ctl", errno).to_string());
      continue;
    }
    log()->debug("{}: connection from {}", name_, conn.peer);
    conn.auth.emplace(options_.token, "store");
    conns_.emplace(id, std::move(conn));
    handshakes_.emplace_back(Clock::now() + options_.handshake_timeout, id);
  }
}

void TcpStoreServer::Loop::on_conn_event(ConnId id, std::uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;  // closed earlier in this batch
  Conn& conn = it->second;
  if (events & EPOLLOUT) {
    flush(id);
    if (!conns_.contains(id)) return;
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  char buf[64 * 1024];
  std::size_t budget = kReadBudgetBytes;
  bool eof = false;
  Status error;
  while (budget > 0) {
    ssize_t r = ::recv(conn.fd.get(), buf, std::min(sizeof(buf), budget), 0);
    if (r > 0) {
      conn.in.append(std::string_view(buf, static_cast<std::size_t>(r)));
      budget -= static_cast<std::size_t>(r);
    } else if (r == 0) {
      eof = true;
      break;
    } else if (errno == EINTR) {
      continue;
    } else {
      if (errno != EAGAIN && errno != EWOULDBLOCK) error = errno_status("recv", errno);
      break;
    }
  }
  std::vector<Reply> replies;
  process(id, conn, &replies);  // may close `id`
  deliver(replies);
  if (!conns_.contains(id)) return;
  if (!error.is_ok()) {
    close_conn(id, error.to_string(), false);
  } else if (eof && conns_.at(id).phase == Phase::kProof) {
    // A Kiln client without the token gives up on seeing the challenge.
    refused_->fetch_add(1);
    close_conn(id, "refused: closed before authenticating (a client without the job token?)",
               true);
  } else if (eof) {
    close_conn(id, "closed by peer", false);
  }
}

void TcpStoreServer::Loop::expire_handshakes(Clock::time_point now) {
  while (!handshakes_.empty() && handshakes_.front().first <= now) {
    ConnId id = handshakes_.front().second;
    handshakes_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second.phase == Phase::kReady) continue;
    refused_->fetch_add(1);
    close_conn(id,
               fmt::format("refused: no hello and authentication within {}ms",
                           options_.handshake_timeout.count()),
               true);
  }
}

bool TcpStoreServer::Loop::handshake(ConnId id, Conn& conn) {
  if (conn.phase == Phase::kHello) {
    std::string hello;
    if (!conn.in.take_raw(kHelloBytes, &hello)) return false;
    if (Status s = check_hello(hello); !s.is_ok()) {
      // A Kiln peer of another version gets our hello first, so its error
      // names both versions instead of a bare "connection closed".
      if (s.code() == Code::kFailedPrecondition) {
        conn.out += encode_hello();
        flush(id);
      }
      close_conn(id, fmt::format("rejected handshake: {}", s.to_string()), true);
      return false;
    }
    auto challenge = conn.auth->challenge();
    if (!challenge.is_ok()) {
      close_conn(id, challenge.status().to_string(), true);
      return false;
    }
    conn.out += encode_hello();
    conn.out += *challenge;
    conn.phase = Phase::kProof;
    flush(id);
    if (!conns_.contains(id)) return false;
  }
  if (conn.phase == Phase::kProof) {
    std::string proof;
    if (!conn.in.take_raw(auth::kProofBytes, &proof)) return false;
    Status s = conn.auth->check_proof(proof);
    conn.out += conn.auth->verdict(s.is_ok());
    flush(id);
    if (!conns_.contains(id)) return false;
    if (!s.is_ok()) {
      refused_->fetch_add(1);
      close_conn(id, fmt::format("refused: {}", s.message()), true);
      return false;
    }
    conn.phase = Phase::kReady;
    conn.auth.reset();
  }
  return true;
}

void TcpStoreServer::Loop::process(ConnId id, Conn& conn, std::vector<Reply>* replies) {
  if (conn.phase != Phase::kReady && !handshake(id, conn)) return;
  std::string body;
  auto now = Clock::now();
  while (true) {
    Result<bool> got = conn.in.take_frame(&body);
    if (!got.is_ok()) {
      close_conn(id, got.status().to_string(), true);
      return;
    }
    if (!*got) return;
    Result<Request> request = decode_request(body);
    if (!request.is_ok()) {
      close_conn(id, request.status().to_string(), true);
      return;
    }
    state_.handle(id, std::move(request).value(), now, replies);
  }
}

void TcpStoreServer::Loop::deliver(std::vector<Reply>& replies) {
  for (Reply& r : replies) {
    auto it = conns_.find(r.conn);
    if (it == conns_.end()) continue;  // the requester hung up
    append_response(r.op, r.response, &it->second.out);
    flush(r.conn);
  }
}

void TcpStoreServer::Loop::flush(ConnId id) {
  Conn& conn = conns_.at(id);
  while (conn.out_pos < conn.out.size()) {
    ssize_t n = ::send(conn.fd.get(), conn.out.data() + conn.out_pos,
                       conn.out.size() - conn.out_pos, MSG_NOSIGNAL);
    if (n >= 0) {
      conn.out_pos += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    close_conn(id, errno_status("send", errno).to_string(), false);
    return;
  }
  std::size_t pending = conn.out.size() - conn.out_pos;
  if (pending == 0) {
    conn.out.clear();
    conn.out_pos = 0;
  } else if (pending > options_.max_pending_output_bytes) {
    close_conn(id, fmt::format("{} bytes of replies unread", pending), true);
    return;
  }
  bool want_write = pending > 0;
  if (want_write != conn.want_write) {
    conn.want_write = want_write;
    set_events(conn.fd.get(), id, want_write ? EPOLLIN | EPOLLOUT : EPOLLIN);
  }
}

void TcpStoreServer::Loop::close_conn(ConnId id, std::string_view reason, bool warn) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  if (warn) {
    log()->warn("{}: closing connection from {}: {}", name_, it->second.peer, reason);
  } else {
    log()->debug("{}: connection from {} closed: {}", name_, it->second.peer, reason);
  }
  state_.drop_connection(id);
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd.get(), nullptr);
  conns_.erase(it);
}

void TcpStoreServer::Loop::set_events(int fd, std::uint64_t token, std::uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  // Only fails for a descriptor that is not registered: a bug.
  KILN_CHECK(::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) == 0);
}

TcpStoreServer::TcpStoreServer(TcpStoreServerOptions options) : options_(options) {}

TcpStoreServer::~TcpStoreServer() { stop(); }

Status TcpStoreServer::start(const std::string& host, std::uint16_t port) {
  KILN_CHECK_MSG(loop_ == nullptr, "TcpStoreServer::start called twice");
  auto context = [&] { return fmt::format("store server listen on {}", host_port(host, port)); };
  std::uint16_t bound = 0;
  auto listener = listen_tcp(host, port, options_.backlog, &bound);
  if (!listener.is_ok()) return listener.status().with_context(context());
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return errno_status("epoll_create1", errno).with_context(context());
  Fd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) return errno_status("eventfd", errno).with_context(context());
  for (auto [fd, token] :
       {std::pair{listener->get(), kListenerToken}, std::pair{wake.get(), kWakeToken}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = token;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return errno_status("epoll_ctl", errno).with_context(context());
    }
  }
  host_ = host;
  port_ = bound;
  loop_ = std::make_unique<Loop>(options_, fmt::format("store server {}", host_port(host, bound)),
                                 std::move(listener).value(), std::move(epoll), std::move(wake),
                                 &parked_, &connections_, &refused_);
  thread_ = std::thread([loop = loop_.get()] { loop->run(); });
  log()->info("store server listening on {}", host_port(host, bound));
  return Status::ok();
}

void TcpStoreServer::stop() {
  if (loop_ == nullptr) return;
  loop_->request_stop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();
}

}  // namespace kiln::store::tcp
