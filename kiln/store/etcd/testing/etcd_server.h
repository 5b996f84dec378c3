// EtcdServer: a real single-member etcd on 127.0.0.1 for tests.
//
//   if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
//   auto etcd = EtcdServer::start();
//   ASSERT_TRUE(etcd.is_ok()) << etcd.status().to_string();
//   auto store = EtcdStore::open({.endpoints = {(*etcd)->endpoint()}});
//
// It listens on free client and peer ports with a fresh data directory (on
// /dev/shm when there is one: etcd syncs every commit to disk), and start()
// returns once GET /health answers {"health":"true"}, polling it, bounded by
// a deadline. crash() and restart() keep the ports and the data, for fault
// tests; the destructor SIGKILLs etcd and removes the directory. The child
// gets SIGKILL if the thread that started it exits, so a crashed test leaves
// no etcd behind: start it from the test's main thread.
//
// Elections run on a 20 ms heartbeat (200 ms election timeout) so that it
// starts and restarts quickly (a restarted member waits an election timeout
// before it leads) and its minimum lease TTL is 1 s.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/base/testing/server_process.h"

namespace kiln::store::etcd::testing {

class EtcdServer {
 public:
  static constexpr const char* kNotInstalled =
      "etcd is not installed (Debian: apt-get install etcd-server)";

  // Whether an `etcd` binary is on PATH.
  static bool installed();

  static Result<std::unique_ptr<EtcdServer>> start(Deadline deadline = Deadline::after_seconds(20));

  ~EtcdServer();
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;

  // SIGKILL: etcd dies as in a crash. What it committed stays in its data.
  void crash();
  // Crashes it if it runs, then starts it again on the same ports and data
  // and waits until healthy.
  Status restart(Deadline deadline = Deadline::after_seconds(20));
  bool running() const { return process_ && process_->running(); }

  // "127.0.0.1:PORT", for EtcdStoreOptions::endpoints.
  std::string endpoint() const;
  std::uint16_t client_port() const { return client_port_; }
  // The last lines of etcd's output (for failure messages).
  std::string log_tail() const;

 private:
  EtcdServer() = default;
  Status spawn();
  Status wait_healthy(Deadline deadline);

  std::string binary_;
  std::string dir_;  // holds data/ and etcd.log
  std::uint16_t client_port_ = 0;
  std::uint16_t peer_port_ = 0;
  std::unique_ptr<kiln::testing::ServerProcess> process_;
};

}  // namespace kiln::store::etcd::testing
