// The shapes of etcd's v3 JSON gateway (the proto3 JSON mapping of its gRPC
// API): bytes fields (keys, values) are base64, int64 fields (revisions,
// lease IDs, TTLs) are decimal strings, and fields at their default (0, "",
// false, empty list) are left out altogether.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::store::etcd {

using Json = nlohmann::json;

struct KeyValue {
  std::string key;  // decoded bytes, with the store's prefix
  std::string value;
  std::int64_t mod_revision = 0;
  std::int64_t lease = 0;
};

// An int64 field; absent = 0. DataLoss naming `what` if it is neither a
// decimal string nor a number.
Result<std::int64_t> json_int64(const Json& obj, std::string_view field, std::string_view what);

// A base64 bytes field; absent = "".
Result<std::string> json_bytes(const Json& obj, std::string_view field, std::string_view what);

// A bool field; false when absent or not a bool (etcd omits false).
bool json_flag(const Json& obj, std::string_view field);

// A string field; `fallback` when absent or not a string.
std::string json_string(const Json& obj, std::string_view field, std::string_view fallback);

// One "kv" object (mvccpb.KeyValue).
Result<KeyValue> parse_kv(const Json& kv, std::string_view what);

// The "kvs" of a RangeResponse; an absent list is empty.
Result<std::vector<KeyValue>> parse_kvs(const Json& range_response, std::string_view what);

// header.revision of any reply: the store revision the reply reflects.
Result<std::int64_t> header_revision(const Json& reply, std::string_view what);

}  // namespace kiln::store::etcd
