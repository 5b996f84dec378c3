#include "kiln/objstore/s3/s3_request_log.h"

#include <cstring>
#include <utility>

namespace kiln::objstore::s3 {

std::string_view request_kind_name(S3RequestKind kind) {
  switch (kind) {
    case S3RequestKind::kPut:
      return "put";
    case S3RequestKind::kPart:
      return "part";
    case S3RequestKind::kInitiate:
      return "initiate";
    case S3RequestKind::kComplete:
      return "complete";
    case S3RequestKind::kAbort:
      return "abort";
    case S3RequestKind::kGet:
      return "get";
    case S3RequestKind::kHead:
      return "head";
    case S3RequestKind::kDelete:
      return "delete";
    case S3RequestKind::kList:
      return "list";
    case S3RequestKind::kListUploads:
      return "list_uploads";
    case S3RequestKind::kDeleteMany:
      return "delete_many";
  }
  return "?";
}

S3RequestKind classify_request(const S3Request& request) {
  const std::string& url = request.url;
  auto q = url.find('?');
  const std::string query = q == std::string::npos ? "" : url.substr(q + 1);
  auto has = [&](const char* param) {
    // A parameter at the start of the query or after an '&'.
    for (auto at = query.find(param); at != std::string::npos; at = query.find(param, at + 1)) {
      if (at == 0 || query[at - 1] == '&') return true;
    }
    return false;
  };
  const char* m = request.method;
  if (std::strcmp(m, "PUT") == 0)
    return has("partNumber=") ? S3RequestKind::kPart : S3RequestKind::kPut;
  if (std::strcmp(m, "POST") == 0) {
    if (has("delete=")) return S3RequestKind::kDeleteMany;
    return has("uploadId=") ? S3RequestKind::kComplete : S3RequestKind::kInitiate;
  }
  if (std::strcmp(m, "DELETE") == 0) {
    return has("uploadId=") ? S3RequestKind::kAbort : S3RequestKind::kDelete;
  }
  if (std::strcmp(m, "HEAD") == 0) return S3RequestKind::kHead;
  if (has("uploads=")) return S3RequestKind::kListUploads;
  if (has("list-type=")) return S3RequestKind::kList;
  return S3RequestKind::kGet;
}

void S3RequestLog::add(const S3RequestRecord& r) {
  std::lock_guard<std::mutex> l(mu_);
  records_.push_back(r);
}

std::vector<S3RequestRecord> S3RequestLog::take() {
  std::lock_guard<std::mutex> l(mu_);
  return std::exchange(records_, {});
}

}  // namespace kiln::objstore::s3
