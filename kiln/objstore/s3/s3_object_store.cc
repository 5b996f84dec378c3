#include "kiln/objstore/s3/s3_object_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "kiln/base/backoff.h"
#include "kiln/base/fd.h"
#include "kiln/base/logging.h"
#include "kiln/objstore/s3/s3_object_writer.h"
#include "kiln/objstore/s3/s3_xml.h"

namespace kiln::objstore::s3 {
namespace {

// Note [S3 retries]: what a retry can fix.
bool retryable(const S3Response& r) {
  if (!r.transport_ok()) {
    switch (r.curl) {
      case CURLE_COULDNT_CONNECT:
      case CURLE_OPERATION_TIMEDOUT:
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
      case CURLE_PARTIAL_FILE:
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
      case CURLE_SSL_CONNECT_ERROR:
      // A connection reset while a body was going up: curl cannot rewind
      // our read callback, but the next attempt sends the body from its start.
      case CURLE_SEND_FAIL_REWIND:
        return true;
      default:
        return false;
    }
  }
  // 501 Not Implemented: the endpoint lacks the call; no retry adds it.
  if ((r.http_status >= 500 && r.http_status != 501) || r.http_status == 429) return true;
  // A conditional write that raced another write of the key: S3 asks for a
  // retry (Note [Conditional writes]).
  return r.http_status == 409 && parse_error(r.body).code == "ConditionalRequestConflict";
}

std::string describe_failure(const S3Response& r) {
  if (!r.transport_ok()) return fmt::format("{} (curl {})", r.curl_error, static_cast<int>(r.curl));
  S3Error e = parse_error(r.body);
  if (e.code.empty()) return fmt::format("HTTP {}", r.http_status);
  return fmt::format("HTTP {} {}: {}", r.http_status, e.code, e.message);
}

// A non-retryable failure as a Status the caller can act on.
Status permanent_error(const S3Response& r, const std::string& what) {
  if (r.sink_failed) {
    Status s = errno_status("write the download", r.sink_errno);
    return Status(s.code(), fmt::format("{}: {}", what, s.message()));
  }
  std::string why = describe_failure(r);
  if (!r.transport_ok()) return unavailable(fmt::format("{}: {}", what, why));
  S3Error e = parse_error(r.body);
  if (r.http_status == 404 || e.code == "NoSuchKey" || e.code == "NoSuchBucket" ||
      e.code == "NoSuchUpload") {
    return not_found(fmt::format("{}: {}", what, why));
  }
  if (r.http_status == 400 || r.http_status == 416) {
    return invalid_argument(fmt::format("{}: {}", what, why));
  }
  return failed_precondition(
      fmt::format("{}: {}; check the credentials, the bucket and its policy", what, why));
}

}  // namespace

Result<std::unique_ptr<S3ObjectStore>> S3ObjectStore::open(const std::string& url,
                                                           S3Options options) {
  KILN_ASSIGN_OR_RETURN(S3Location location, parse_s3_url(url));
  auto resolved = resolve_s3_options(std::move(options));
  if (!resolved) return resolved.status().with_context("open " + url);
  return std::unique_ptr<S3ObjectStore>(new S3ObjectStore(std::move(resolved).value(), location));
}

S3ObjectStore::S3ObjectStore(S3Options options, S3Location location)
    : options_(std::move(options)), location_(std::move(location)) {
  http_ = std::make_unique<S3Http>(options_);
}

std::string S3ObjectStore::describe() const {
  std::string s = "s3://" + location_.bucket;
  if (!location_.prefix.empty()) s += "/" + location_.prefix;
  return s;
}

std::string S3ObjectStore::full_key(const std::string& key) const {
  return location_.prefix.empty() ? key : location_.prefix + "/" + key;
}

std::string S3ObjectStore::object_url(const std::string& key, const std::string& query) const {
  std::string url = fmt::format("{}/{}/{}", options_.endpoint, location_.bucket,
                                uri_encode(full_key(key), /*keep_slash=*/true));
  return query.empty() ? url : url + "?" + query;
}

std::string S3ObjectStore::describe_key(const std::string& key) const {
  return fmt::format("s3://{}/{}", location_.bucket, full_key(key));
}

Result<S3Response> S3ObjectStore::call(const S3Request& request, const std::string& what,
                                       Deadline deadline, S3Response* refused) {
  Backoff backoff({.base = std::chrono::milliseconds(options_.backoff_base_ms),
                   .cap = std::chrono::milliseconds(options_.backoff_cap_ms),
                   .max_attempts = options_.max_attempts - 1});
  const auto start = Clock::now();
  // Into the request log, when it is on, however the request ends.
  auto logged = [&](Result<S3Response> r, int attempts) {
    if (log_.enabled()) {
      std::uint64_t body = request.body_fd >= 0 ? request.body_length : request.body_bytes().size();
      log_.add({classify_request(request), body, start, Clock::now(), attempts, r.is_ok()});
    }
    return r;
  };
  for (int attempt = 1;; ++attempt) {
    if (request.sink_fd >= 0 &&
        (::ftruncate(request.sink_fd, 0) != 0 || ::lseek(request.sink_fd, 0, SEEK_SET) != 0)) {
      return errno_status(
          what + ": truncate the download before attempt " + std::to_string(attempt), errno);
    }
    stats_.requests.fetch_add(1);
    S3Response r = http_->perform(request, deadline);
    if (r.success()) return logged(std::move(r), attempt);
    if (!retryable(r) || r.sink_failed) {
      Status s = permanent_error(r, what);
      if (refused != nullptr) *refused = std::move(r);
      return logged(std::move(s), attempt);
    }
    const std::string why = describe_failure(r);
    if (!backoff.sleep_before_retry(deadline)) {
      const double waited = seconds_since(start);
      std::string msg = fmt::format("{}: failed {} attempt{} over {:.1f} s; last: {}", what,
                                    attempt, attempt == 1 ? "" : "s", waited, why);
      if (deadline.expired()) return logged(deadline_exceeded(msg + " (deadline passed)"), attempt);
      return logged(unavailable(msg + " (S3Options::max_attempts reached; is the endpoint " +
                                options_.endpoint + " up?)"),
                    attempt);
    }
    stats_.retries.fetch_add(1);
    log()->debug("s3: {} failed ({}); retry {} of {}", what, why, attempt,
                 options_.max_attempts - 1);
  }
}

Status S3ObjectStore::get_to_file(const std::string& key, const std::string& dst,
                                  Deadline deadline) {
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out.get() < 0) return errno_status("get " + describe_key(key) + ": create " + dst, errno);
  S3Request req;
  req.url = object_url(key);
  req.sink_fd = out.get();
  auto r = call(req, "GET " + describe_key(key), deadline);
  if (!r) return r.status();
  if (r->content_length != 0 && r->sunk_bytes != r->content_length) {
    return unavailable(fmt::format("GET {}: got {} of {} bytes", describe_key(key), r->sunk_bytes,
                                   r->content_length));
  }
  if (::fsync(out.get()) != 0) return errno_status("fsync " + dst, errno);
  return Status::ok();
}

