// `kiln ckpt ls ROOT`, `kiln ckpt verify ROOT/step-N`, `kiln ckpt inspect ROOT/step-N`:
// look at checkpoints written by kiln::ckpt (docs/formats.md, "Checkpoint format").
// ROOT is a directory or an object store's URL (s3://BUCKET/PREFIX, file://DIR);
// `verify` of a URL downloads the step into a scratch directory first.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "cli/command.h"
#include "kiln/base/fs.h"
#include "kiln/base/server_process.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/verify.h"
#include "kiln/objstore/object_store.h"

namespace kiln::cli {
namespace {

using namespace kiln::ckpt;

std::uint64_t total_bytes(const Manifest& m) {
  std::uint64_t n = 0;
  for (const auto& s : m.shards) n += s.bytes;
  return n;
}

constexpr double kStoreTimeoutS = 300;

void print_header() {
  std::printf("%-16s %6s %12s  %-20s %s\n", "step", "ranks", "bytes", "time", "");
}

void print_step(const std::string& name, const Result<Manifest>& m, const std::string& mark) {
  if (!m.is_ok()) {
    std::printf("%-16s %6s %12s  %-20s unreadable: %s\n", name.c_str(), "?", "?", "?",
                m.status().to_string().c_str());
    return;
  }
  std::printf("%-16s %6d %12llu  %-20s %s\n", name.c_str(), m->world_size,
              static_cast<unsigned long long>(total_bytes(*m)), m->time.c_str(), mark.c_str());
}

// `ls` of an object store: a step is committed iff its manifest object exists.
Status ls_store(const std::string& url) {
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(url));
  const Deadline deadline = Deadline::after_seconds(kStoreTimeoutS);
  KILN_ASSIGN_OR_RETURN(auto steps, summarize_remote_steps(*store, deadline));
  print_header();
  bool newest = true;
  for (const auto& s : steps) {
    if (!s.committed) continue;
    print_step(step_dir_name(s.step), read_remote_manifest(*store, s.step, deadline),
               newest ? "latest" : "");
    newest = false;
  }
  for (const auto& s : steps) {
    if (s.committed) continue;
    std::printf("%-16s uncommitted (%zu objects, %llu bytes: an upload in flight or interrupted)\n",
                step_dir_name(s.step).c_str(), s.objects, static_cast<unsigned long long>(s.bytes));
  }
  return Status::ok();
}

// "s3://b/run/step-42" -> {"s3://b/run", 42}.
Result<std::pair<std::string, std::int64_t>> split_step_url(const std::string& url) {
  std::string u = url;
  while (!u.empty() && u.back() == '/') u.pop_back();
  auto slash = u.rfind('/');
  auto step = slash == std::string::npos ? std::nullopt : parse_step_dir_name(u.substr(slash + 1));
  if (!step) {
    return invalid_argument(fmt::format(
        "'{}' does not name a step: expected URL/step-N, e.g. s3://bucket/run/step-100", url));
  }
  return std::make_pair(u.substr(0, slash), *step);
}

// Committed steps, newest first, with what their manifests say (not verified:
// that is `verify`). Uncommitted .tmp directories are listed as such.
Status ls(const std::string& root) {
  if (objstore::is_object_store_url(root)) return ls_store(root);
  KILN_ASSIGN_OR_RETURN(auto steps, list_committed_steps(root));
  auto latest = read_latest(root);
  std::string latest_name = latest.is_ok() ? *latest : "";
  print_header();
  for (auto step : steps) {
    std::string name = step_dir_name(step);
    print_step(name, read_manifest(root + "/" + name), name == latest_name ? "latest" : "");
  }
  KILN_ASSIGN_OR_RETURN(auto uncommitted, list_uncommitted(root));
  for (const auto& n : uncommitted) {
    std::printf("%-16s uncommitted (a save in flight or interrupted)\n", n.c_str());
  }
  return Status::ok();
}

Status verify_dir(const std::string& dir);

// A step on an object store: downloaded into a scratch directory (removed
// afterwards), then verified there like a local one.
Status verify_store(const std::string& url) {
  KILN_ASSIGN_OR_RETURN(auto where, split_step_url(url));
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(where.first));
  KILN_ASSIGN_OR_RETURN(std::string scratch, make_scratch_dir("kiln-ckpt-verify-"));
  auto local =
      download_remote_step(*store, where.second, scratch, Deadline::after_seconds(kStoreTimeoutS));
  Status s = local.is_ok() ? verify_dir(*local) : local.status().with_context("verify " + url);
  (void)Fs::posix()->remove_tree(scratch);
  return s;
}

Status verify(const std::string& dir) {
  return objstore::is_object_store_url(dir) ? verify_store(dir) : verify_dir(dir);
}

// Reads every byte; non-ok (exit 3) naming each bad shard.
Status verify_dir(const std::string& dir) {
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
Result<Manifest> read_any_manifest(const std::string& dir) {
  if (!objstore::is_object_store_url(dir)) return read_manifest(dir);
  KILN_ASSIGN_OR_RETURN(auto where, split_step_url(dir));
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(where.first));
  return read_remote_manifest(*store, where.second, Deadline::after_seconds(kStoreTimeoutS));
}

Status inspect(const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(auto m, read_any_manifest(dir));
  std::printf("step %lld, %d ranks, format v%d, committed %s, %llu bytes\n",
              static_cast<long long>(m.step), m.world_size, m.version, m.time.c_str(),
              static_cast<unsigned long long>(total_bytes(m)));
  for (const auto& s : m.shards) {
    std::printf("rank %d  %s  %llu bytes%s\n", s.rank, s.file.c_str(),
                static_cast<unsigned long long>(s.bytes),
                s.chunks.empty() ? ""
                                 : fmt::format(" in {} chunk objects ({} .. {})", s.chunks.size(),
                                               s.chunks.front().file, s.chunks.back().file)
                                       .c_str());
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
  ls_cmd
      ->add_option("ROOT", *root, "checkpoint root: a directory, s3://BUCKET/PREFIX or file://DIR")
      ->required();
  ls_cmd->callback(run_status([root] { return ls(*root); }));

  auto dir = std::make_shared<std::string>();
  auto* verify_cmd = parent.add_subcommand(
      "verify", "Check every shard of ROOT/step-N against its manifest (exit 3 naming bad shards)");
  verify_cmd->add_option("STEP_DIR", *dir, "a step: /ckpt/step-100 or s3://bucket/run/step-100")
      ->required();
  verify_cmd->callback(run_status([dir] { return verify(*dir); }));

  auto* inspect_cmd = parent.add_subcommand("inspect", "Print the manifest of ROOT/step-N");
  inspect_cmd->add_option("STEP_DIR", *dir, "a step: /ckpt/step-100 or s3://bucket/run/step-100")
      ->required();
  inspect_cmd->callback(run_status([dir] { return inspect(*dir); }));
});

}  // namespace
}  // namespace kiln::cli
