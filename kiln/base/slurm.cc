#include "kiln/base/slurm.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <functional>

namespace kiln {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

Result<int> env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (v == nullptr) return fallback;
  std::string_view s(v);
  int out = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || p != s.data() + s.size() || out < 0) {
    return invalid_argument(fmt::format("Slurm variable {}={:?} is not a count", name, s));
  }
  return out;
}

}  // namespace

int SlurmStep::derived_port(int offset) const {
  std::size_t h = std::hash<std::string>{}(job_id + "." + step_id);
  return 10000 + static_cast<int>((h + static_cast<std::size_t>(offset)) % 20000);
}

Result<std::string> first_slurm_host(std::string_view list) {
  // The first entry ends at the first comma outside brackets.
  std::string host;
  bool in_bracket = false, took_range = false;
  for (char c : list) {
    if (c == '[') {
      if (in_bracket) break;
      in_bracket = true;
      took_range = false;
    } else if (c == ']') {
      if (!in_bracket) {
        return invalid_argument(fmt::format("Slurm hostlist {:?}: unbalanced ']'", list));
      }
      in_bracket = false;
    } else if (in_bracket) {
      // Inside "[03-05,7]" only the first number counts (zero padding kept).
      if (c == '-' || c == ',') took_range = true;
      if (!took_range) host += c;
    } else if (c == ',') {
      break;
    } else {
      host += c;
    }
  }
  if (in_bracket) return invalid_argument(fmt::format("Slurm hostlist {:?}: unbalanced '['", list));
  if (host.empty()) return invalid_argument(fmt::format("Slurm hostlist {:?} names no host", list));
  return host;
}

Result<std::optional<SlurmStep>> slurm_step_from_env() {
  if (env("SLURM_PROCID") == nullptr || env("SLURM_STEP_ID") == nullptr) {
    return std::optional<SlurmStep>();
  }
  SlurmStep s;
  KILN_ASSIGN_OR_RETURN(s.procid, env_int("SLURM_PROCID", 0));
  KILN_ASSIGN_OR_RETURN(s.ntasks, env_int("SLURM_NTASKS", 1));
  KILN_ASSIGN_OR_RETURN(s.localid, env_int("SLURM_LOCALID", 0));
  KILN_ASSIGN_OR_RETURN(s.nodeid, env_int("SLURM_NODEID", 0));
  KILN_ASSIGN_OR_RETURN(s.nnodes, env_int("SLURM_STEP_NUM_NODES", 1));
  KILN_ASSIGN_OR_RETURN(s.nnodes, env_int("SLURM_NNODES", s.nnodes));
  KILN_ASSIGN_OR_RETURN(s.local_ntasks, env_int("SLURM_NTASKS_PER_NODE", 0));
  if (s.local_ntasks == 0) s.local_ntasks = (s.ntasks + s.nnodes - 1) / std::max(1, s.nnodes);
  if (s.ntasks < 1 || s.procid >= s.ntasks) {
    return invalid_argument(
        fmt::format("SLURM_PROCID={} is outside SLURM_NTASKS={}", s.procid, s.ntasks));
  }
  const char* list = env("SLURM_STEP_NODELIST");
  if (list == nullptr) list = env("SLURM_JOB_NODELIST");
  if (list == nullptr) list = env("SLURM_NODELIST");
  if (list == nullptr) {
    return invalid_argument("inside a Slurm step (SLURM_PROCID is set) but SLURM_STEP_NODELIST is not");
  }
  KILN_ASSIGN_OR_RETURN(s.first_host, first_slurm_host(list));
  const char* job = env("SLURM_JOB_ID");
  s.job_id = job != nullptr ? job : "";
  s.step_id = env("SLURM_STEP_ID");
  return std::optional<SlurmStep>(std::move(s));
}

}  // namespace kiln
