#include "kiln/store/etcd/client.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cerrno>

#include "kiln/base/backoff.h"
#include "kiln/store/internal/keys.h"

namespace kiln::store::etcd {
namespace {

constexpr BackoffOptions kRetryBackoff{.base = std::chrono::milliseconds(20),
                                       .cap = std::chrono::seconds(1)};

Code from_grpc(std::int64_t grpc) {
  switch (grpc) {
    case 1:
      return Code::kCancelled;
    case 3:
    case 11:
      return Code::kInvalidArgument;
    case 4:
      return Code::kDeadlineExceeded;
    case 5:
      return Code::kNotFound;
    case 6:
      return Code::kAlreadyExists;
    case 7:
    case 9:
    case 12:
    case 16:
      return Code::kFailedPrecondition;
    case 8:
      return Code::kResourceExhausted;
    case 10:
      return Code::kAborted;
    case 14:
      return Code::kUnavailable;
    case 15:
      return Code::kDataLoss;
    default:
      return Code::kInternal;
  }
}

std::string with_scheme(std::string endpoint) {
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  if (endpoint.find("://") == std::string::npos) endpoint = "http://" + endpoint;
  return endpoint;
}

bool is_transient(long http_status) { return http_status >= 500; }

}  // namespace

Status gateway_error(long http_status, std::string_view body) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  // Unary errors carry "code"; errors inside a stream "grpc_code".
  for (const char* field : {"code", "grpc_code"}) {
    if (j.is_object() && j.contains(field) && j[field].is_number_integer()) {
      std::string message = json_string(j, "message", "(no message)");
      return Status(from_grpc(j[field].get<std::int64_t>()),
                    fmt::format("HTTP {}: {}", http_status, message));
    }
  }
  Code code = is_transient(http_status) ? Code::kUnavailable
              : http_status == 404      ? Code::kNotFound
                                        : Code::kFailedPrecondition;
  return Status(code, fmt::format("HTTP {}: {:.200}", http_status, body));
}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, TlsFiles tls)
    : endpoints_(std::move(endpoints)), http_(std::move(tls)) {}

Result<std::shared_ptr<EtcdClient>> EtcdClient::create(std::vector<std::string> endpoints,
                                                       TlsFiles tls) {
  if (endpoints.empty()) return invalid_argument("etcd: no endpoints given");
  for (auto& e : endpoints) {
    if (e.empty()) return invalid_argument("etcd: empty endpoint");
    e = with_scheme(std::move(e));
  }
  for (const std::string* f : {&tls.ca_file, &tls.cert_file, &tls.key_file}) {
    if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
      return errno_status(fmt::format("etcd TLS file {}", *f), errno);
    }
  }
  return std::shared_ptr<EtcdClient>(new EtcdClient(std::move(endpoints), std::move(tls)));
}

std::string EtcdClient::url(std::size_t endpoint, std::string_view method) const {
  return fmt::format("{}/v3/{}", endpoints_[endpoint % endpoints_.size()], method);
}

void EtcdClient::rotate(std::size_t failed) {
  current_.compare_exchange_strong(failed, (failed + 1) % endpoints_.size());
}

std::string EtcdClient::current_endpoint() const {
  return endpoints_[current_.load() % endpoints_.size()];
}

std::string EtcdClient::endpoints_text() const {
  return fmt::format("{}", fmt::join(endpoints_, ","));
}

