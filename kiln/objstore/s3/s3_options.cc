#include "kiln/objstore/s3/s3_options.h"

#include <fmt/format.h>

#include <cstdlib>

namespace kiln::objstore::s3 {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

}  // namespace

Result<S3Options> resolve_s3_options(S3Options o) {
  if (o.region.empty()) o.region = env_or("AWS_REGION", env_or("AWS_DEFAULT_REGION", "us-east-1"));
  if (o.endpoint.empty()) {
    o.endpoint = env_or("AWS_ENDPOINT_URL", fmt::format("https://s3.{}.amazonaws.com", o.region));
  }
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  if (o.endpoint.rfind("http://", 0) != 0 && o.endpoint.rfind("https://", 0) != 0) {
    return invalid_argument(fmt::format(
        "s3 endpoint '{}' (AWS_ENDPOINT_URL or options): must start with http:// or https://",
        o.endpoint));
  }
  if (o.access_key_id.empty()) o.access_key_id = env_or("AWS_ACCESS_KEY_ID", "");
  if (o.secret_access_key.empty()) o.secret_access_key = env_or("AWS_SECRET_ACCESS_KEY", "");
  if (o.session_token.empty()) o.session_token = env_or("AWS_SESSION_TOKEN", "");
  if (o.access_key_id.empty() || o.secret_access_key.empty()) {
    return failed_precondition(fmt::format(
        "s3 endpoint {}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        o.endpoint));
  }
  if (o.part_bytes < (5ull << 20)) {
    return invalid_argument(
        fmt::format("s3 part_bytes {}: S3 needs parts of at least 5 MiB", o.part_bytes));
  }
  if (o.multipart_threshold_bytes < o.part_bytes) o.multipart_threshold_bytes = o.part_bytes;
  if (o.max_attempts < 1) o.max_attempts = 1;
  if (o.upload_parallelism < 1) o.upload_parallelism = 1;
  return o;
}

Result<S3Location> parse_s3_url(const std::string& url) {
  if (url.rfind("s3://", 0) != 0) return invalid_argument("'" + url + "' is not an s3:// URL");
  std::string rest = url.substr(5);
  auto slash = rest.find('/');
  S3Location loc;
  loc.bucket = rest.substr(0, slash);
  if (slash != std::string::npos) loc.prefix = rest.substr(slash + 1);
  while (!loc.prefix.empty() && loc.prefix.back() == '/') loc.prefix.pop_back();
  while (!loc.prefix.empty() && loc.prefix.front() == '/') loc.prefix.erase(0, 1);
  if (loc.bucket.empty()) return invalid_argument("s3 URL '" + url + "': no bucket");
  return loc;
}

}  // namespace kiln::objstore::s3
