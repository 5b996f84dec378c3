#include "kiln/objstore/s3/local_s3rver.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <vector>

#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::objstore::s3 {
namespace {

namespace fs = std::filesystem;

constexpr auto kPoll = std::chrono::milliseconds(20);

bool executable(const std::string& p) { return !p.empty() && ::access(p.c_str(), X_OK) == 0; }

}  // namespace

std::string LocalS3Server::find_binary() {
  const char* env = std::getenv("KILN_S3RVER");
  if (env != nullptr && *env != '\0') return executable(env) ? env : "";
  if (find_on_path("node").empty()) return "";  // s3rver.js runs under node
#ifdef KILN_S3RVER_DEFAULT
  if (executable(KILN_S3RVER_DEFAULT)) return KILN_S3RVER_DEFAULT;
#endif
  return find_on_path("s3rver");
}

Result<std::unique_ptr<LocalS3Server>> LocalS3Server::start(std::string bucket, Deadline deadline) {
  std::string binary = find_binary();
  if (binary.empty()) return failed_precondition(kNotInstalled);
  std::unique_ptr<LocalS3Server> server(new LocalS3Server());
  server->binary_ = binary;
  server->bucket_ = std::move(bucket);
  KILN_ASSIGN_OR_RETURN(server->dir_, make_scratch_dir("kiln_s3rver_"));
  server->process_ = std::make_unique<ServerProcess>("s3rver", server->dir_ + "/s3rver.log");
  Status last;
  for (int attempt = 0; attempt < 3 && !deadline.expired(); ++attempt) {
    KILN_ASSIGN_OR_RETURN(server->port_, free_loopback_port());
    KILN_RETURN_IF_ERROR(server->spawn());
    last = server->wait_ready(deadline);
    if (last.is_ok()) return server;
    server->kill();
  }
  return last.with_context("start s3rver");
}

LocalS3Server::~LocalS3Server() {
  kill();
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string LocalS3Server::endpoint() const { return fmt::format("http://127.0.0.1:{}", port_); }

std::string LocalS3Server::url(const std::string& prefix) const {
  return prefix.empty() ? "s3://" + bucket_ : "s3://" + bucket_ + "/" + prefix;
}

S3Options LocalS3Server::options() const {
  S3Options o;
  o.endpoint = endpoint();
  o.region = "us-east-1";
  o.access_key_id = "S3RVER";
  o.secret_access_key = "S3RVER";
  o.connect_timeout_ms = 1000;
  o.request_timeout_ms = 20000;
  o.stall_timeout_ms = 5000;
  o.max_attempts = 4;
  o.backoff_base_ms = 20;
  o.backoff_cap_ms = 200;
  return o;
}

std::string LocalS3Server::log_tail() const { return process_ ? process_->log_tail() : ""; }

Status LocalS3Server::spawn() {
  std::vector<std::string> args = {"--directory", dir_ + "/data",
                                   "--address",   "127.0.0.1",
                                   "--port",      std::to_string(port_),
                                   "--configure-bucket", bucket_,
                                   "--silent"};
  // s3rver with ListMultipartUploads and AbortMultipartUpload added
  // (s3rver_uploads.js), where the checkout has it and node is on PATH.
  const std::string node = find_on_path("node");
  bool wrapped = false;
#ifdef KILN_S3RVER_UPLOADS_JS
  if (!node.empty() && ::access(KILN_S3RVER_UPLOADS_JS, R_OK) == 0) {
    args.insert(args.begin(), {node, KILN_S3RVER_UPLOADS_JS, binary_});
    wrapped = true;
  }
#endif
  if (!wrapped) args.insert(args.begin(), binary_);
  // s3rver 3.7 does not start on Node 17+ without OpenSSL's legacy provider.
  return process_->spawn(args, {"NODE_OPTIONS=--openssl-legacy-provider"});
}

Status LocalS3Server::wait_ready(Deadline deadline) {
  S3Options o = options();
  o.max_attempts = 1;
  o.connect_timeout_ms = 500;
  o.request_timeout_ms = 1000;
  auto store = S3ObjectStore::open(url(), o);
  if (!store) return store.status();
  Status last = unavailable("no answer yet");
  while (true) {
    Status alive = process_->check_running();
    if (!alive.is_ok()) return alive.with_context("s3rver exited before it answered");
    auto listed = (*store)->list("", deadline.min(Deadline::after_seconds(1)));
    if (listed.is_ok()) return Status::ok();
    last = listed.status();
    if (deadline.expired()) {
      return deadline_exceeded(
          fmt::format("s3rver on {} not answering in time (last: {}); its "
                      "log:\n{}",
                      endpoint(), last.to_string(), log_tail()));
    }
    std::this_thread::sleep_for(kPoll);
  }
}

Status LocalS3Server::restart(Deadline deadline) {
  kill();
  KILN_RETURN_IF_ERROR(spawn());
  return wait_ready(deadline).with_context("restart s3rver");
}

void LocalS3Server::kill() {
  if (process_) process_->kill();
}

}  // namespace kiln::objstore::s3
