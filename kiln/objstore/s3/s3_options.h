// S3Options: where an s3:// store lives, how it signs, and how long it
// waits and retries. Defaults come from the standard AWS variables.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/status.h"

namespace kiln::objstore::s3 {

struct S3Options {
  // "http://127.0.0.1:9000" or "https://s3.eu-west-1.amazonaws.com".
  // Requests are path-style: ENDPOINT/BUCKET/KEY. Empty: AWS_ENDPOINT_URL,
  // else https://s3.REGION.amazonaws.com.
  std::string endpoint;
  std::string region;             // empty: AWS_REGION, AWS_DEFAULT_REGION, then us-east-1
  std::string access_key_id;      // empty: AWS_ACCESS_KEY_ID
  std::string secret_access_key;  // empty: AWS_SECRET_ACCESS_KEY
  std::string session_token;      // empty: AWS_SESSION_TOKEN (optional)

  // Objects at least this large go up as a multipart upload of `part_bytes`
  // parts (S3 needs parts of 5 MiB or more, except the last).
  std::uint64_t multipart_threshold_bytes = 64ull << 20;
  std::uint64_t part_bytes = 16ull << 20;
  // A streaming upload (open_writer) keeps up to this many parts in flight
  // at once, each on its own connection, so it holds at most
  // (upload_parallelism + 1) * part_bytes of memory.
  int upload_parallelism = 4;

  // ListObjectsV2 page size (max-keys); S3 caps it at 1000.
  int list_page_keys = 1000;

  // Every request: connecting, and the whole exchange (also capped by the
  // caller's deadline). A transfer slower than 1 KiB/s for `stall_timeout_ms`
  // counts as a timeout, so a hung server is noticed before the request timeout.
  std::int64_t connect_timeout_ms = 5000;
  std::int64_t request_timeout_ms = 300000;
  std::int64_t stall_timeout_ms = 15000;

  // 5xx, 429, timeouts, refused or reset connections: up to `max_attempts`
  // tries in all, exponential backoff with full jitter between them.
  int max_attempts = 6;
  std::int64_t backoff_base_ms = 100;
  std::int64_t backoff_cap_ms = 5000;
};

// Fills the empty fields of `options` from the environment and checks them.
// InvalidArgument naming the field or variable when one is unusable;
// FailedPrecondition when no credentials are set at all.
Result<S3Options> resolve_s3_options(S3Options options);

// "s3://bucket/some/prefix/" -> {"bucket", "some/prefix"}.
struct S3Location {
  std::string bucket;
  std::string prefix;  // no leading or trailing '/'
};
Result<S3Location> parse_s3_url(const std::string& url);

}  // namespace kiln::objstore::s3
