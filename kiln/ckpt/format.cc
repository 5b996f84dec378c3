#include "kiln/ckpt/format.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "kiln/base/xxh3.h"

namespace kiln::ckpt {
namespace {

// More dimensions than any real tensor has; bounds a hostile manifest's.
constexpr std::size_t kMaxTensorDims = 64;

using nlohmann::json;

// A count, offset or size: an integer in the JSON. nlohmann's get<integer>()
// of a floating-point value converts it, and one out of range (1e300) is
// undefined behaviour: refuse it (found by fuzz_ckpt_manifest).
template <typename T>
T integer_at(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) {
    throw json::type_error::create(302, std::string("'") + key + "' is not an integer", &v);
  }
  return v.get<T>();
}

json entry_json(const EntryRecord& e) {
  json j{{"name", e.name},
         {"kind", e.is_tensor ? "tensor" : "blob"},
         {"offset", e.offset},
         {"stored_bytes", e.stored_bytes},
         {"raw_bytes", e.raw_bytes},
         {"compression", e.compression == Compression::kZstd ? "zstd" : "none"},
         {"xxh3", checksum_hex(e.xxh3)}};
  if (e.is_tensor) {
    j["dtype"] = std::string(comm::dtype_name(e.spec.dtype));
    j["shape"] = e.spec.shape;
    j["row_offset"] = e.spec.row_offset;
    j["rows"] = e.spec.rows;
  }
  return j;
}

json shard_json(const ShardRecord& s) {
  json entries = json::array();
  for (const auto& e : s.entries) entries.push_back(entry_json(e));
  json j{{"rank", s.rank}, {"file", s.file}, {"bytes", s.bytes}, {"entries", entries}};
  if (!s.chunks.empty()) {
    json chunks = json::array();
    for (const auto& c : s.chunks) {
      chunks.push_back({{"file", c.file}, {"bytes", c.bytes}, {"xxh3", checksum_hex(c.xxh3)}});
    }
    j["chunks"] = std::move(chunks);
  }
  return j;
}

Result<std::uint64_t> parse_hex(const std::string& s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return data_loss(fmt::format("bad checksum '{}'", s));
  }
  return v;
}

Result<EntryRecord> parse_entry(const json& j) {
  EntryRecord e;
  e.name = j.at("name").get<std::string>();
  std::string kind = j.at("kind").get<std::string>();
  if (kind != "tensor" && kind != "blob")
    return data_loss(fmt::format("entry '{}': kind '{}'", e.name, kind));
  e.is_tensor = kind == "tensor";
  e.offset = integer_at<std::uint64_t>(j, "offset");
  e.stored_bytes = integer_at<std::uint64_t>(j, "stored_bytes");
  e.raw_bytes = integer_at<std::uint64_t>(j, "raw_bytes");
  std::string comp = j.at("compression").get<std::string>();
  if (comp == "zstd") {
    e.compression = Compression::kZstd;
  } else if (comp != "none") {
    return data_loss(fmt::format("entry '{}': unknown compression '{}'", e.name, comp));
  }
  KILN_ASSIGN_OR_RETURN(e.xxh3, parse_hex(j.at("xxh3").get<std::string>()));
  if (e.is_tensor) {
    auto dt = comm::parse_dtype(j.at("dtype").get<std::string>());
    if (!dt) return data_loss(fmt::format("entry '{}': {}", e.name, dt.status().message()));
    e.spec.dtype = *dt;
    if (!j.at("shape").is_array()) {
      throw json::type_error::create(302, "'shape' is not an array", &j.at("shape"));
    }
    for (const json& d : j.at("shape")) {
      if (!d.is_number_integer()) {
        throw json::type_error::create(302, "'shape' holds a non-integer", &d);
      }
      e.spec.shape.push_back(d.get<std::int64_t>());
    }
    e.spec.row_offset = integer_at<std::int64_t>(j, "row_offset");
    e.spec.rows = integer_at<std::int64_t>(j, "rows");
    // Every size here comes from a file: checked without overflow before
    // anything multiplies or allocates with it.
    bool consistent = !e.spec.shape.empty() && e.spec.shape.size() <= kMaxTensorDims &&
                      e.spec.row_offset >= 0 && e.spec.rows >= 0 &&
                      std::all_of(e.spec.shape.begin(), e.spec.shape.end(),
                                  [](std::int64_t d) { return d >= 0; }) &&
                      e.spec.row_offset <= e.spec.shape[0] &&
                      e.spec.rows <= e.spec.shape[0] - e.spec.row_offset;
    std::uint64_t bytes = comm::dtype_size(e.spec.dtype);
    for (std::size_t i = 1; consistent && i < e.spec.shape.size(); ++i) {
      consistent = !__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(e.spec.shape[i]),
                                           &bytes);
    }
    consistent = consistent &&
                 !__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(e.spec.rows), &bytes) &&
                 e.raw_bytes == bytes;
    if (!consistent) {
      return data_loss(fmt::format("entry '{}': inconsistent shape/rows/bytes", e.name));
    }
  }
  return e;
}

