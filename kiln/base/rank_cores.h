// A local rank's share of the host's cores: which cores `kiln launch` binds
// it to, and how many intra-op threads (LibTorch's and OpenBLAS's pools) it
// runs on them.
//
// Note [A rank's share of the cores]: a rank's threads never outnumber the
// cores it may run on. Until session 13 `kiln launch` bound a rank that had
// a core to itself to that one core (Note [Binding ranks to cores] in
// cli/local_ranks.cc), and `kiln train` gave every rank cores / local ranks
// threads, reading neither its affinity nor the binding: a lone rank on a
// 2-core host ran two intra-op threads (four, with OpenBLAS's pool) taking
// turns on one core. Every parallel region then waits for a partner the
// scheduler has parked, and that rank's kernels ran 3-10x slow at random
// (one CPU-second per wall second in every run: docs/plan.md "Session 12"
// and "Session 13"). So the launcher gives each of n <= cores ranks a block
// of cores / n cores (a lone rank: all of them), and a rank runs as many
// threads as its share: the cores its affinity allows, split among the
// local ranks when they all share one mask (nothing bound: n > cores, or
// `--bind none`).
#pragma once

#include <vector>

namespace kiln {

// Intra-op threads for one of `local_ranks` ranks on this host, which may
// run on `usable_cpus` CPUs (its affinity mask) of the host's `online_cpus`:
// min(usable_cpus, online_cpus / local_ranks), at least 1. Pure.
int intra_op_threads(int usable_cpus, int online_cpus, int local_ranks);

// intra_op_threads() for this process: its affinity mask, the online CPUs,
// and LOCAL_WORLD_SIZE (1 when unset: a process on its own).
int intra_op_threads_here();

// The CPUs this process may run on (its affinity mask), in order; empty
// when the mask cannot be read.
std::vector<int> allowed_cpus();

// The cores rank `rank` of `ranks` is bound to, out of `allowed` (the
// launcher's own mask, in order): when ranks <= allowed.size(), a block of
// allowed.size() / ranks consecutive cores, rank 0 first; otherwise the one
// core rank % allowed.size() (`--bind core` with more ranks than cores).
// Empty when `allowed` is. Pure.
std::vector<int> cores_of_rank(const std::vector<int>& allowed, int rank, int ranks);

}  // namespace kiln
