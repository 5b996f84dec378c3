// S3Http: one signed HTTP exchange with an S3 endpoint through libcurl
// (Signature V4 by CURLOPT_AWS_SIGV4, payload UNSIGNED-PAYLOAD). No retries
// here: S3ObjectStore decides what to retry from the S3Response.
//
// Easy handles are pooled so connections are reused between requests and
// threads. Thread-safe.
#pragma once

#include <curl/curl.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/objstore/s3/s3_options.h"

namespace kiln::objstore::s3 {

struct S3Request {
  const char* method = "GET";        // GET, PUT, POST, HEAD, DELETE
  std::string url;                   // canonical: the query already sorted and encoded
  std::vector<std::string> headers;  // extra "Name: value" lines (Range, ...)
  // Request body: `body`, or `body_view` (bytes the caller keeps alive for
  // the call: sent without a copy), or `body_length` bytes of `body_fd` at
  // `body_offset`.
  std::string body;
  std::string_view body_view;
  int body_fd = -1;
  std::uint64_t body_offset = 0;
  std::uint64_t body_length = 0;
  // A 2xx reply's body goes to `sink_fd` when set (else to S3Response::body).
  int sink_fd = -1;

  // The in-memory body, whichever of `body` and `body_view` holds it.
  std::string_view body_bytes() const {
    return body_view.empty() ? std::string_view(body) : body_view;
  }
};

struct S3Response {
  CURLcode curl = CURLE_OK;
  std::string curl_error;  // when curl != CURLE_OK
  long http_status = 0;
  std::string body;  // always the body of a non-2xx reply
  std::string etag;
  std::uint64_t content_length = 0;
  std::uint64_t sunk_bytes = 0;  // written to sink_fd
  bool sink_failed = false;      // writing to sink_fd failed (errno in sink_errno)
  int sink_errno = 0;

  bool transport_ok() const { return curl == CURLE_OK; }
  bool success() const { return transport_ok() && http_status >= 200 && http_status < 300; }
};

class S3Http {
 public:
  explicit S3Http(const S3Options& options);  // resolved options
  ~S3Http();
  S3Http(const S3Http&) = delete;
  S3Http& operator=(const S3Http&) = delete;

  // Performs one exchange, bounded by the options' timeouts and `deadline`.
  S3Response perform(const S3Request& request, Deadline deadline);

 private:
  CURL* take_handle();
  void return_handle(CURL* h);

  const S3Options& options_;
  std::string sigv4_;  // "aws:amz:REGION:s3"
  std::mutex mu_;
  std::vector<CURL*> idle_;  // GUARDED_BY(mu_)
};

// Percent-encodes per SigV4 (everything but A-Z a-z 0-9 - _ . ~), keeping
// '/' when `keep_slash` (object keys in paths).
std::string uri_encode(const std::string& s, bool keep_slash);

}  // namespace kiln::objstore::s3