Result<ShardRecord> parse_shard_json(const json& j) {
  ShardRecord s;
  s.rank = integer_at<int>(j, "rank");
  s.file = j.at("file").get<std::string>();
  s.bytes = integer_at<std::uint64_t>(j, "bytes");
  if (s.file.empty() || s.file.find('/') != std::string::npos) {
    return data_loss(fmt::format("shard of rank {}: bad file name '{}'", s.rank, s.file));
  }
  for (const auto& je : j.at("entries")) {
    KILN_ASSIGN_OR_RETURN(auto e, parse_entry(je));
    if (e.offset > s.bytes || e.stored_bytes > s.bytes - e.offset) {
      return data_loss(fmt::format(
          "shard of rank {}: entry '{}' ({} bytes at offset {}) ends past the file ({} bytes)",
          s.rank, e.name, e.stored_bytes, e.offset, s.bytes));
    }
    s.entries.push_back(std::move(e));
  }
  if (j.contains("chunks")) {
    const json& chunks = j.at("chunks");
    if (!chunks.is_array() || chunks.empty()) {
      return data_loss(fmt::format("shard of rank {}: 'chunks' is not a list of chunks", s.rank));
    }
    std::uint64_t total = 0;
    for (const json& jc : chunks) {
      ChunkRecord c;
      c.file = jc.at("file").get<std::string>();
      c.bytes = integer_at<std::uint64_t>(jc, "bytes");
      KILN_ASSIGN_OR_RETURN(c.xxh3, parse_hex(jc.at("xxh3").get<std::string>()));
      if (c.file.empty() || c.file.find('/') != std::string::npos) {
        return data_loss(fmt::format("shard of rank {}: bad chunk name '{}'", s.rank, c.file));
      }
      if (__builtin_add_overflow(total, c.bytes, &total)) total = ~std::uint64_t{0};
      s.chunks.push_back(std::move(c));
    }
    if (total != s.bytes) {
      return data_loss(fmt::format("shard of rank {}: its chunks hold {} bytes, the shard {}",
                                   s.rank, total, s.bytes));
    }
  }
  return s;
}

// Runs `parse` on `text`, turning JSON errors into DataLoss naming `where`.
template <typename F>
auto parse_json(const std::string& text, const std::string& where, F parse)
    -> decltype(parse(json())) {
  if (text.size() > kMaxManifestBytes) {
    return data_loss(fmt::format("{}: {} bytes is over the {}-byte limit of a manifest", where,
                                 text.size(), kMaxManifestBytes));
  }
  try {
    auto r = parse(json::parse(text));
    if (!r.is_ok()) return r.status().with_context(where);
    return r;
  } catch (const json::exception& e) {
    return data_loss(fmt::format("{}: malformed: {}", where, e.what()));
  }
}

