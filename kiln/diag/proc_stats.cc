#include "kiln/diag/proc_stats.h"

#include <charconv>
#include <fstream>
#include <sstream>

namespace kiln::diag::proc {
namespace {

// Whitespace-separated fields of one line.
std::vector<std::string_view> fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

std::optional<std::uint64_t> to_u64(std::string_view s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

template <typename F>
void for_each_line(std::string_view text, F&& f) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    f(text.substr(start, end - start));
    start = end + 1;
  }
}

// "Key:   123 kB" lines (meminfo, io).
std::optional<std::uint64_t> keyed(std::string_view text, std::string_view key) {
  std::optional<std::uint64_t> out;
  for_each_line(text, [&](std::string_view line) {
    if (out || line.size() <= key.size() || line.substr(0, key.size()) != key ||
        line[key.size()] != ':') {
      return;
    }
    auto f = fields(line.substr(key.size() + 1));
    if (!f.empty()) out = to_u64(f[0]);
  });
  return out;
}

}  // namespace

std::optional<std::uint64_t> cpu_ticks_from_stat(std::string_view text) {
  size_t close = text.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  // After ")": state(3) ppid(4) ... utime(14) stime(15): indices 11 and 12.
  auto f = fields(text.substr(close + 1));
  if (f.size() < 13) return std::nullopt;
  auto ut = to_u64(f[11]), st = to_u64(f[12]);
  if (!ut || !st) return std::nullopt;
  return *ut + *st;
}

std::optional<std::uint64_t> resident_pages_from_statm(std::string_view text) {
  auto f = fields(text.substr(0, text.find('\n')));
  if (f.size() < 2) return std::nullopt;
  return to_u64(f[1]);
}

std::optional<MemInfo> meminfo(std::string_view text) {
  auto total = keyed(text, "MemTotal"), avail = keyed(text, "MemAvailable");
  if (!total || !avail) return std::nullopt;
  return MemInfo{*total * 1024, *avail * 1024};
}

std::optional<IoBytes> io_bytes(std::string_view text) {
  auto r = keyed(text, "read_bytes"), w = keyed(text, "write_bytes");
  if (!r || !w) return std::nullopt;
  return IoBytes{*r, *w};
}

std::map<std::string, std::uint64_t> disk_io_ticks(std::string_view text) {
  std::map<std::string, std::uint64_t> out;
  for_each_line(text, [&](std::string_view line) {
    // major minor name reads rmerged rsectors rms writes wmerged wsectors wms inflight io_ticks
    auto f = fields(line);
    if (f.size() < 13) return;
    if (auto v = to_u64(f[12])) out[std::string(f[2])] = *v;
  });
  return out;
}

std::map<std::string, NetBytes> net_dev(std::string_view text) {
  std::map<std::string, NetBytes> out;
  for_each_line(text, [&](std::string_view line) {
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;  // the two header lines
    auto name = fields(line.substr(0, colon));
    auto f = fields(line.substr(colon + 1));
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes ...
    if (name.size() != 1 || f.size() < 9) return;
    auto rx = to_u64(f[0]), tx = to_u64(f[8]);
    if (rx && tx) out[std::string(name[0])] = NetBytes{*rx, *tx};
  });
  return out;
}

std::optional<CpuTimes> host_cpu(std::string_view text) {
  auto f = fields(text.substr(0, text.find('\n')));
  if (f.size() < 6 || f[0] != "cpu") return std::nullopt;
  CpuTimes t;
  // user nice system idle iowait irq softirq steal (guest time is inside user)
  for (size_t i = 1; i < f.size() && i <= 8; ++i) {
    auto v = to_u64(f[i]);
    if (!v) return std::nullopt;
    t.total += *v;
    if (i == 4 || i == 5) t.idle += *v;
  }
  return t;
}

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return ss.str();
}

}  // namespace kiln::diag::proc
