#include "kiln/data/index.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/base/check.h"
#include "kiln/data/checksum.h"

namespace kiln::data {

using nlohmann::json;

std::size_t DatasetIndex::shard_of(std::uint64_t sample) const {
  KILN_CHECK(sample < num_samples);
  auto it = std::upper_bound(shards.begin(), shards.end(), sample,
                             [](std::uint64_t s, const ShardInfo& sh) { return s < sh.first_sample; });
  return static_cast<std::size_t>(it - shards.begin()) - 1;
}

std::string index_to_json(const DatasetIndex& index) {
  json j;
  j["format"] = "kiln-dataset";
  j["version"] = index.version;
  j["schema"] = json::array();
  for (const auto& f : index.schema) {
    json fj{{"name", f.name}, {"kind", kind_name(f.kind)}};
    if (f.kind == FieldKind::kTensor) fj["dtype"] = dtype_name(f.dtype);
    j["schema"].push_back(fj);
  }
  j["num_samples"] = index.num_samples;
  j["shards"] = json::array();
  for (const auto& s : index.shards) {
    j["shards"].push_back({{"file", s.file},
                           {"first_sample", s.first_sample},
                           {"num_samples", s.num_samples},
                           {"bytes", s.bytes},
                           {"xxh3", checksum_hex(s.xxh3)}});
  }
  return j.dump(1) + "\n";
}

namespace {

class Fields {
 public:
  explicit Fields(std::string where) : where_(std::move(where)) {}
  Status bad(const std::string& field, const std::string& why) const {
    return invalid_argument(fmt::format("{}: field '{}' {}", where_, field, why));
  }
  Result<const json*> get(const json& obj, const std::string& path, const char* key,
                          json::value_t type) const {
    auto it = obj.find(key);
    if (it == obj.end()) return bad(path, "is missing");
    bool ok = it->type() == type ||
              (type == json::value_t::number_unsigned && it->is_number_unsigned());
    if (!ok) return bad(path, fmt::format("has type {}, expected {}", it->type_name(),
                                          json(type).type_name()));
    return &*it;
  }
  Result<std::uint64_t> u64(const json& obj, const std::string& path, const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) return bad(path, "is missing");
    if (!it->is_number_unsigned()) return bad(path, "must be a non-negative integer");
    return it->get<std::uint64_t>();
  }
  Result<std::string> str(const json& obj, const std::string& path, const char* key) const {
    KILN_ASSIGN_OR_RETURN(const json* v, get(obj, path, key, json::value_t::string));
    return v->get<std::string>();
  }

 private:
  std::string where_;
};

}  // namespace

Result<DatasetIndex> parse_index(const std::string& text, const std::string& where) {
  if (text.size() > kMaxIndexBytes) {
    return invalid_argument(fmt::format("{}: {} bytes is over the {}-byte limit of an index", where,
                                        text.size(), kMaxIndexBytes));
  }
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument(where + ": not valid JSON");
  if (!j.is_object()) return invalid_argument(where + ": top level is not an object");
  Fields f(where);
  DatasetIndex idx;
  KILN_ASSIGN_OR_RETURN(std::string format, f.str(j, "format", "format"));
  if (format != "kiln-dataset") return f.bad("format", "is '" + format + "', expected 'kiln-dataset'");
  KILN_ASSIGN_OR_RETURN(std::uint64_t version, f.u64(j, "version", "version"));
  if (version != kDatasetFormatVersion) {
    return failed_precondition(fmt::format("{}: field 'version' is {}, this build reads {}", where,
                                           version, kDatasetFormatVersion));
  }
  KILN_ASSIGN_OR_RETURN(const json* schema, f.get(j, "schema", "schema", json::value_t::array));
  for (std::size_t i = 0; i < schema->size(); ++i) {
    const json& fj = (*schema)[i];
    std::string p = fmt::format("schema[{}]", i);
    if (!fj.is_object()) return f.bad(p, "is not an object");
    FieldSpec spec;
    KILN_ASSIGN_OR_RETURN(spec.name, f.str(fj, p + ".name", "name"));
    KILN_ASSIGN_OR_RETURN(std::string kind, f.str(fj, p + ".kind", "kind"));
    auto k = parse_kind(kind);
    if (!k) return f.bad(p + ".kind", k.status().message());
    spec.kind = *k;
    if (spec.kind == FieldKind::kTensor) {
      KILN_ASSIGN_OR_RETURN(std::string dt, f.str(fj, p + ".dtype", "dtype"));
      auto d = parse_dtype(dt);
      if (!d) return f.bad(p + ".dtype", d.status().message());
      spec.dtype = *d;
    }
    idx.schema.push_back(spec);
  }
  KILN_ASSIGN_OR_RETURN(idx.num_samples, f.u64(j, "num_samples", "num_samples"));
  KILN_ASSIGN_OR_RETURN(const json* shards, f.get(j, "shards", "shards", json::value_t::array));
  std::uint64_t next = 0;
  for (std::size_t i = 0; i < shards->size(); ++i) {
    const json& sj = (*shards)[i];
    std::string p = fmt::format("shards[{}]", i);
    if (!sj.is_object()) return f.bad(p, "is not an object");
    ShardInfo s;
    KILN_ASSIGN_OR_RETURN(s.file, f.str(sj, p + ".file", "file"));
    if (s.file.empty() || s.file.find('/') != std::string::npos || s.file[0] == '.') {
      return f.bad(p + ".file", "must be a plain file name");
    }
    KILN_ASSIGN_OR_RETURN(s.first_sample, f.u64(sj, p + ".first_sample", "first_sample"));
    KILN_ASSIGN_OR_RETURN(s.num_samples, f.u64(sj, p + ".num_samples", "num_samples"));
    KILN_ASSIGN_OR_RETURN(s.bytes, f.u64(sj, p + ".bytes", "bytes"));
    KILN_ASSIGN_OR_RETURN(std::string hex, f.str(sj, p + ".xxh3", "xxh3"));
    auto h = parse_checksum_hex(hex);
    if (!h) return f.bad(p + ".xxh3", h.status().message());
    s.xxh3 = *h;
    if (s.first_sample != next) {
      return f.bad(p + ".first_sample", fmt::format("is {}, expected {} (shards must tile the "
                                                    "samples in order)", s.first_sample, next));
    }
    next += s.num_samples;
    idx.shards.push_back(s);
  }
  if (next != idx.num_samples) {
    return f.bad("num_samples", fmt::format("is {}, shards hold {}", idx.num_samples, next));
  }
  return idx;
}

}  // namespace kiln::data