Result<std::string> S3ObjectStore::get(const std::string& key, Deadline deadline) {
  S3Request req;
  req.url = object_url(key);
  KILN_ASSIGN_OR_RETURN(S3Response r, call(req, "GET " + describe_key(key), deadline));
  return std::move(r.body);
}

Result<std::string> S3ObjectStore::get_range(const std::string& key, std::uint64_t offset,
                                             std::uint64_t length, Deadline deadline) {
  if (length == 0) {
    KILN_ASSIGN_OR_RETURN(ObjectInfo info, head(key, deadline));
    if (offset > info.bytes) {
      return invalid_argument(fmt::format("get_range {}: offset {} is past the end ({} bytes)",
                                          describe_key(key), offset, info.bytes));
    }
    return std::string();
  }
  S3Request req;
  req.url = object_url(key);
  req.headers.push_back(fmt::format("Range: bytes={}-{}", offset, offset + length - 1));
  const std::string what = fmt::format("GET {} bytes {}+{}", describe_key(key), offset, length);
  KILN_ASSIGN_OR_RETURN(S3Response r, call(req, what, deadline));
  if (r.http_status == 200) {
    // A server that ignores Range sends the whole object: cut our part out.
    if (offset > r.body.size()) {
      return invalid_argument(
          fmt::format("{}: offset past the end ({} bytes)", what, r.body.size()));
    }
    return r.body.substr(offset, length);
  }
  return std::move(r.body);
}

Result<ObjectInfo> S3ObjectStore::head(const std::string& key, Deadline deadline) {
  S3Request req;
  req.method = "HEAD";
  req.url = object_url(key);
  KILN_ASSIGN_OR_RETURN(S3Response r, call(req, "HEAD " + describe_key(key), deadline));
  return ObjectInfo{key, r.content_length};
}

Status S3ObjectStore::remove(const std::string& key, Deadline deadline) {
  S3Request req;
  req.method = "DELETE";
  req.url = object_url(key);
  auto r = call(req, "DELETE " + describe_key(key), deadline);
  if (!r && r.status().code() != Code::kNotFound) return r.status();
  return Status::ok();
}

