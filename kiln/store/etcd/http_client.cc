#include "kiln/store/etcd/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <mutex>

#include "kiln/base/check.h"

namespace kiln::store::etcd {
namespace {

// More idle handles than this are closed: enough for the threads of one
// agent, few enough that a burst does not leave sockets open.
constexpr std::size_t kMaxIdle = 8;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { KILN_CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK); });
}

// What the write callback needs: where the body goes, or whom to hand lines.
struct Sink {
  CURL* curl = nullptr;
  std::string body;
  std::string partial;  // a line still waiting for its '\n'
  const std::function<bool(std::string_view)>* on_line = nullptr;
  bool stopped = false;
};

std::size_t on_write(char* data, std::size_t size, std::size_t nmemb, void* user) {
  auto* sink = static_cast<Sink*>(user);
  std::size_t n = size * nmemb;
  long status = 0;
  curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &status);
  if (sink->on_line == nullptr || status < 200 || status >= 300) {
    sink->body.append(data, n);
    return n;
  }
  sink->partial.append(data, n);
  std::size_t start = 0;
  for (std::size_t nl; (nl = sink->partial.find('\n', start)) != std::string::npos;
       start = nl + 1) {
    std::string_view line(sink->partial.data() + start, nl - start);
    if (line.empty()) continue;
    if (!(*sink->on_line)(line)) {
      sink->stopped = true;
      return CURL_WRITEFUNC_ERROR;  // ends the transfer: the handler has what it wanted
    }
  }
  sink->partial.erase(0, start);
  return n;
}

}  // namespace

struct HttpClient::Handle {
  CURL* curl = nullptr;
  curl_slist* headers = nullptr;
  char error[CURL_ERROR_SIZE] = {};
  Handle() {
    curl = curl_easy_init();
    KILN_CHECK(curl != nullptr);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    // No "Expect: 100-continue" round trip before larger bodies.
    headers = curl_slist_append(headers, "Expect:");
  }
  ~Handle() {
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
  }
};

HttpClient::HttpClient(TlsFiles tls) : tls_(std::move(tls)) { global_init(); }
HttpClient::~HttpClient() = default;

std::unique_ptr<HttpClient::Handle> HttpClient::checkout() {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      std::unique_ptr<Handle> h = std::move(idle_.back());
      idle_.pop_back();
      // Drops the previous exchange's options but keeps its open connection.
      curl_easy_reset(h->curl);
      return h;
    }
  }
  return std::make_unique<Handle>();
}

void HttpClient::checkin(std::unique_ptr<Handle> handle) {
  std::lock_guard lock(mu_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(handle));
}

HttpExchange HttpClient::perform(Handle& h, Deadline deadline, bool* stopped) {
  HttpExchange ex;
  if (!deadline.is_never()) {
    // Rounded up (remaining_ms()), plus 1 ms for curl's own millisecond
    // granularity: a request must not give up before the caller's deadline
    // (with truncation, a get with a 150 ms timeout once returned
    // DeadlineExceeded after 149.7 ms). At most 2 ms late instead.
    const std::int64_t left_ms = deadline.remaining_ms();
    if (left_ms <= 0) {
      ex.outcome = HttpExchange::Outcome::kTimedOut;
      ex.error = "deadline passed before the request was sent";
      return ex;
    }
    curl_easy_setopt(h.curl, CURLOPT_TIMEOUT_MS, static_cast<long>(left_ms + 1));
  }
  // Signals cannot interrupt a worker thread's transfer (timeouts use
  // curl's own timers), and a dead peer is noticed on an idle watch.
  curl_easy_setopt(h.curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h.curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h.curl, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h.curl, CURLOPT_HTTPHEADER, h.headers);
  // Set on every exchange: checkout()'s curl_easy_reset clears them.
  if (!tls_.ca_file.empty()) curl_easy_setopt(h.curl, CURLOPT_CAINFO, tls_.ca_file.c_str());
  if (!tls_.cert_file.empty()) curl_easy_setopt(h.curl, CURLOPT_SSLCERT, tls_.cert_file.c_str());
  if (!tls_.key_file.empty()) curl_easy_setopt(h.curl, CURLOPT_SSLKEY, tls_.key_file.c_str());
  h.error[0] = '\0';
  curl_easy_setopt(h.curl, CURLOPT_ERRORBUFFER, h.error);

  CURLcode rc = curl_easy_perform(h.curl);
  curl_easy_getinfo(h.curl, CURLINFO_RESPONSE_CODE, &ex.http_status);
  if (rc == CURLE_OK) {
    ex.outcome = HttpExchange::Outcome::kReplied;
    return ex;
  }
  ex.error = h.error[0] != '\0' ? h.error : curl_easy_strerror(rc);
  if (rc == CURLE_WRITE_ERROR && *stopped) {
    ex.outcome = HttpExchange::Outcome::kStopped;
  } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
    ex.outcome = HttpExchange::Outcome::kNotSent;
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    ex.outcome = HttpExchange::Outcome::kTimedOut;
  } else {
    ex.outcome = HttpExchange::Outcome::kBroken;
  }
  return ex;
}

HttpExchange HttpClient::post(const std::string& url, std::string_view body, Deadline deadline) {
  return stream(url, body, deadline, nullptr);
}

HttpExchange HttpClient::get(const std::string& url, Deadline deadline) {
  std::unique_ptr<Handle> h = checkout();
  Sink sink;
  sink.curl = h->curl;
  curl_easy_setopt(h->curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &sink);
  HttpExchange ex = perform(*h, deadline, &sink.stopped);
  ex.body = std::move(sink.body);
  checkin(std::move(h));
  return ex;
}

HttpExchange HttpClient::stream(const std::string& url, std::string_view body, Deadline deadline,
                                const std::function<bool(std::string_view line)>& on_line) {
  std::unique_ptr<Handle> h = checkout();
  Sink sink;
  sink.curl = h->curl;
  sink.on_line = on_line ? &on_line : nullptr;
  curl_easy_setopt(h->curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h->curl, CURLOPT_POST, 1L);
  curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &sink);
  HttpExchange ex = perform(*h, deadline, &sink.stopped);
  ex.body = std::move(sink.body);
  // A stopped stream leaves its connection mid-reply; curl closes such a
  // connection itself, so the handle can still be reused.
  checkin(std::move(h));
  return ex;
}

}  // namespace kiln::store::etcd
