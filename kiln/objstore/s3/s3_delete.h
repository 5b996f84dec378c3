// DeleteObjects (S3ObjectStore::remove_many, in s3_delete.cc): the pieces of
// the request that are checked on their own.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kiln::objstore::s3 {

// The base64 of `body`'s MD5, the value of the Content-MD5 header that
// DeleteObjects requires. Nothing where this OpenSSL offers no MD5 (a FIPS
// build).
std::optional<std::string> content_md5(std::string_view body);

}  // namespace kiln::objstore::s3
