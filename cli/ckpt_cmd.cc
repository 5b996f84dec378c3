// `kiln ckpt ls ROOT`, `kiln ckpt verify ROOT/step-N`, `kiln ckpt inspect ROOT/step-N`:
// look at checkpoints written by kiln::ckpt (docs/formats.md, "Checkpoint format").
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/verify.h"

namespace kiln::cli {
namespace {

using namespace kiln::ckpt;

std::uint64_t total_bytes(const Manifest& m) {
  std::uint64_t n = 0;
  for (const auto& s : m.shards) n += s.bytes;
  return n;
}

// Committed steps, newest first, with what their manifests say (not verified:
// that is `verify`). Uncommitted .tmp directories are listed as such.
Status ls(const std::string& root) {
  KILN_ASSIGN_OR_RETURN(auto steps, list_committed_steps(root));
  auto latest = read_latest(root);
  std::string latest_name = latest.is_ok() ? *latest : "";
  std::printf("%-16s %6s %12s  %-20s %s\n", "step", "ranks", "bytes", "time", "");
  for (auto step : steps) {
    std::string name = step_dir_name(step);
    auto m = read_manifest(root + "/" + name);
    std::string mark = name == latest_name ? "latest" : "";
    if (!m.is_ok()) {
      std::printf("%-16s %6s %12s  %-20s unreadable: %s\n", name.c_str(), "?", "?", "?",
                  m.status().to_string().c_str());
      continue;
    }
    std::printf("%-16s %6d %12llu  %-20s %s\n", name.c_str(), m->world_size,
                static_cast<unsigned long long>(total_bytes(*m)), m->time.c_str(), mark.c_str());
  }
  KILN_ASSIGN_OR_RETURN(auto uncommitted, list_uncommitted(root));
  for (const auto& n : uncommitted) {
    std::printf("%-16s uncommitted (a save in flight or interrupted)\n", n.c_str());
  }
  return Status::ok();
}

// Reads every byte; non-ok (exit 3) naming each bad shard.
Status verify(const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(auto v, verify_step(dir));
  const auto& [m, problems] = v;
  for (const auto& s : m.shards) {
    bool bad = false;
    for (const auto& p : problems) {
      if (p.rank == s.rank) {
        std::printf("BAD  rank %d %s: %s\n", s.rank, s.file.c_str(), p.why.to_string().c_str());
        bad = true;
      }
    }
    if (!bad)
      std::printf("ok   rank %d %s (%llu bytes, %zu entries)\n", s.rank, s.file.c_str(),
                  static_cast<unsigned long long>(s.bytes), s.entries.size());
  }
  return verify_step_status(dir);
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "]";
}

// The manifest in words: step, world, and every entry of every shard.
Status inspect(const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(auto m, read_manifest(dir));
  std::printf("step %lld, %d ranks, format v%d, committed %s, %llu bytes\n",
              static_cast<long long>(m.step), m.world_size, m.version, m.time.c_str(),
              static_cast<unsigned long long>(total_bytes(m)));
  for (const auto& s : m.shards) {
    std::printf("rank %d  %s  %llu bytes\n", s.rank, s.file.c_str(),
                static_cast<unsigned long long>(s.bytes));
    for (const auto& e : s.entries) {
      std::string what =
          e.is_tensor ? fmt::format("tensor {} {} rows [{}, {})", comm::dtype_name(e.spec.dtype),
                                    shape_string(e.spec.shape), e.spec.row_offset,
                                    e.spec.row_offset + e.spec.rows)
                      : std::string("blob");
      std::printf("  %-24s %-48s %10llu B%s  xxh3 %s\n", e.name.c_str(), what.c_str(),
                  static_cast<unsigned long long>(e.raw_bytes),
                  e.compression == Compression::kZstd
                      ? fmt::format(" (zstd {})", e.stored_bytes).c_str()
                      : "",
                  checksum_hex(e.xxh3).c_str());
    }
  }
  return Status::ok();
}

const CommandRegistration kRegister("ckpt", [](CLI::App& parent) {
  auto root = std::make_shared<std::string>();
  auto* ls_cmd = parent.add_subcommand("ls", "List the checkpoints under ROOT, newest first");
  ls_cmd->add_option("ROOT", *root, "checkpoint root directory")->required();
  ls_cmd->callback(run_status([root] { return ls(*root); }));

  auto dir = std::make_shared<std::string>();
  auto* verify_cmd = parent.add_subcommand(
      "verify", "Check every shard of ROOT/step-N against its manifest (exit 3 naming bad shards)");
  verify_cmd->add_option("STEP_DIR", *dir, "a step directory, e.g. /ckpt/step-100")->required();
  verify_cmd->callback(run_status([dir] { return verify(*dir); }));

  auto* inspect_cmd = parent.add_subcommand("inspect", "Print the manifest of ROOT/step-N");
  inspect_cmd->add_option("STEP_DIR", *dir, "a step directory, e.g. /ckpt/step-100")->required();
  inspect_cmd->callback(run_status([dir] { return inspect(*dir); }));
});

}  // namespace
}  // namespace kiln::cli
