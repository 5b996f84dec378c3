#include "kiln/objstore/s3/s3_http.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace kiln::objstore::s3 {
namespace {

// curl_global_init is not thread-safe: run it once, before any handle.
void global_init_once() {
  static const bool kInit = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)kInit;
}

struct Exchange {
  const S3Request* request = nullptr;
  S3Response* response = nullptr;
  CURL* handle = nullptr;
  std::uint64_t body_sent = 0;
};

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  std::size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(ex->handle, CURLINFO_RESPONSE_CODE, &status);
  if (ex->request->sink_fd < 0 || status < 200 || status >= 300) {
    ex->response->body.append(data, len);
    return len;
  }
  for (std::size_t off = 0; off < len;) {
    ssize_t w = ::write(ex->request->sink_fd, data + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      ex->response->sink_failed = true;
      ex->response->sink_errno = errno;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    off += static_cast<std::size_t>(w);
  }
  ex->response->sunk_bytes += len;
  return len;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  std::size_t len = size * n;
  std::string line(data, len);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    std::string value = line.substr(colon + 1);
    auto b = value.find_first_not_of(" \t");
    auto e = value.find_last_not_of(" \t\r\n");
    value = b == std::string::npos ? "" : value.substr(b, e - b + 1);
    if (name == "etag") ex->response->etag = value;
    if (name == "content-length")
      ex->response->content_length = std::strtoull(value.c_str(), nullptr, 10);
  }
  return len;
}

std::size_t on_read(char* buf, std::size_t size, std::size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  const S3Request& r = *ex->request;
  std::size_t want = size * n;
  if (r.body_fd < 0) {
    const std::string_view body = r.body_bytes();
    std::size_t left = body.size() - ex->body_sent;
    std::size_t k = std::min(want, left);
    std::memcpy(buf, body.data() + ex->body_sent, k);
    ex->body_sent += k;
    return k;
  }
  std::size_t k =
      static_cast<std::size_t>(std::min<std::uint64_t>(want, r.body_length - ex->body_sent));
  if (k == 0) return 0;
  ssize_t got;
  do {
    got = ::pread(r.body_fd, buf, k, static_cast<off_t>(r.body_offset + ex->body_sent));
  } while (got < 0 && errno == EINTR);
  if (got <= 0) return CURL_READFUNC_ABORT;
  ex->body_sent += static_cast<std::uint64_t>(got);
  return static_cast<std::size_t>(got);
}

}  // namespace

std::string uri_encode(const std::string& s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

S3Http::S3Http(const S3Options& options)
    : options_(options), sigv4_(fmt::format("aws:amz:{}:s3", options.region)) {
  global_init_once();
}

S3Http::~S3Http() {
  for (CURL* h : idle_) curl_easy_cleanup(h);
}

CURL* S3Http::take_handle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      CURL* h = idle_.back();
      idle_.pop_back();
      curl_easy_reset(h);  // keeps its connection cache
      return h;
    }
  }
  return curl_easy_init();
}

void S3Http::return_handle(CURL* h) {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(h);
}

S3Response S3Http::perform(const S3Request& request, Deadline deadline) {
  S3Response response;
  CURL* h = take_handle();
  if (h == nullptr) {
    response.curl = CURLE_FAILED_INIT;
    response.curl_error = "curl_easy_init failed";
    return response;
  }
  Exchange ex{&request, &response, h, 0};
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4_.c_str());
  curl_easy_setopt(h, CURLOPT_USERNAME, options_.access_key_id.c_str());
  curl_easy_setopt(h, CURLOPT_PASSWORD, options_.secret_access_key.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &ex);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &ex);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout_ms));
  long total_ms = static_cast<long>(std::min<std::int64_t>(
      options_.request_timeout_ms, std::max<std::int64_t>(1, deadline.remaining_ms())));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, total_ms);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                   std::max(1L, static_cast<long>(options_.stall_timeout_ms / 1000)));

  // The payload is not hashed into the signature: that would read every
  // uploaded shard twice, and readers verify each shard by its xxh3 anyway.
  // "Expect:" drops curl's 100-continue round trip before a PUT body.
  curl_slist* headers = curl_slist_append(nullptr, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
  headers = curl_slist_append(headers, "Expect:");
  std::string token_header;
  if (!options_.session_token.empty()) {
    token_header = "x-amz-security-token: " + options_.session_token;
    headers = curl_slist_append(headers, token_header.c_str());
  }
  for (const auto& line : request.headers) headers = curl_slist_append(headers, line.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

  const std::string method = request.method;
  if (method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (method == "PUT") {
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &ex);
    curl_off_t len = request.body_fd >= 0 ? static_cast<curl_off_t>(request.body_length)
                                          : static_cast<curl_off_t>(request.body_bytes().size());
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, len);
  } else if (method == "POST") {
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, request.body.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  } else if (method != "GET") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, request.method);
  }

  response.curl = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &response.http_status);
  if (response.curl != CURLE_OK) {
    response.curl_error = error[0] != '\0' ? error : curl_easy_strerror(response.curl);
  }
  curl_slist_free_all(headers);
  // A handle whose exchange failed may hold a broken connection: drop it.
  if (response.curl == CURLE_OK) {
    return_handle(h);
  } else {
    curl_easy_cleanup(h);
  }
  return response;
}

}  // namespace kiln::objstore::s3
