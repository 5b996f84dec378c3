#include "kiln/serve/step_weights.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/verify.h"

namespace kiln::serve {
namespace {

using nlohmann::json;

struct FileStat {
  std::uint64_t bytes = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  std::uint64_t ino = 0;
  bool operator==(const FileStat&) const = default;
};

Result<FileStat> stat_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_status("stat cached weights " + path, errno);
  return FileStat{
      static_cast<std::uint64_t>(st.st_size), st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec,
      st.st_ctim.tv_sec * 1000000000ll + st.st_ctim.tv_nsec, static_cast<std::uint64_t>(st.st_ino)};
}

// A read-only mapping of a whole file, unmapped by its owner.
struct Mapped {
  void* addr = nullptr;
  std::size_t bytes = 0;
};

Result<Mapped> map_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_status("open cached weights " + path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_status("stat cached weights " + path, errno);
  Mapped m;
  m.bytes = static_cast<std::size_t>(st.st_size);
  if (m.bytes == 0) return m;
  // MAP_POPULATE: the pages are in the page cache (the download wrote them,
  // or another replica read them); one pass maps them all instead of a
  // fault per page as the copy walks them.
  m.addr = ::mmap(nullptr, m.bytes, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd.get(), 0);
  if (m.addr == MAP_FAILED) return errno_status("map cached weights " + path, errno);
  return m;
}

// xxh3 of a whole file's content.
Result<std::uint64_t> hash_file(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(Mapped m, map_file(path));
  const std::uint64_t h = ckpt::checksum(m.addr, m.bytes);
  if (m.addr != nullptr) ::munmap(m.addr, m.bytes);
  return h;
}

std::vector<std::string> step_files(const ckpt::Manifest& m) {
  std::vector<std::string> files = {ckpt::kManifestName};
  for (const auto& s : m.shards) files.push_back(s.file);
  return files;
}

struct Stamped {
  std::string file;
  FileStat stat;
  std::uint64_t xxh3 = 0;
};

Status write_stamp(const std::string& step_dir, const std::vector<Stamped>& files) {
  json j = {{"version", 1}, {"files", json::array()}};
  for (const auto& f : files) {
    j["files"].push_back({{"file", f.file},
                          {"bytes", f.stat.bytes},
                          {"mtime_ns", f.stat.mtime_ns},
                          {"ctime_ns", f.stat.ctime_ns},
                          {"ino", f.stat.ino},
                          {"xxh3", ckpt::checksum_hex(f.xxh3)}});
  }
  const std::string path = step_dir + "/" + kVerifiedStampName;
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("create " + tmp, errno);
  KILN_RETURN_IF_ERROR(write_all(fd.get(), j.dump(), tmp));
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return errno_status("rename " + tmp + " to " + path, err);
  }
  return Status::ok();
}

// Stamps `files` with their stat and content hash as they are now.
Status stamp_files(const std::string& step_dir, const std::vector<std::string>& files) {
  std::vector<Stamped> stamped;
  for (const auto& f : files) {
    const std::string path = step_dir + "/" + f;
    KILN_ASSIGN_OR_RETURN(FileStat st, stat_file(path));
    KILN_ASSIGN_OR_RETURN(std::uint64_t h, hash_file(path));
    stamped.push_back({f, st, h});
  }
  return write_stamp(step_dir, stamped);
}

// The stamp's records; nullopt if there is none or it does not parse (then
// the step is verified in full and stamped again).
std::optional<std::vector<Stamped>> read_stamp(const std::string& step_dir) {
  auto text = read_file(step_dir + "/" + kVerifiedStampName);
  if (!text.is_ok()) return std::nullopt;
  auto j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("files") || !j["files"].is_array()) return std::nullopt;
  std::vector<Stamped> out;
  try {
    for (const auto& f : j["files"]) {
      Stamped s;
      s.file = f.at("file").get<std::string>();
      s.stat = {f.at("bytes").get<std::uint64_t>(), f.at("mtime_ns").get<std::int64_t>(),
                f.at("ctime_ns").get<std::int64_t>(), f.at("ino").get<std::uint64_t>()};
      s.xxh3 = std::stoull(f.at("xxh3").get<std::string>(), nullptr, 16);
      out.push_back(std::move(s));
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (out.empty()) return std::nullopt;
  return out;
}

}  // namespace

Status write_verified_stamp(const std::string& step_dir) {
  KILN_ASSIGN_OR_RETURN(ckpt::Manifest m, ckpt::read_manifest(step_dir));
  return stamp_files(step_dir, step_files(m));
}

Result<StampCheck> check_verified_stamp(const std::string& step_dir) {
  auto stamp = read_stamp(step_dir);
  if (!stamp) {
    KILN_RETURN_IF_ERROR(ckpt::verify_step_status(step_dir));
    KILN_RETURN_IF_ERROR(write_verified_stamp(step_dir));
    return StampCheck::kVerified;
  }
  bool rehashed = false;
  for (auto& f : *stamp) {
    const std::string path = step_dir + "/" + f.file;
    auto st = stat_file(path);
    if (!st.is_ok()) {
      return data_loss(fmt::format("cached weights {}: {}", path, st.status().message()));
    }
    if (*st == f.stat) continue;
    KILN_ASSIGN_OR_RETURN(std::uint64_t h, hash_file(path));
    if (h != f.xxh3) {
      return data_loss(fmt::format(
          "cached weights {} changed since they were verified at fetch: xxh3 {} ({} bytes), "
          "stamped {} ({} bytes)",
          path, ckpt::checksum_hex(h), st->bytes, ckpt::checksum_hex(f.xxh3), f.stat.bytes));
    }
    f.stat = *st;  // touched, not changed
    rehashed = true;
  }
  if (rehashed) {
    Status s = write_stamp(step_dir, *stamp);
    if (!s.is_ok()) log()->warn("weight cache: re-stamping {}: {}", step_dir, s.to_string());
    return StampCheck::kRehashed;
  }
  return StampCheck::kMatched;
}

