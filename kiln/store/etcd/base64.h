// Base64 (RFC 4648, standard alphabet, padded): the etcd JSON gateway carries
// every key and value as base64 text, since proto3's JSON form of `bytes` is
// base64.
#pragma once

#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::store::etcd {

std::string base64_encode(std::string_view bytes);

// DataLoss naming `what` if `text` is not padded standard base64.
Result<std::string> base64_decode(std::string_view text, std::string_view what);

}  // namespace kiln::store::etcd
