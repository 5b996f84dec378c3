// LocalS3Server: a real S3-compatible server (s3rver, from npm) on
// 127.0.0.1 for tests and benchmarks (`kiln bench data`, `kiln bench ckpt`):
// a launcher, not test code, so the CLI links it without linking test support.
//
//   if (!LocalS3Server::installed()) GTEST_SKIP() << LocalS3Server::kNotInstalled;
//   auto s3 = LocalS3Server::start();
//   ASSERT_TRUE(s3.is_ok()) << s3.status().to_string();
//   auto store = S3ObjectStore::open((*s3)->url("ds"), (*s3)->options());
//
// It listens on a free port with a fresh directory (on /dev/shm when there is
// one) and one bucket, with s3rver's missing ListMultipartUploads and
// AbortMultipartUpload added (s3rver_uploads.js; where the checkout lacks it,
// plain s3rver runs and answers them NotImplemented). start() returns once a
// ListObjectsV2 of that bucket
// answers, polling it, bounded by a deadline. kill() and restart() keep the
// port and the objects, for fault tests; the destructor SIGKILLs s3rver and
// removes the directory. The child gets SIGKILL if the thread that started it
// exits, so start it from the test's main thread.
//
// s3rver is found at $KILN_S3RVER, else in the checkout's .deps/node (where
// scripts/install-deps.sh puts it), else on PATH. It does not check
// signatures; its credentials are S3RVER/S3RVER.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/server_process.h"
#include "kiln/base/status.h"
#include "kiln/objstore/s3/s3_options.h"

namespace kiln::objstore::s3 {

class LocalS3Server {
 public:
  static constexpr const char* kNotInstalled =
      "s3rver is not installed (bash scripts/install-deps.sh puts it in .deps/node; or set "
      "KILN_S3RVER to its bin/s3rver.js)";

  // The s3rver executable, or "" where there is none.
  static std::string find_binary();
  static bool installed() { return !find_binary().empty(); }

  static Result<std::unique_ptr<LocalS3Server>> start(
      std::string bucket = "kiln-test", Deadline deadline = Deadline::after_seconds(30));

  ~LocalS3Server();
  LocalS3Server(const LocalS3Server&) = delete;
  LocalS3Server& operator=(const LocalS3Server&) = delete;

  // SIGKILL: s3rver dies mid-request, as in a crash. Its objects stay.
  void kill();
  // Kills it if it runs, then starts it again on the same port and objects
  // and waits until it answers.
  Status restart(Deadline deadline = Deadline::after_seconds(30));
  bool running() const { return process_ && process_->running(); }

  std::string endpoint() const;  // "http://127.0.0.1:PORT"
  std::uint16_t port() const { return port_; }
  const std::string& bucket() const { return bucket_; }
  // "s3://BUCKET/PREFIX".
  std::string url(const std::string& prefix = "") const;
  // Endpoint and credentials for this server, with short timeouts and few
  // attempts so fault tests finish quickly. Callers may tune them further.
  S3Options options() const;
  // The last lines of s3rver's output (for failure messages).
  std::string log_tail() const;

 private:
  LocalS3Server() = default;
  Status spawn();
  Status wait_ready(Deadline deadline);

  std::string binary_;
  std::string bucket_;
  std::string dir_;  // holds data/ and s3rver.log
  std::uint16_t port_ = 0;
  std::unique_ptr<ServerProcess> process_;
};

}  // namespace kiln::objstore::s3
