// open_object_store: the one place a dataset URL becomes a store.
#include "kiln/data/object_store.h"

#include <fmt/format.h>

#include <filesystem>

#include "kiln/data/file_object_store.h"
#include "kiln/data/s3/s3_object_store.h"

namespace kiln::data {

Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url) {
  std::string path;
  if (url.rfind("file://", 0) == 0) {
    path = url.substr(7);
  } else if (url.rfind("s3://", 0) == 0) {
    KILN_ASSIGN_OR_RETURN(auto s3, s3::S3ObjectStore::open(url));
    return std::unique_ptr<ObjectStore>(std::move(s3));
  } else if (url.find("://") != std::string::npos) {
    return invalid_argument(fmt::format("object store '{}': unknown scheme (file://, s3://)", url));
  } else {
    path = url;
  }
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.empty()) return invalid_argument("object store '" + url + "': empty path");
  std::error_code ec;
  auto abs = std::filesystem::absolute(path, ec);
  if (ec) return invalid_argument("object store '" + url + "': " + ec.message());
  return make_file_object_store(abs.string());
}

}  // namespace kiln::data
