#include "kiln/base/cgroup_memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <vector>

#include "kiln/base/file.h"

namespace kiln {
namespace {

std::vector<std::string_view> split(std::string_view s, char by) {
  std::vector<std::string_view> parts;
  for (;;) {
    const auto at = s.find(by);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return parts;
    s.remove_prefix(at + 1);
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

bool has_item(std::string_view comma_list, std::string_view item) {
  for (std::string_view x : split(comma_list, ',')) {
    if (x == item) return true;
  }
  return false;
}

// v1 reports "no limit" as the largest page-aligned value of a signed
// 64-bit counter (9223372036854771712 on 4 KiB pages); anything at or above
// 2^62 is no limit a machine could have.
constexpr std::uint64_t kUnlimitedV1 = std::uint64_t{1} << 62;

Result<std::uint64_t> read_number(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string text, read_file(path));
  const std::string_view v = trim(text);
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) {
    return invalid_argument(fmt::format("{}: expected a byte count, got \"{}\"", path, v));
  }
  return n;
}

}  // namespace

std::optional<CgroupPlace> memory_cgroup_of(std::string_view proc_self_cgroup) {
  std::optional<CgroupPlace> unified;
  for (std::string_view line : split(proc_self_cgroup, '\n')) {
    // hierarchy-ID:controller-list:path (the path may itself hold ':').
    const auto first = line.find(':');
    if (first == std::string_view::npos) continue;
    const auto second = line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    const std::string_view id = line.substr(0, first);
    const std::string_view controllers = line.substr(first + 1, second - first - 1);
    const std::string path(line.substr(second + 1));
    if (has_item(controllers, "memory")) return CgroupPlace{1, path};
    if (id == "0" && controllers.empty()) unified = CgroupPlace{2, path};
  }
  return unified;
}

std::optional<CgroupDir> cgroup_dir(std::string_view mountinfo, const CgroupPlace& place) {
  for (std::string_view line : split(mountinfo, '\n')) {
    // ID parent major:minor root mount-point options [optional...] - fstype source super-options
    const auto dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    const std::vector<std::string_view> head = split(line.substr(0, dash), ' ');
    const std::vector<std::string_view> tail = split(line.substr(dash + 3), ' ');
    if (head.size() < 5 || tail.size() < 3) continue;
    const std::string_view fstype = tail[0];
    const bool matches = place.version == 1 ? fstype == "cgroup" && has_item(tail[2], "memory")
                                            : fstype == "cgroup2";
    if (!matches) continue;
    const std::string_view root = head[3], mount_point = head[4];
    std::string_view rest = place.path;
    if (root != "/") {
      // A mount of a sub-tree holds only paths below its root.
      if (rest.substr(0, root.size()) != root) continue;
      if (rest.size() > root.size() && rest[root.size()] != '/') continue;
      rest.remove_prefix(root.size());
    }
    if (rest == "/") rest = {};
    return CgroupDir{std::string(mount_point), fmt::format("{}{}", mount_point, rest)};
  }
  return std::nullopt;
}

Result<CgroupMemory> read_cgroup_memory(int version, const std::string& dir) {
  CgroupMemory m;
  m.version = version;
  m.dir = dir;
  if (version == 1) {
    KILN_ASSIGN_OR_RETURN(std::uint64_t limit, read_number(dir + "/memory.limit_in_bytes"));
    if (limit < kUnlimitedV1) m.limit_bytes = limit;
    KILN_ASSIGN_OR_RETURN(m.usage_bytes, read_number(dir + "/memory.usage_in_bytes"));
    KILN_ASSIGN_OR_RETURN(std::uint64_t peak, read_number(dir + "/memory.max_usage_in_bytes"));
    m.peak_bytes = peak;
    return m;
  }
  KILN_ASSIGN_OR_RETURN(std::string max, read_file(dir + "/memory.max"));
  if (trim(max) != "max") {
    KILN_ASSIGN_OR_RETURN(std::uint64_t limit, read_number(dir + "/memory.max"));
    m.limit_bytes = limit;
  }
  KILN_ASSIGN_OR_RETURN(m.usage_bytes, read_number(dir + "/memory.current"));
  if (auto peak = read_number(dir + "/memory.peak"); peak.is_ok()) m.peak_bytes = *peak;
  return m;
}

Result<std::optional<CgroupMemory>> own_cgroup_memory() {
  KILN_ASSIGN_OR_RETURN(std::string cgroups, read_file("/proc/self/cgroup"));
  const std::optional<CgroupPlace> place = memory_cgroup_of(cgroups);
  if (!place) return std::optional<CgroupMemory>();
  KILN_ASSIGN_OR_RETURN(std::string mountinfo, read_file("/proc/self/mountinfo"));
  const std::optional<CgroupDir> own = cgroup_dir(mountinfo, *place);
  if (!own) return std::optional<CgroupMemory>();
  // A limit anywhere above binds too (a container's memory.max over the
  // step's own unlimited cgroup): the level with the least headroom is the
  // one that counts.
  std::optional<CgroupMemory> binding;
  for (std::string dir = own->dir;; dir.resize(dir.rfind('/'))) {
    Result<CgroupMemory> level = read_cgroup_memory(place->version, dir);
    if (level.is_ok()) {
      auto headroom = [](const CgroupMemory& m) {
        return m.limit_bytes ? *m.limit_bytes - std::min(*m.limit_bytes, m.usage_bytes) : UINT64_MAX;
      };
      if (!binding || headroom(*level) < headroom(*binding)) binding = std::move(*level);
    } else if (level.status().code() != Code::kNotFound) {
      return level.status();  // a file that is there but unreadable or malformed
    }
    // (NotFound: a level without the controller's files, such as v2's root.)
    if (dir.size() <= own->mount_point.size()) break;
  }
  return binding;
}

}  // namespace kiln
