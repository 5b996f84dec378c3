// S3RequestLog: when each request of an S3ObjectStore started and ended,
// what kind it was and how many body bytes it sent (retries included in
// one record). Off unless asked for; `kiln bench ckpt --s3` turns it on to
// take a checkpoint's upload apart (Note [Where an upload's time goes],
// cli/bench_ckpt_s3_breakdown.h). Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/objstore/s3/s3_http.h"

namespace kiln::objstore::s3 {

enum class S3RequestKind {
  kPut,          // PUT of a whole object
  kPart,         // UploadPart
  kInitiate,     // CreateMultipartUpload
  kComplete,     // CompleteMultipartUpload
  kAbort,        // AbortMultipartUpload
  kGet,          // GET (whole or ranged)
  kHead,         // HEAD
  kDelete,       // DELETE of an object
  kList,         // ListObjectsV2
  kListUploads,  // ListMultipartUploads
  kDeleteMany,   // DeleteObjects (POST ?delete)
  kLast = kDeleteMany,
};
// Counts are kept per kind in arrays of this size: it follows the enum.
constexpr int kS3RequestKinds = static_cast<int>(S3RequestKind::kLast) + 1;

std::string_view request_kind_name(S3RequestKind kind);
// From the method and the query of `request` (as S3ObjectStore builds them).
S3RequestKind classify_request(const S3Request& request);

struct S3RequestRecord {
  S3RequestKind kind = S3RequestKind::kGet;
  std::uint64_t body_bytes = 0;
  Clock::time_point start, end;  // the first attempt's start, the last one's end
  int attempts = 0;
  bool ok = false;
};

class S3RequestLog {
 public:
  void enable(bool on) { on_.store(on, std::memory_order_relaxed); }
  bool enabled() const { return on_.load(std::memory_order_relaxed); }
  void add(const S3RequestRecord& r);
  // The records since the last take, in the order they ended.
  std::vector<S3RequestRecord> take();

 private:
  std::atomic<bool> on_{false};
  std::mutex mu_;
  std::vector<S3RequestRecord> records_;  // guarded by mu_
};

}  // namespace kiln::objstore::s3