Result<std::vector<ObjectInfo>> S3ObjectStore::list(const std::string& prefix, Deadline deadline) {
  const std::string root = location_.prefix.empty() ? "" : location_.prefix + "/";
  const std::string full_prefix = root + prefix;
  std::vector<ObjectInfo> out;
  std::string token;
  for (int page = 0;; ++page) {
    // SigV4 signs the query as given: keep its parameters sorted by name.
    std::string query;
    if (!token.empty()) query += "continuation-token=" + uri_encode(token, false) + "&";
    query += fmt::format("list-type=2&max-keys={}&prefix={}", options_.list_page_keys,
                         uri_encode(full_prefix, false));
    S3Request req;
    req.url = fmt::format("{}/{}?{}", options_.endpoint, location_.bucket, query);
    const std::string what =
        fmt::format("LIST s3://{}/{}* (page {})", location_.bucket, full_prefix, page + 1);
    KILN_ASSIGN_OR_RETURN(S3Response r, call(req, what, deadline));
    auto parsed = parse_list_objects_v2(r.body);
    if (!parsed) return parsed.status().with_context(what);
    for (auto& o : parsed->objects) {
      if (o.key.rfind(root, 0) != 0) continue;
      o.key.erase(0, root.size());
      out.push_back(std::move(o));
    }
    if (!parsed->truncated) break;
    token = parsed->next_continuation_token;
  }
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status S3ObjectStore::put(const std::string& key, std::string_view bytes, Deadline deadline) {
  if (bytes.size() > options_.part_bytes) return ObjectStore::put(key, bytes, deadline);
  S3Request req;
  req.method = "PUT";
  req.url = object_url(key);
  req.body_view = bytes;
  return call(req, "PUT " + describe_key(key), deadline).status();
}

// Note [Conditional writes]: S3 has taken If-None-Match: * on PutObject
// since August 2024 (the user guide's "How to prevent object overwrites
// with conditional writes"): the PUT stores the object only if none is under
// its key, else 412 Precondition Failed; two such PUTs racing for one key
// may get 409 ConditionalRequestConflict, which is retried (retryable()),
// and the retry then gets 412 or succeeds. A retry after a lost reply whose
// first attempt landed gets 412 for our own object: callers read it back.
// MinIO and Ceph RGW honour the header too; s3rver ignores it and stores.
Status S3ObjectStore::put_if_absent(const std::string& key, std::string_view bytes,
                                    Deadline deadline) {
  if (bytes.size() > options_.part_bytes) return ObjectStore::put_if_absent(key, bytes, deadline);
  S3Request req;
  req.method = "PUT";
  req.url = object_url(key);
  req.body_view = bytes;
  req.headers.push_back("If-None-Match: *");
  const std::string what = "PUT (if absent) " + describe_key(key);
  S3Response refused;
  auto r = call(req, what, deadline, &refused);
  if (!r.is_ok() && refused.http_status == 412) {
    return already_exists(fmt::format("{}: an object is there already ({})", what,
                                      describe_failure(refused)));
  }
  return r.status();
}

Status S3ObjectStore::put_file(const std::string& key, const std::string& src, Deadline deadline) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) return errno_status("put " + describe_key(key) + ": open " + src, errno);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return errno_status("stat " + src, errno);
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size >= options_.multipart_threshold_bytes) {
    return put_multipart(key, in.get(), size, deadline);
  }
  S3Request req;
  req.method = "PUT";
  req.url = object_url(key);
  req.body_fd = in.get();
  req.body_length = size;
  return call(req, "PUT " + describe_key(key), deadline).status();
}

Result<std::string> S3ObjectStore::initiate_multipart(const std::string& key, Deadline deadline) {
  const std::string what = "initiate multipart upload " + describe_key(key);
  S3Request init;
  init.method = "POST";
  init.url = object_url(key, "uploads=");
  KILN_ASSIGN_OR_RETURN(S3Response ir, call(init, what, deadline));
  auto upload_id = parse_upload_id(ir.body);
  if (!upload_id) return upload_id.status().with_context(what);
  return upload_id;
}

Result<std::string> S3ObjectStore::upload_part(const std::string& key, const std::string& upload_id,
                                               int part, S3Request req, Deadline deadline) {
  const std::string what = fmt::format("upload part {} of {}", part, describe_key(key));
  req.method = "PUT";
  req.url =
      object_url(key, fmt::format("partNumber={}&uploadId={}", part, uri_encode(upload_id, false)));
  KILN_ASSIGN_OR_RETURN(S3Response pr, call(req, what, deadline));
  if (pr.etag.empty()) return data_loss(what + ": reply has no ETag");
  return std::move(pr.etag);
}

