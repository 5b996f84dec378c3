// S3ObjectStore: the s3:// tier. Path-style requests (ENDPOINT/BUCKET/KEY)
// signed with AWS Signature V4, so it works with AWS, MinIO, Ceph RGW and
// s3rver alike.
//
// - get_to_file / get / get_range: GET (with Range for get_range).
// - put_file: one PUT below S3Options::multipart_threshold_bytes, else a
//   multipart upload (initiate, parts, complete); a failed multipart upload
//   is aborted so no orphaned parts are billed.
// - list: ListObjectsV2, following continuation tokens.
// - put_if_absent: PUT with If-None-Match: * (Note [Conditional writes]).
// - head: HEAD. remove: DELETE. remove_many: DeleteObjects (Note [Batch
//   deletes]).
//
// Note [S3 retries]: every request is retried on 5xx, 429, timeouts and
// refused/reset connections, up to S3Options::max_attempts tries with
// exponential backoff and full jitter, within the caller's deadline; then
// Unavailable naming the object, the attempts and the last failure. A 4xx
// is not retried: NotFound for NoSuchKey/NoSuchBucket/404, FailedPrecondition
// for AccessDenied and other refusals, always naming the S3 error code.
// Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "kiln/objstore/object_store.h"
#include "kiln/objstore/s3/s3_http.h"
#include "kiln/objstore/s3/s3_options.h"
#include "kiln/objstore/s3/s3_request_log.h"

namespace kiln::objstore::s3 {

struct S3StoreStats {
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> retries{0};
};

class S3ObjectStore final : public ObjectStore {
 public:
  // `url` is s3://BUCKET[/PREFIX]; keys are relative to PREFIX. Options are
  // resolved against the environment (resolve_s3_options).
  static Result<std::unique_ptr<S3ObjectStore>> open(const std::string& url,
                                                     S3Options options = {});

  Status get_to_file(const std::string& key, const std::string& dst, Deadline deadline) override;
  Result<std::string> get(const std::string& key, Deadline deadline) override;
  Status put_file(const std::string& key, const std::string& src, Deadline deadline) override;
  // Up to one part's bytes: one PUT sent straight from `bytes` (no copy, no
  // writer buffer: a chunk of a checkpoint's shard held once, not twice);
  // larger: the streaming writer's multipart upload.
  Status put(const std::string& key, std::string_view bytes, Deadline deadline) override;
  // Up to one part's bytes: one PUT with If-None-Match: * (Note [Conditional
  // writes]); larger: put() (the caller's own check stands).
  Status put_if_absent(const std::string& key, std::string_view bytes, Deadline deadline) override;
  // Note [S3 streaming upload]: a multipart upload whose parts go up in
  // parallel (S3Options::upload_parallelism) while the caller appends; an
  // object that ends within the first part is one PUT instead.
  Result<std::unique_ptr<ObjectWriter>> open_writer(const std::string& key,
                                                    Deadline deadline) override;
  Result<std::string> get_range(const std::string& key, std::uint64_t offset, std::uint64_t length,
                                Deadline deadline) override;
  Result<ObjectInfo> head(const std::string& key, Deadline deadline) override;
  Result<std::vector<ObjectInfo>> list(const std::string& prefix, Deadline deadline) override;
  Status remove(const std::string& key, Deadline deadline) override;
  Status remove_many(const std::vector<std::string>& keys, Deadline deadline) override;
  // ListMultipartUploads (following its markers) / AbortMultipartUpload.
  Result<std::vector<PendingUpload>> list_pending_uploads(const std::string& prefix,
                                                          Deadline deadline) override;
  Status abort_pending_upload(const PendingUpload& upload, Deadline deadline) override;
  std::string describe() const override;
  UploadShape upload_shape() const override {
    return {static_cast<std::size_t>(options_.part_bytes), options_.upload_parallelism};
  }

  const S3Options& options() const { return options_; }
  const S3StoreStats& stats() const { return stats_; }
  // Every request's kind and times, while enabled (diagnostics).
  S3RequestLog& request_log() { return log_; }

 private:
  S3ObjectStore(S3Options options, S3Location location);

  std::string full_key(const std::string& key) const;
  std::string object_url(const std::string& key, const std::string& query = "") const;
  std::string describe_key(const std::string& key) const;

  // Performs `request` with Note [S3 retries]; `what` names it in errors
  // ("GET s3://b/k"). A sink file is truncated before every attempt. On a
  // reply that is not retried, `refused` (when given) gets it.
  Result<S3Response> call(const S3Request& request, const std::string& what, Deadline deadline,
                          S3Response* refused = nullptr);
  // One DeleteObjects request for up to kMaxKeysPerDelete keys.
  Status delete_batch(const std::vector<std::string>& keys, Deadline deadline);
  Status put_multipart(const std::string& key, int fd, std::uint64_t size, Deadline deadline);

  // The steps of a multipart upload (S3Multipart).
  friend class S3ObjectWriter;
  Result<std::string> initiate_multipart(const std::string& key, Deadline deadline);
  // Uploads part `part` (from 1) of `upload_id` from `body` (or `fd` at
  // offset when body_fd >= 0); returns its ETag.
  Result<std::string> upload_part(const std::string& key, const std::string& upload_id, int part,
                                  S3Request body, Deadline deadline);
  Status complete_multipart(const std::string& key, const std::string& upload_id,
                            const std::vector<std::string>& etags, Deadline deadline);
  // Best effort, with its own short deadline (the caller's may be what ran out).
  void abort_multipart(const std::string& key, const std::string& upload_id);
  Status abort_upload(const std::string& key, const std::string& upload_id, Deadline deadline);

  S3Options options_;
  S3Location location_;
  std::unique_ptr<S3Http> http_;
  S3StoreStats stats_;
  S3RequestLog log_;
  // Cleared when the endpoint refuses DeleteObjects: deletes go one by one.
  std::atomic<bool> batch_deletes_{true};
};

}  // namespace kiln::objstore::s3
