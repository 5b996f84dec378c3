#include "kiln/store/etcd/json_codec.h"

#include <fmt/format.h>

#include <charconv>

#include "kiln/store/etcd/base64.h"

namespace kiln::store::etcd {

Result<std::int64_t> json_int64(const Json& obj, std::string_view field, std::string_view what) {
  auto bad = [&] {
    return data_loss(
        fmt::format("{}: field '{}' is not an int64 in {:.200}", what, field, obj.dump()));
  };
  if (!obj.is_object()) return bad();
  auto it = obj.find(field);
  if (it == obj.end()) return std::int64_t{0};
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (!it->is_string()) return bad();
  const auto& s = it->get_ref<const std::string&>();
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return bad();
  return v;
}

Result<std::string> json_bytes(const Json& obj, std::string_view field, std::string_view what) {
  if (!obj.is_object()) {
    return data_loss(fmt::format("{}: expected an object, got {:.200}", what, obj.dump()));
  }
  auto it = obj.find(field);
  if (it == obj.end()) return std::string();
  if (!it->is_string()) {
    return data_loss(
        fmt::format("{}: field '{}' is not a string in {:.200}", what, field, obj.dump()));
  }
  return base64_decode(it->get_ref<const std::string&>(),
                       fmt::format("{}: field '{}'", what, field));
}

bool json_flag(const Json& obj, std::string_view field) {
  if (!obj.is_object()) return false;
  auto it = obj.find(field);
  return it != obj.end() && it->is_boolean() && it->get<bool>();
}

std::string json_string(const Json& obj, std::string_view field, std::string_view fallback) {
  if (obj.is_object()) {
    auto it = obj.find(field);
    if (it != obj.end() && it->is_string()) return it->get<std::string>();
  }
  return std::string(fallback);
}

Result<KeyValue> parse_kv(const Json& kv, std::string_view what) {
  KeyValue out;
  KILN_ASSIGN_OR_RETURN(out.key, json_bytes(kv, "key", what));
  KILN_ASSIGN_OR_RETURN(out.value, json_bytes(kv, "value", what));
  KILN_ASSIGN_OR_RETURN(out.mod_revision, json_int64(kv, "mod_revision", what));
  KILN_ASSIGN_OR_RETURN(out.lease, json_int64(kv, "lease", what));
  if (out.key.empty() || out.mod_revision <= 0) {
    return data_loss(
        fmt::format("{}: key-value without key or revision: {:.200}", what, kv.dump()));
  }
  return out;
}

Result<std::vector<KeyValue>> parse_kvs(const Json& range_response, std::string_view what) {
  std::vector<KeyValue> out;
  if (!range_response.is_object()) {
    return data_loss(
        fmt::format("{}: range reply is not an object: {:.200}", what, range_response.dump()));
  }
  auto it = range_response.find("kvs");
  if (it == range_response.end()) return out;
  if (!it->is_array()) {
    return data_loss(fmt::format("{}: 'kvs' is not a list: {:.200}", what, it->dump()));
  }
  for (const Json& kv : *it) {
    KILN_ASSIGN_OR_RETURN(KeyValue parsed, parse_kv(kv, what));
    out.push_back(std::move(parsed));
  }
  return out;
}

Result<std::int64_t> header_revision(const Json& reply, std::string_view what) {
  auto header = reply.is_object() ? reply.find("header") : reply.end();
  if (!reply.is_object() || header == reply.end()) {
    return data_loss(fmt::format("{}: reply without header: {:.200}", what, reply.dump()));
  }
  KILN_ASSIGN_OR_RETURN(std::int64_t rev, json_int64(*header, "revision", what));
  if (rev <= 0) {
    return data_loss(
        fmt::format("{}: reply header without revision: {:.200}", what, header->dump()));
  }
  return rev;
}

}  // namespace kiln::store::etcd