Result<Json> EtcdClient::call(std::string_view method, const Json& request, Deadline deadline,
                              Retry retry) {
  const std::string body = request.dump();
  Backoff backoff(kRetryBackoff);
  auto start = Clock::now();
  int attempts = 0;
  bool unreachable = false;  // some attempt failed to reach etcd
  std::string last;
  std::size_t endpoint = 0;
  while (true) {
    ++attempts;
    endpoint = current_.load();
    HttpExchange ex = http_.post(url(endpoint, method), body, deadline);
    using Outcome = HttpExchange::Outcome;
    if (ex.outcome == Outcome::kReplied && !is_transient(ex.http_status)) {
      if (ex.http_status < 200 || ex.http_status >= 300) {
        return gateway_error(ex.http_status, ex.body)
            .with_context(
                fmt::format("etcd {} {}", endpoints_[endpoint % endpoints_.size()], method));
      }
      Json reply = Json::parse(ex.body, nullptr, /*allow_exceptions=*/false);
      if (!reply.is_object()) {
        return data_loss(fmt::format("etcd {} {}: reply is not a JSON object: '{:.200}'",
                                     endpoints_[endpoint % endpoints_.size()], method, ex.body));
      }
      return reply;
    }
    if (ex.outcome == Outcome::kTimedOut) {
      // After failed attempts, their cause is the news, not the clock.
      if (!unreachable) last = ex.error;
      break;
    }
    unreachable = true;
    last = ex.outcome == Outcome::kReplied ? gateway_error(ex.http_status, ex.body).message()
                                           : ex.error;
    bool may_have_applied = ex.outcome != Outcome::kNotSent;
    if (may_have_applied && retry == Retry::kOnlyIfNotSent) {
      return unavailable(
          fmt::format("etcd {} {}: {} (the request may or may not have been applied; not retried)",
                      endpoints_[endpoint % endpoints_.size()], method, last));
    }
    rotate(endpoint);
    if (!backoff.sleep_before_retry(deadline)) break;
  }
  std::string where = endpoints_.size() == 1 ? endpoints_[0] : "[" + endpoints_text() + "]";
  std::string took = internal::format_duration(Clock::now() - start);
  if (unreachable) {
    return unavailable(fmt::format("etcd {} {}: unreachable for {} ({} attempt{}): {}", where,
                                   method, took, attempts, attempts == 1 ? "" : "s", last));
  }
  return deadline_exceeded(
      fmt::format("etcd {} {}: no reply within {} ({})", where, method, took, last));
}

Status EtcdClient::stream(std::string_view method, const Json& request, Deadline deadline,
                          const std::function<bool(const Json& result)>& on_message) {
  std::size_t endpoint = current_.load();
  const std::string& where = endpoints_[endpoint % endpoints_.size()];
  Status bad;  // a malformed message or an error inside the stream
  HttpExchange ex =
      http_.stream(url(endpoint, method), request.dump(), deadline, [&](std::string_view line) {
        Json msg = Json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (!msg.is_object()) {
          bad = data_loss(fmt::format("etcd {} {}: stream message is not JSON: '{:.200}'", where,
                                      method, line));
          return false;
        }
        if (auto err = msg.find("error"); err != msg.end()) {
          bad = gateway_error(200, err->dump())
                    .with_context(fmt::format("etcd {} {}", where, method));
          return false;
        }
        auto result = msg.find("result");
        if (result == msg.end() || !result->is_object()) {
          bad = data_loss(fmt::format("etcd {} {}: stream message without result: '{:.200}'", where,
                                      method, line));
          return false;
        }
        return on_message(*result);
      });
  using Outcome = HttpExchange::Outcome;
  switch (ex.outcome) {
    case Outcome::kStopped:
      return bad;  // ok when on_message asked to stop
    case Outcome::kTimedOut:
      return deadline_exceeded(fmt::format("etcd {} {}: {}", where, method, ex.error));
    case Outcome::kReplied:
      if (ex.http_status < 200 || ex.http_status >= 300) {
        return gateway_error(ex.http_status, ex.body)
            .with_context(fmt::format("etcd {} {}", where, method));
      }
      return unavailable(fmt::format("etcd {} {}: the server ended the stream", where, method));
    case Outcome::kNotSent:
    case Outcome::kBroken:
      rotate(endpoint);
      return unavailable(fmt::format("etcd {} {}: {}", where, method, ex.error));
  }
  return internal_error("etcd stream: unknown outcome");
}

}  // namespace kiln::store::etcd
