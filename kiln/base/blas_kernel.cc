#include "kiln/base/blas_kernel.h"

#include <dlfcn.h>
#include <strings.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"

namespace kiln {
namespace {

const Knob<bool> kBlasCoreFix{
    "KILN_BLAS_CORE_FIX", true,
    "when OpenBLAS does not know this CPU and falls back to its slow generic (Prescott) kernels, "
    "re-run with OPENBLAS_CORETYPE=SkylakeX or Haswell, as the CPU allows (kiln train, launch, "
    "run, bench ddp); an OPENBLAS_CORETYPE already set always wins"};

}  // namespace

CpuVectorFeatures CpuVectorFeatures::of_this_cpu() {
  __builtin_cpu_init();
  CpuVectorFeatures f;
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return f;
}

std::string better_openblas_core(std::string_view detected, CpuVectorFeatures cpu) {
  // "Prescott" is the fallback of OpenBLAS's dynamic dispatch for an unknown
  // model; a CPU that really is SSE3-only gets nothing better below.
  if (detected.size() != 8 || strncasecmp(detected.data(), "prescott", 8) != 0) return "";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return "";
}

std::string openblas_core_in_use() {
  // Looked up at run time: Kiln does not link OpenBLAS itself; LibTorch
  // reaches it through Debian's libblas.so.3 alternative.
  using CoreName = char* (*)();
  auto fn = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (fn == nullptr) return "";
  const char* name = fn();
  return name != nullptr ? name : "";
}

bool set_openblas_threads(int threads) {
  using SetThreads = void (*)(int);
  auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (fn == nullptr) return false;
  fn(threads);
  return true;
}

int openblas_threads() {
  using GetThreads = int (*)();
  auto fn = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return fn == nullptr ? 0 : fn();
}

void reexec_if_blas_runs_generic_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || !kBlasCoreFix.get()) return;
  std::string detected = openblas_core_in_use();
  std::string better = better_openblas_core(detected, CpuVectorFeatures::of_this_cpu());
  if (better.empty()) return;
  log()->info(
      "OpenBLAS does not know this CPU and chose its generic {} kernels; running again with "
      "OPENBLAS_CORETYPE={} (set OPENBLAS_CORETYPE yourself to choose, or KILN_BLAS_CORE_FIX=0)",
      detected, better);
  ::setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  ::execv("/proc/self/exe", argv);
  log()->warn("re-running {} with OPENBLAS_CORETYPE={} failed ({}); matrix products stay slow",
              argv[0], better, std::strerror(errno));
}

}  // namespace kiln
