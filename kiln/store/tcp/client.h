// TcpStore: the Store client of a TcpStoreServer.
//
//   KILN_ASSIGN_OR_RETURN(auto store, TcpStore::connect("10.0.0.1", 29500,
//                                                       {.connect_timeout = 60s}));
//   KILN_ASSIGN_OR_RETURN(auto id, store->get("nccl_id", Deadline::after(30s)));
//
// Thread-safe. Each call borrows a connection from a small pool (opening one
// if none is idle), so a get parked on the server never holds up a set from
// another thread. Opening a connection retries with exponential backoff and
// jitter (kiln::Backoff) until the connect timeout or the call's deadline,
// whichever is first, so ranks may start before the server.
//
// Every call is bounded by its deadline (set/add/compare_set/erase/check use
// the default timeout). A get or wait tells the server its timeout, and the
// server answers DeadlineExceeded naming the missing keys; the client itself
// gives up kReplyGrace later if no answer comes. A call whose connection
// fails mid-request is not retried (add and compare_set are not idempotent):
// it returns Unavailable and the next call reconnects.
//
// Errors name the operation, key(s), server and cause:
//   "store get 'rank/3' on 10.0.0.1:29500: deadline exceeded after 30s"
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/store/store.h"
#include "kiln/store/tcp/connection.h"

namespace kiln::store::tcp {

struct TcpStoreOptions {
  // The job token to prove to the server (see TcpStoreServerOptions::token);
  // empty: none. Processes under a launcher pass auth::token_from_env().
  std::string token;
  // How long to keep retrying to reach the server when opening a connection.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(60)};
  // Store::default_timeout(): bounds calls made without a deadline.
  std::chrono::milliseconds default_timeout{std::chrono::seconds(300)};
};

// Note [Reply grace]: the server times out a parked get/wait itself, so that
// its answer can name the missing keys; it starts counting when the request
// arrives, a little after the client did. The client waits this much longer
// than the deadline for that answer before it gives up on its own.
inline constexpr auto kReplyGrace = std::chrono::milliseconds(250);

class TcpStore final : public Store {
 public:
  // Opens a first connection (retrying until options.connect_timeout) so an
  // unreachable server is reported here: Unavailable naming host:port, the
  // attempts and the last cause.
  static Result<std::unique_ptr<TcpStore>> connect(std::string host, std::uint16_t port,
                                                   TcpStoreOptions options = {});

  Status set(std::string_view key, std::string_view value) override;
  Result<std::string> get(std::string_view key, Deadline deadline) override;
  Result<std::int64_t> add(std::string_view key, std::int64_t delta) override;
  Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                  std::string_view desired) override;
  Status wait(std::span<const std::string> keys, Deadline deadline) override;
  Result<bool> erase(std::string_view key) override;
  Result<bool> check(std::span<const std::string> keys) override;

  using Store::get;
  using Store::wait;

  const std::string& host() const { return host_; }
  std::uint16_t port() const { return port_; }

 private:
  TcpStore(std::string host, std::uint16_t port, TcpStoreOptions options);

  // Sends `request` on a pooled connection and returns the reply, or an
  // error with the call's full context.
  Result<Response> call(Request request, Deadline deadline);
  Result<std::unique_ptr<Connection>> checkout(Deadline deadline);
  void checkin(std::unique_ptr<Connection> conn);
  std::string context(const Request& request) const;

  const std::string host_;
  const std::uint16_t port_;
  const TcpStoreOptions options_;
  std::atomic<std::uint64_t> next_id_{1};
  std::mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_;  // guarded by mu_
};

}  // namespace kiln::store::tcp
