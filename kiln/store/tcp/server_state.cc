#include "kiln/store/tcp/server_state.h"

#include <algorithm>
#include <chrono>

#include "kiln/store/internal/keys.h"

namespace kiln::store::tcp {
namespace {

// Longer timeouts than this are treated as none (and cannot overflow).
constexpr std::uint64_t kMaxTimeoutMs = std::uint64_t{100} * 365 * 24 * 3600 * 1000;

void erase_id(std::vector<std::uint64_t>* ids, std::uint64_t id) {
  ids->erase(std::remove(ids->begin(), ids->end(), id), ids->end());
}

}  // namespace

void ServerState::handle(ConnId conn, Request request, Clock::time_point now,
                         std::vector<Reply>* out) {
  for (const auto& key : request.keys) {
    if (key.empty()) {
      out->push_back({conn, request.op, {request.id, invalid_argument("empty key")}});
      return;
    }
  }
  if (request.op == Op::kGet || request.op == Op::kWait) {
    std::vector<std::string> missing;
    for (const auto& key : request.keys) {
      if (!data_.contains(key) && std::find(missing.begin(), missing.end(), key) == missing.end()) {
        missing.push_back(key);
      }
    }
    if (missing.empty()) {
      Parked done{conn, std::move(request), {}, now};
      out->push_back(complete(done));
    } else if (request.timeout_ms == 0) {
      Status s = internal::deadline_error(
          Clock::duration::zero(), request.op == Op::kWait ? missing : std::vector<std::string>{});
      out->push_back({conn, request.op, {request.id, std::move(s)}});
    } else {
      park(conn, std::move(request), std::move(missing), now);
    }
    return;
  }
  std::vector<std::string> created;
  Response response = run(request, &created);
  out->push_back({conn, request.op, std::move(response)});
  for (const auto& key : created) key_created(key, out);
}

Response ServerState::run(const Request& req, std::vector<std::string>* created) {
  Response resp;
  resp.id = req.id;
  const std::string& key = req.keys.at(0);
  auto it = data_.find(key);
  bool existed = it != data_.end();
  switch (req.op) {
    case Op::kSet:
      data_.insert_or_assign(key, req.value);
      if (!existed) created->push_back(key);
      break;
    case Op::kAdd: {
      auto sum = internal::add_to_value(key, existed ? &it->second : nullptr, req.delta);
      if (!sum.is_ok()) {
        resp.status = sum.status();
        break;
      }
      resp.number = *sum;
      data_.insert_or_assign(key, std::to_string(*sum));
      if (!existed) created->push_back(key);
      break;
    }
    case Op::kCompareSet: {
      const std::string current = existed ? it->second : std::string();
      if (current != req.expected) {
        resp.value = current;
        break;
      }
      data_.insert_or_assign(key, req.value);
      resp.value = req.value;
      if (!existed) created->push_back(key);
      break;
    }
    case Op::kErase:
      if (existed) data_.erase(it);
      resp.flag = existed;
      break;
    case Op::kCheck:
      resp.flag = std::all_of(req.keys.begin(), req.keys.end(),
                              [&](const std::string& k) { return data_.contains(k); });
      break;
    case Op::kGet:
    case Op::kWait:
      resp.status = internal_error("blocking op reached ServerState::run");
      break;
  }
  return resp;
}

void ServerState::park(ConnId conn, Request request, std::vector<std::string> missing,
                       Clock::time_point now) {
  std::uint64_t id = next_parked_id_++;
  Clock::time_point deadline = Clock::time_point::max();
  if (request.timeout_ms <= kMaxTimeoutMs) {
    deadline = now + std::chrono::milliseconds(request.timeout_ms);
    deadlines_.emplace(deadline, id);
  }
  for (const auto& key : missing) waiting_on_[key].push_back(id);
  by_conn_[conn].push_back(id);
  parked_.emplace(id, Parked{conn, std::move(request), std::move(missing), deadline});
}

void ServerState::key_created(const std::string& key, std::vector<Reply>* out) {
  auto it = waiting_on_.find(key);
  if (it == waiting_on_.end()) return;
  std::vector<std::uint64_t> ids = std::move(it->second);
  waiting_on_.erase(it);
  for (std::uint64_t id : ids) {
    Parked& p = parked_.at(id);
    p.missing.erase(std::remove(p.missing.begin(), p.missing.end(), key), p.missing.end());
    if (!p.missing.empty()) continue;
    out->push_back(complete(p));
    unpark(id);
  }
}

void ServerState::expire(Clock::time_point now, std::vector<Reply>* out) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    std::uint64_t id = deadlines_.begin()->second;
    const Parked& p = parked_.at(id);
    auto waited = std::chrono::milliseconds(p.request.timeout_ms);
    Status s = p.request.op == Op::kWait ? internal::deadline_error(waited, p.missing)
                                         : internal::deadline_error(waited);
    out->push_back({p.conn, p.request.op, {p.request.id, std::move(s)}});
    unpark(id);
  }
}

void ServerState::drop_connection(ConnId conn) {
  auto it = by_conn_.find(conn);
  if (it == by_conn_.end()) return;
  std::vector<std::uint64_t> ids = std::move(it->second);
  for (std::uint64_t id : ids) unpark(id);
  by_conn_.erase(conn);
}

Clock::time_point ServerState::next_deadline() const {
  return deadlines_.empty() ? Clock::time_point::max() : deadlines_.begin()->first;
}

void ServerState::unpark(std::uint64_t id) {
  auto it = parked_.find(id);
  if (it == parked_.end()) return;
  const Parked& p = it->second;
  deadlines_.erase({p.deadline, id});
  for (const auto& key : p.missing) {
    auto w = waiting_on_.find(key);
    if (w == waiting_on_.end()) continue;
    erase_id(&w->second, id);
    if (w->second.empty()) waiting_on_.erase(w);
  }
  if (auto c = by_conn_.find(p.conn); c != by_conn_.end()) erase_id(&c->second, id);
  parked_.erase(it);
}

Reply ServerState::complete(const Parked& p) const {
  Reply r{p.conn, p.request.op, {}};
  r.response.id = p.request.id;
  if (p.request.op == Op::kGet) {
    auto it = data_.find(p.request.keys.at(0));
    // key_created runs right after the write, so the key is present.
    if (it != data_.end()) r.response.value = it->second;
  }
  return r;
}

}  // namespace kiln::store::tcp
