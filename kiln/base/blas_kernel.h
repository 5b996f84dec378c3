// OpenBLAS kernel selection on CPUs the installed OpenBLAS does not know.
//
// Note [OpenBLAS on CPUs it does not know]: OpenBLAS picks its kernels once,
// when the library loads, from the CPU's model number. Debian 12's build
// (0.3.21) does not know models newer than it (Intel Emerald Rapids, family
// 6 model 207, for one) and falls back to "Prescott": SSE3 kernels that run
// matrix products 3-5x slower than the CPU allows (single-thread sgemm
// 1024^3 on such a CPU: 16-28 GFLOP/s as Prescott, 57 as Haswell, 86 as
// SkylakeX). LibTorch's CPU training then runs at a fraction of its speed,
// silently. OpenBLAS reads OPENBLAS_CORETYPE only while it loads, so the only
// remedy from inside a process that already loaded it is to set the
// variable and execute itself again; children (kiln launch / kiln run
// workers) inherit it and start right.
#pragma once

#include <string>
#include <string_view>

namespace kiln {

struct CpuVectorFeatures {
  bool avx2_fma = false;  // AVX2 and FMA3
  bool avx512 = false;    // AVX-512 F, BW, DQ and VL (what OpenBLAS's SkylakeX kernels use)

  // This CPU's features (cpuid, via the compiler's builtins).
  static CpuVectorFeatures of_this_cpu();
};

// The OpenBLAS core type to force instead of `detected` (what
// openblas_get_corename() returned), or "" when `detected` is not the
// generic fallback or the CPU offers nothing better. Pure.
std::string better_openblas_core(std::string_view detected, CpuVectorFeatures cpu);

// The OpenBLAS core type this process's BLAS runs, or "" when the BLAS
// linked into the process is not OpenBLAS (or none is).
std::string openblas_core_in_use();

// When this process's OpenBLAS fell back to its generic kernels on a CPU
// with AVX2 or AVX-512 (Note [OpenBLAS on CPUs it does not know]), sets
// OPENBLAS_CORETYPE and executes /proc/self/exe again with `argv`: returns
// only if nothing needed doing, the knob KILN_BLAS_CORE_FIX is off,
// OPENBLAS_CORETYPE is already set (the user's choice, or our second run),
// or the exec failed (logged; the process carries on with slow kernels).
// Call at the very start of main, before threads exist.
void reexec_if_blas_runs_generic_kernels(char** argv);

// Note [OpenBLAS's own thread pool]: torch::set_num_threads() sizes
// LibTorch's intra-op pool (OpenMP/MKL), not OpenBLAS's, which starts one
// thread per core less one and keeps each spinning in sched_yield() for a
// while after every BLAS call. Two ranks on a 2-core host then run four
// busy threads on two cores: whichever rank the scheduler shortchanges is
// slower for the whole run (1.4-2x here), and which one it is changes from
// run to run. Sets OpenBLAS's thread count to `threads` (what the caller gave
// LibTorch) and returns true, or returns false when the process's BLAS is not
// OpenBLAS.
bool set_openblas_threads(int threads);

// OpenBLAS's thread count now in effect, or 0 when the process's BLAS is not
// OpenBLAS.
int openblas_threads();

}  // namespace kiln