std::optional<std::int64_t> parse_step(const std::string& name, const std::string& suffix) {
  const std::string prefix = "step-";
  if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0)
    return std::nullopt;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return std::nullopt;
  const char* b = name.data() + prefix.size();
  const char* e = name.data() + name.size() - suffix.size();
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || v < 0) return std::nullopt;
  return v;
}

}  // namespace

std::string to_json(const ShardRecord& shard) { return shard_json(shard).dump(); }

std::string to_json(const Manifest& m) {
  json shards = json::array();
  for (const auto& s : m.shards) shards.push_back(shard_json(s));
  json j{{"format", "kiln-checkpoint"}, {"version", m.version}, {"step", m.step},
         {"world_size", m.world_size},  {"time", m.time},       {"shards", shards}};
  return j.dump(1) + "\n";
}

Result<ShardRecord> parse_shard_record(const std::string& text, const std::string& where) {
  return parse_json(text, where, [](const json& j) { return parse_shard_json(j); });
}

Result<Manifest> parse_manifest(const std::string& text, const std::string& where) {
  return parse_json(text, where, [](const json& j) -> Result<Manifest> {
    Manifest m;
    if (j.at("format").get<std::string>() != "kiln-checkpoint")
      return data_loss("not a kiln checkpoint manifest");
    m.version = integer_at<int>(j, "version");
    if (m.version != kFormatVersion && m.version != kChunkedFormatVersion) {
      return failed_precondition(fmt::format("format version {} (this build reads {} and {})",
                                             m.version, kFormatVersion, kChunkedFormatVersion));
    }
    m.step = integer_at<std::int64_t>(j, "step");
    m.world_size = integer_at<int>(j, "world_size");
    m.time = j.at("time").get<std::string>();
    for (const auto& js : j.at("shards")) {
      KILN_ASSIGN_OR_RETURN(auto s, parse_shard_json(js));
      m.shards.push_back(std::move(s));
    }
    if (m.world_size <= 0 || static_cast<int>(m.shards.size()) != m.world_size) {
      return data_loss(fmt::format("world_size {} but {} shards", m.world_size, m.shards.size()));
    }
    for (int r = 0; r < m.world_size; ++r) {
      if (m.shards[r].rank != r)
        return data_loss(fmt::format("shard {} claims rank {}", r, m.shards[r].rank));
    }
    return m;
  });
}

std::string step_dir_name(std::int64_t step) { return fmt::format("step-{}", step); }
std::string tmp_step_dir_name(std::int64_t step) { return fmt::format("step-{}.tmp", step); }
std::string shard_file_name(int rank) { return fmt::format("shard-{:05d}.bin", rank); }
std::string shard_chunk_name(int rank, std::uint64_t attempt, std::size_t index) {
  return fmt::format("shard-{:05d}.{:016x}.chunk-{:05d}", rank, attempt, index);
}

std::uint64_t new_upload_attempt() {
  // Two ranks or two attempts that drew the same tag would share keys, so
  // the tag comes from the OS's entropy, not from a clock or a pid.
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

Result<ObjectLayout> parse_object_layout(const std::string& name) {
  if (name == "chunks") return ObjectLayout::kChunks;
  if (name == "multipart") return ObjectLayout::kMultipart;
  return invalid_argument(
      fmt::format("object layout '{}': expected \"chunks\" or \"multipart\"", name));
}

const char* object_layout_name(ObjectLayout layout) {
  return layout == ObjectLayout::kChunks ? "chunks" : "multipart";
}

std::optional<std::int64_t> parse_step_dir_name(const std::string& name) {
  return parse_step(name, "");
}
std::optional<std::int64_t> parse_tmp_step_dir_name(const std::string& name) {
  return parse_step(name, ".tmp");
}

std::uint64_t checksum(const void* data, std::size_t n) { return xxh3(data, n); }
std::string checksum_hex(std::uint64_t c) { return fmt::format("{:016x}", c); }

std::string utc_now_iso8601() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace kiln::ckpt
