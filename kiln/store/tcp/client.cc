#include "kiln/store/tcp/client.h"

#include <fmt/format.h>

#include "kiln/base/backoff.h"
#include "kiln/store/internal/keys.h"

namespace kiln::store::tcp {

using namespace ::kiln::net;  // socket helpers (kiln/base/socket.h)
namespace {

constexpr BackoffOptions kReconnectBackoff{.base = std::chrono::milliseconds(50),
                                           .cap = std::chrono::seconds(2)};

bool is_blocking(Op op) { return op == Op::kGet || op == Op::kWait; }

Request make_request(Op op, std::string_view key) {
  Request r;
  r.op = op;
  r.keys.emplace_back(key);
  return r;
}

}  // namespace

TcpStore::TcpStore(std::string host, std::uint16_t port, TcpStoreOptions options)
    : host_(std::move(host)), port_(port), options_(options) {
  set_default_timeout(options_.default_timeout);
}

Result<std::unique_ptr<TcpStore>> TcpStore::connect(std::string host, std::uint16_t port,
                                                    TcpStoreOptions options) {
  std::unique_ptr<TcpStore> store(new TcpStore(std::move(host), port, options));
  auto conn = store->checkout(Deadline::after(options.connect_timeout));
  if (!conn.is_ok()) {
    return conn.status().with_context(
        fmt::format("store connect to {}", host_port(store->host_, store->port_)));
  }
  store->checkin(std::move(conn).value());
  return store;
}

std::string TcpStore::context(const Request& request) const {
  std::string keys = request.op == Op::kWait || request.op == Op::kCheck
                         ? internal::quote_keys(request.keys)
                         : internal::quote_key(request.keys.at(0));
  return fmt::format("store {} {} on {}", op_name(request.op), keys, host_port(host_, port_));
}

Result<std::unique_ptr<Connection>> TcpStore::checkout(Deadline deadline) {
  {
    std::lock_guard lock(mu_);
    while (!idle_.empty()) {
      std::unique_ptr<Connection> conn = std::move(idle_.back());
      idle_.pop_back();
      if (conn->idle_and_open()) return conn;
    }
  }
  Deadline connect_deadline = deadline.min(Deadline::after(options_.connect_timeout));
  Backoff backoff(kReconnectBackoff);
  auto start = Clock::now();
  int attempts = 0;
  Status last;
  while (true) {
    ++attempts;
    auto conn = Connection::open(host_, port_, options_.token, connect_deadline);
    if (conn.is_ok()) return conn;
    last = conn.status();
    // A peer that answers with the wrong hello will not change its mind.
    if (last.code() == Code::kDataLoss || last.code() == Code::kFailedPrecondition) return last;
    if (!backoff.sleep_before_retry(connect_deadline)) break;
  }
  return unavailable(fmt::format("server unreachable after {} ({} attempt{}): {}",
                                 internal::format_duration(Clock::now() - start), attempts,
                                 attempts == 1 ? "" : "s", last.message()));
}

void TcpStore::checkin(std::unique_ptr<Connection> conn) {
  std::lock_guard lock(mu_);
  idle_.push_back(std::move(conn));
}

Result<Response> TcpStore::call(Request request, Deadline deadline) {
  auto start = Clock::now();
  auto conn = checkout(deadline);
  if (!conn.is_ok()) return conn.status().with_context(context(request));
  request.id = next_id_.fetch_add(1);
  Deadline reply_deadline = deadline;
  if (is_blocking(request.op) && !deadline.is_never()) {
    request.timeout_ms = static_cast<std::uint64_t>(
        std::chrono::ceil<std::chrono::milliseconds>(deadline.remaining()).count());
    // See Note [Reply grace].
    reply_deadline = Deadline::after(deadline.remaining() + kReplyGrace);
  }
  Result<Response> response = (*conn)->call(request, reply_deadline);
  if (!response.is_ok()) {
    // The connection is dropped here: a late reply may still be on its way.
    Status s = response.status();
    if (s.code() == Code::kDeadlineExceeded) {
      s = deadline_exceeded(fmt::format(
          "deadline exceeded after {}{}", internal::format_duration(Clock::now() - start),
          is_blocking(request.op) ? " (no reply from the server)" : ""));
    }
    return s.with_context(context(request));
  }
  checkin(std::move(conn).value());
  if (!response->status.is_ok()) return response->status.with_context(context(request));
  return response;
}

Status TcpStore::set(std::string_view key, std::string_view value) {
  KILN_RETURN_IF_ERROR(internal::validate_key("set", key));
  Request r = make_request(Op::kSet, key);
  r.value = value;
  return call(std::move(r), Deadline::after(default_timeout())).status();
}

Result<std::string> TcpStore::get(std::string_view key, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_key("get", key));
  KILN_ASSIGN_OR_RETURN(Response r, call(make_request(Op::kGet, key), deadline));
  return std::move(r.value);
}

Result<std::int64_t> TcpStore::add(std::string_view key, std::int64_t delta) {
  KILN_RETURN_IF_ERROR(internal::validate_key("add", key));
  Request req = make_request(Op::kAdd, key);
  req.delta = delta;
  KILN_ASSIGN_OR_RETURN(Response r, call(std::move(req), Deadline::after(default_timeout())));
  return r.number;
}

Result<std::string> TcpStore::compare_set(std::string_view key, std::string_view expected,
                                          std::string_view desired) {
  KILN_RETURN_IF_ERROR(internal::validate_key("compare_set", key));
  Request req = make_request(Op::kCompareSet, key);
  req.expected = expected;
  req.value = desired;
  KILN_ASSIGN_OR_RETURN(Response r, call(std::move(req), Deadline::after(default_timeout())));
  return std::move(r.value);
}

Status TcpStore::wait(std::span<const std::string> keys, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("wait", keys));
  if (keys.empty()) return Status::ok();
  Request req;
  req.op = Op::kWait;
  req.keys.assign(keys.begin(), keys.end());
  return call(std::move(req), deadline).status();
}

Result<bool> TcpStore::erase(std::string_view key) {
  KILN_RETURN_IF_ERROR(internal::validate_key("erase", key));
  KILN_ASSIGN_OR_RETURN(Response r,
                        call(make_request(Op::kErase, key), Deadline::after(default_timeout())));
  return r.flag;
}

Result<bool> TcpStore::check(std::span<const std::string> keys) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("check", keys));
  if (keys.empty()) return true;
  Request req;
  req.op = Op::kCheck;
  req.keys.assign(keys.begin(), keys.end());
  KILN_ASSIGN_OR_RETURN(Response r, call(std::move(req), Deadline::after(default_timeout())));
  return r.flag;
}

}  // namespace kiln::store::tcp
