// ServerState: the TcpStore server's keys and parked requests, with no
// sockets. The server's loop thread owns it; nothing here locks or blocks.
//
// A get or wait whose keys are missing is parked: it is answered when the
// last of its keys is created (by set, add or compare_set), with
// DeadlineExceeded once its timeout_ms passes, or dropped silently when its
// connection closes. A parked wait counts each key as it appears; a key
// erased again afterwards does not re-park it (the c10d semantics).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/store/tcp/protocol.h"

namespace kiln::store::tcp {

// Identifies a connection; the server never reuses one.
using ConnId = std::uint64_t;

struct Reply {
  ConnId conn = 0;
  Op op = Op::kSet;
  Response response;
};

class ServerState {
 public:
  // Runs `request` from `conn` received at `now`. Appends the replies that
  // are ready: this request's unless it parks, and those of parked requests
  // it completes.
  void handle(ConnId conn, Request request, Clock::time_point now, std::vector<Reply>* out);

  // Answers DeadlineExceeded to every parked request whose time is up.
  void expire(Clock::time_point now, std::vector<Reply>* out);

  // Forgets the parked requests of a connection that closed.
  void drop_connection(ConnId conn);

  // When the earliest parked request times out; time_point::max if none.
  Clock::time_point next_deadline() const;

  std::size_t parked() const { return parked_.size(); }
  std::size_t keys() const { return data_.size(); }

 private:
  struct Parked {
    ConnId conn = 0;
    Request request;
    std::vector<std::string> missing;  // distinct keys not yet seen
    Clock::time_point deadline;
  };

  Response run(const Request& request, std::vector<std::string>* created);
  void park(ConnId conn, Request request, std::vector<std::string> missing, Clock::time_point now);
  // A key was created: completes parked requests that waited only on it.
  void key_created(const std::string& key, std::vector<Reply>* out);
  void unpark(std::uint64_t parked_id);
  Reply complete(const Parked& p) const;

  std::map<std::string, std::string, std::less<>> data_;
  std::uint64_t next_parked_id_ = 1;
  std::unordered_map<std::uint64_t, Parked> parked_;
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiting_on_;  // key -> parked ids
  std::set<std::pair<Clock::time_point, std::uint64_t>> deadlines_;
  std::unordered_map<ConnId, std::vector<std::uint64_t>> by_conn_;
};

}  // namespace kiln::store::tcp
