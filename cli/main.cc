// `kiln`: one executable, one subcommand per cli/*_cmd.cc file.
//
// Note [Commands that need LibTorch]: loading LibTorch (Debian's links ~290
// shared libraries, and its static initialisers register every operator)
// costs 0.5-1 s before main() on this VM, which every process paid: a rank
// restarted to recover from its buddy's memory, a launcher, `kiln ckpt ls`.
// So `kiln` is built without the commands in cli/torch/, and a full
// executable with every command lies beside it in libexec/ (the same
// basename, so process listings still say "kiln"). `kiln` runs a command
// line only if it parses it completely; anything else (a command only the
// full executable has, a help request, a usage error) is handed to the full
// one unchanged (execv), which answers it. So are, before parsing, the
// commands that look at the BLAS LibTorch loads (runs_matrix_products and
// `kiln env`: Note [OpenBLAS on CPUs it does not know] needs OpenBLAS loaded
// to see which kernels it picked). Where LibTorch is not installed there is
// only the one executable.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "cli/registry.h"
#include "kiln/base/blas_kernel.h"

namespace {

// Finds or creates the subcommand group at `path` ("bench", "data", ...).
CLI::App* parent_for(CLI::App& root, const std::string& path) {
  if (path.empty()) return &root;
  CLI::App* app = &root;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(' ', start);
    std::string name =
        path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    CLI::App* child = nullptr;
    try {
      child = app->get_subcommand(name);
    } catch (const CLI::OptionNotFound&) {
      child = app->add_subcommand(name, "kiln " + path.substr(0, end) + " subcommands");
      child->require_subcommand(1);
    }
    app = child;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return app;
}

// The commands that multiply matrices, or start processes that do: they
// must not run OpenBLAS's generic kernels (Note [OpenBLAS on CPUs it does not
// know] in kiln/base/blas_kernel.h). Other commands skip the re-exec.
bool runs_matrix_products(int argc, char** argv) {
  if (argc < 2) return false;
  for (const char* cmd : {"train", "launch", "run", "serve"}) {
    if (std::strcmp(argv[1], cmd) == 0) return true;
  }
  if (argc >= 3 && std::strcmp(argv[1], "plan") == 0) return std::strcmp(argv[2], "calibrate") == 0;
  return argc >= 3 && std::strcmp(argv[1], "bench") == 0 &&
         (std::strcmp(argv[2], "ddp") == 0 || std::strcmp(argv[2], "serve") == 0);
}

#ifdef KILN_FULL_EXECUTABLE
// The full executable (KILN_FULL_EXECUTABLE, relative to this one's
// directory), or empty when it is not there.
std::string full_executable() {
  char self[PATH_MAX];
  const ssize_t len = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) return {};
  std::string path(self, static_cast<std::size_t>(len));
  path = path.substr(0, path.rfind('/') + 1) + KILN_FULL_EXECUTABLE;
  return ::access(path.c_str(), X_OK) == 0 ? path : std::string();
}
#endif

// Hands the command line to the full executable (Note [Commands that need
// LibTorch]); returns only when there is none or the exec failed.
void hand_to_full_executable(char** argv) {
#ifdef KILN_FULL_EXECUTABLE
  const std::string full = full_executable();
  if (full.empty()) return;
  ::execv(full.c_str(), argv);
  std::fprintf(stderr, "kiln: cannot run %s: %s\n", full.c_str(), std::strerror(errno));
#else
  (void)argv;
#endif
}

// Note [OpenMP's workers sleep]: LibTorch's intra-op pool is OpenMP's
// (libgomp), whose workers spin for a while after each parallel region by
// default; OpenBLAS's own pool spins in sched_yield after each BLAS call. A
// rank running two threads on two cores then has four busy threads there,
// and each GEMM waits for an OpenBLAS worker the spinning OpenMP ones keep
// off the core: a lone rank of gpt_3d.toml (1x1x1) took 2.34 s a step with
// two threads, 1.49 s with one, and 1.28 s with two whose OpenMP workers
// sleep at once (OMP_WAIT_POLICY=passive; 3 alternating runs each in one
// hold, docs/plan.md "Session 13"). OpenBLAS's worker still yielded for
// 2^28 cycles (~0.1 s) after every GEMM, so between a step's GEMMs, every
// millisecond, it took turns with the OpenMP pair on the element-wise ops:
// with OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles, OpenBLAS's minimum: it sleeps
// on its condition variable at once) the same step took 1.113 s against
// 1.385 (medians of 7 alternating pairs in two holds, faster in 5; half the
// system CPU; docs/plan.md "Session 15"). Both libraries read their
// variable when they are loaded, before main, so both are set here, before
// the full executable is exec'd, for the commands that train or time
// training's kernels (`kiln plan calibrate` must time what a rank runs); a
// user's own values stay.
bool trains(int argc, char** argv) {
  if (argc < 2) return false;
  for (const char* cmd : {"train", "launch", "run"}) {
    if (std::strcmp(argv[1], cmd) == 0) return true;
  }
  return argc >= 3 && std::strcmp(argv[1], "plan") == 0 && std::strcmp(argv[2], "calibrate") == 0;
}

// Whether this command needs the BLAS that LibTorch loads.
bool looks_at_blas(int argc, char** argv) {
  return runs_matrix_products(argc, argv) || (argc >= 2 && std::strcmp(argv[1], "env") == 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (trains(argc, argv)) {
    ::setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
    ::setenv("OPENBLAS_THREAD_TIMEOUT", "4", /*overwrite=*/0);
  }
  if (looks_at_blas(argc, argv)) hand_to_full_executable(argv);
  if (runs_matrix_products(argc, argv)) kiln::reexec_if_blas_runs_generic_kernels(argv);
  CLI::App app{"kiln: a runtime for fault-tolerant distributed training"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kiln 0.1.0");

  auto commands = kiln::cli::registered_commands();
  // Parents before children, so "bench" exists before "bench comm" is added.
  std::stable_sort(commands.begin(), commands.end(),
                   [](const auto& a, const auto& b) { return a.first.size() < b.first.size(); });
  for (auto& [parent, setup] : commands) setup(*parent_for(app, parent));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (!kiln::cli::command_started() && dynamic_cast<const CLI::CallForVersion*>(&e) == nullptr) {
      hand_to_full_executable(argv);
    }
    return app.exit(e);
  }
  return 0;
}