Status S3ObjectStore::complete_multipart(const std::string& key, const std::string& upload_id,
                                         const std::vector<std::string>& etags, Deadline deadline) {
  S3Request done;
  done.method = "POST";
  done.url = object_url(key, "uploadId=" + uri_encode(upload_id, false));
  done.body = complete_multipart_xml(etags);
  const std::string what =
      fmt::format("complete multipart upload {} ({} parts)", describe_key(key), etags.size());
  KILN_ASSIGN_OR_RETURN(S3Response cr, call(done, what, deadline));
  // S3 may report a failed completion inside a 200 reply.
  S3Error e = parse_error(cr.body);
  if (!e.code.empty()) return unavailable(fmt::format("{}: {}: {}", what, e.code, e.message));
  return Status::ok();
}

Status S3ObjectStore::abort_upload(const std::string& key, const std::string& upload_id,
                                   Deadline deadline) {
  S3Request abort;
  abort.method = "DELETE";
  abort.url = object_url(key, "uploadId=" + uri_encode(upload_id, false));
  Status a = call(abort, "abort multipart upload " + describe_key(key), deadline).status();
  // NoSuchUpload: completed or aborted already.
  return a.code() == Code::kNotFound ? Status::ok() : a;
}

Status S3ObjectStore::abort_pending_upload(const PendingUpload& upload, Deadline deadline) {
  return abort_upload(upload.key, upload.id, deadline);
}

Result<std::vector<PendingUpload>> S3ObjectStore::list_pending_uploads(const std::string& prefix,
                                                                       Deadline deadline) {
  const std::string root = location_.prefix.empty() ? "" : location_.prefix + "/";
  const std::string full_prefix = root + prefix;
  std::vector<PendingUpload> out;
  std::string key_marker, id_marker;
  for (int page = 0;; ++page) {
    // SigV4 signs the query as given: keep its parameters sorted by name.
    std::string query;
    if (!key_marker.empty()) query += "key-marker=" + uri_encode(key_marker, false) + "&";
    query += "prefix=" + uri_encode(full_prefix, false);
    if (!id_marker.empty()) query += "&upload-id-marker=" + uri_encode(id_marker, false);
    query += "&uploads=";
    S3Request req;
    req.url = fmt::format("{}/{}?{}", options_.endpoint, location_.bucket, query);
    const std::string what = fmt::format("LIST multipart uploads s3://{}/{}* (page {})",
                                         location_.bucket, full_prefix, page + 1);
    KILN_ASSIGN_OR_RETURN(S3Response r, call(req, what, deadline));
    auto parsed = parse_list_multipart_uploads(r.body);
    if (!parsed) return parsed.status().with_context(what);
    for (auto& u : parsed->uploads) {
      if (u.key.rfind(full_prefix, 0) != 0) continue;
      u.key.erase(0, root.size());
      out.push_back(std::move(u));
    }
    if (!parsed->truncated) break;
    key_marker = parsed->next_key_marker;
    id_marker = parsed->next_upload_id_marker;
  }
  std::sort(out.begin(), out.end(), [](const PendingUpload& a, const PendingUpload& b) {
    return a.key != b.key ? a.key < b.key : a.id < b.id;
  });
  return out;
}

void S3ObjectStore::abort_multipart(const std::string& key, const std::string& upload_id) {
  Status a = abort_upload(key, upload_id, Deadline::after_seconds(10));
  if (!a.is_ok()) {
    log()->warn("s3: {} (its parts may linger until the bucket's lifecycle rule removes them)",
                a.to_string());
  }
}

Status S3ObjectStore::put_multipart(const std::string& key, int fd, std::uint64_t size,
                                    Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(std::string upload_id, initiate_multipart(key, deadline));
  auto upload = [&]() -> Status {
    std::vector<std::string> etags;
    for (std::uint64_t off = 0; off < size; off += options_.part_bytes) {
      S3Request req;
      req.body_fd = fd;
      req.body_offset = off;
      req.body_length = std::min(options_.part_bytes, size - off);
      KILN_ASSIGN_OR_RETURN(std::string etag,
                            upload_part(key, upload_id, static_cast<int>(etags.size()) + 1,
                                        std::move(req), deadline));
      etags.push_back(std::move(etag));
    }
    return complete_multipart(key, upload_id, etags, deadline);
  };
  Status s = upload();
  if (!s.is_ok()) abort_multipart(key, upload_id);
  return s;
}

Result<std::unique_ptr<ObjectWriter>> S3ObjectStore::open_writer(const std::string& key,
                                                                 Deadline deadline) {
  return std::unique_ptr<ObjectWriter>(new S3ObjectWriter(this, key, deadline));
}

}  // namespace kiln::objstore::s3
