#include "kiln/diag/inject.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <thread>

namespace kiln::diag {
namespace {

struct KindName {
  InjectKind kind;
  std::string_view name;
  bool takes_ms;
};
constexpr KindName kKinds[] = {{InjectKind::kDataDelay, "data-delay", true},
                               {InjectKind::kCommDelay, "comm-delay", true},
                               {InjectKind::kComputeSpin, "compute-spin", true},
                               {InjectKind::kCheckpointSync, "ckpt-sync", false},
                               {InjectKind::kEvalDelay, "eval-delay", true}};

constexpr char kUsage[] =
    "expected data-delay=MS, comm-delay=MS, compute-spin=MS, ckpt-sync or eval-delay=MS, "
    "each optionally @RANK";

template <typename T>
bool parse_number(std::string_view text, T* out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

Result<Injection> parse_injection(std::string_view spec) {
  Injection inj;
  std::string_view body = spec;
  if (auto at = body.find('@'); at != std::string_view::npos) {
    if (!parse_number(body.substr(at + 1), &inj.rank) || inj.rank < 0) {
      return invalid_argument(fmt::format("--inject {}: '{}' is not a rank (a number >= 0)", spec,
                                          body.substr(at + 1)));
    }
    body = body.substr(0, at);
  }
  std::string_view name = body, value;
  bool has_value = false;
  if (auto eq = body.find('='); eq != std::string_view::npos) {
    name = body.substr(0, eq);
    value = body.substr(eq + 1);
    has_value = true;
  }
  for (const auto& k : kKinds) {
    if (k.name != name) continue;
    inj.kind = k.kind;
    if (!k.takes_ms) {
      if (has_value)
        return invalid_argument(fmt::format("--inject {}: {} takes no value", spec, name));
      return inj;
    }
    if (!has_value || !parse_number(value, &inj.ms) || !(inj.ms >= 0)) {
      return invalid_argument(
          fmt::format("--inject {}: {} needs milliseconds >= 0, e.g. {}=20", spec, name, name));
    }
    return inj;
  }
  return invalid_argument(fmt::format("--inject {}: unknown fault '{}'; {}", spec, name, kUsage));
}

std::string injection_to_string(const Injection& i) {
  std::string out;
  for (const auto& k : kKinds) {
    if (k.kind != i.kind) continue;
    out = k.takes_ms ? fmt::format("{}={:g}", k.name, i.ms) : std::string(k.name);
  }
  if (i.rank >= 0) out += fmt::format("@{}", i.rank);
  return out;
}

RankInjections injections_for_rank(const std::vector<Injection>& all, int rank) {
  RankInjections r;
  for (const auto& i : all) {
    if (!i.applies_to(rank)) continue;
    switch (i.kind) {
      case InjectKind::kDataDelay:
        r.data_delay_ms += i.ms;
        break;
      case InjectKind::kCommDelay:
        r.comm_delay_ms += i.ms;
        break;
      case InjectKind::kComputeSpin:
        r.compute_spin_ms += i.ms;
        break;
      case InjectKind::kCheckpointSync:
        r.ckpt_sync = true;
        break;
      case InjectKind::kEvalDelay:
        r.eval_delay_ms += i.ms;
        break;
    }
  }
  return r;
}

void inject_sleep(double ms) {
  if (ms <= 0) return;
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
}

void inject_spin(double ms) {
  if (ms <= 0) return;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(ms);
  volatile std::uint64_t sink = 0;
  while (std::chrono::steady_clock::now() < end) {
    for (int i = 0; i < 1000; ++i) sink = sink + static_cast<std::uint64_t>(i);
  }
}

}  // namespace kiln::diag