StepWeights::StepWeights(StepWeights&& o) noexcept { *this = std::move(o); }

StepWeights& StepWeights::operator=(StepWeights&& o) noexcept {
  if (this != &o) {
    unmap_all();
    step_ = o.step_;
    dir_ = std::move(o.dir_);
    tensors_ = std::move(o.tensors_);
    maps_ = std::exchange(o.maps_, {});
    loaded_ = std::move(o.loaded_);
  }
  return *this;
}

StepWeights::~StepWeights() { unmap_all(); }

void StepWeights::unmap_all() {
  for (const auto& m : maps_) {
    if (m.addr != nullptr) ::munmap(m.addr, m.bytes);
  }
  maps_.clear();
}

const WeightTensor* StepWeights::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

StepShapes StepWeights::shapes() const {
  StepShapes out;
  out.where = dir_;
  for (const auto& [name, t] : tensors_) out.tensors[name] = t.spec.shape;
  out.bytes = bytes();
  return out;
}

Result<StepShapes> StepShapes::from_manifest(const std::string& text, const std::string& where,
                                             const ckpt::EntryFilter& keep) {
  KILN_ASSIGN_OR_RETURN(ckpt::Manifest m, ckpt::parse_manifest(text, where));
  StepShapes out;
  out.where = where;
  for (const auto& shard : m.shards) {
    for (const auto& e : shard.entries) {
      if (!e.is_tensor || (keep && !keep(e.name)) || e.spec.shape.empty()) continue;
      // A tensor saved in row ranges by several ranks is listed by each.
      if (out.tensors.emplace(e.name, e.spec.shape).second) {
        out.bytes += static_cast<std::size_t>(e.spec.shape.front()) * e.spec.row_bytes();
      }
    }
  }
  return out;
}

bool is_weight_entry(std::string_view name) {
  return name.starts_with("param/") || name.starts_with("buffer/");
}

std::size_t StepWeights::bytes() const {
  std::size_t n = 0;
  for (const auto& [name, t] : tensors_) n += t.data.size();
  return n;
}

StepWeights StepWeights::from_loaded(ckpt::LoadedState state) {
  StepWeights w;
  w.loaded_ = std::make_unique<ckpt::LoadedState>(std::move(state));
  w.step_ = w.loaded_->step;
  w.dir_ = w.loaded_->dir;
  for (const auto& e : w.loaded_->entries) {
    if (e.is_tensor) w.tensors_[e.name] = {e.spec, {e.data.data(), e.data.size()}};
  }
  return w;
}

Result<StepWeights> StepWeights::open(const std::string& step_dir, const ckpt::EntryFilter& keep) {
  KILN_ASSIGN_OR_RETURN(ckpt::Manifest m, ckpt::read_manifest(step_dir));
  // Every kept tensor must be whole in one shard and stored raw to be viewed.
  std::map<std::string, std::pair<const ckpt::ShardRecord*, const ckpt::EntryRecord*>> whole;
  bool viewable = true;
  for (const auto& shard : m.shards) {
    for (const auto& e : shard.entries) {
      if (!e.is_tensor || (keep && !keep(e.name))) continue;
      if (whole.count(e.name) != 0) continue;  // a replicated tensor: one copy is enough
      const bool raw = e.compression == ckpt::Compression::kNone && e.stored_bytes == e.raw_bytes &&
                       e.raw_bytes == static_cast<std::uint64_t>(e.spec.rows) * e.spec.row_bytes();
      if (!raw || e.spec.row_offset != 0 || e.spec.rows != e.spec.shape.front()) {
        viewable = false;
        break;
      }
      whole[e.name] = {&shard, &e};
    }
  }
  if (!viewable) {
    KILN_ASSIGN_OR_RETURN(ckpt::LoadedState state, ckpt::load_step(step_dir, 0, 1, keep));
    return from_loaded(std::move(state));
  }
  StepWeights w;
  w.step_ = m.step;
  w.dir_ = step_dir;
  std::map<const ckpt::ShardRecord*, std::size_t> map_of;
  for (const auto& [name, where] : whole) {
    const auto& [shard, rec] = where;
    auto [it, added] = map_of.try_emplace(shard, w.maps_.size());
    if (added) {
      KILN_ASSIGN_OR_RETURN(Mapped mapped, map_file(step_dir + "/" + shard->file));
      w.maps_.push_back({mapped.addr, mapped.bytes});
    }
    const Mapping& map = w.maps_[it->second];
    if (rec->offset + rec->stored_bytes > map.bytes) {
      return data_loss(
          fmt::format("cached weights {}/{}: entry '{}' ends at byte {}, the file at {}", step_dir,
                      shard->file, name, rec->offset + rec->stored_bytes, map.bytes));
    }
    w.tensors_[name] = {rec->spec,
                        {static_cast<const std::byte*>(map.addr) + rec->offset,
                         static_cast<std::size_t>(rec->stored_bytes)}};
  }
  return w;
}

}  // namespace kiln::serve
