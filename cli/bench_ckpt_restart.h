// `kiln bench ckpt`'s restart part (inmem_restart_recovery_s): a rank process
// is SIGKILLed and restarted, and the new process recovers its state from
// its buddy's memory, not its own (which died with it).
//
// Rank 0 of the bench plays the survivor and spawns the victim, a child
// process of this binary (`kiln bench ckpt --restart-child ...`, hidden):
//   1. survivor and victim form a two-rank world on the bench's store and
//      store a snapshot of 2 × bytes_per_rank into the memory tier (each
//      holds its own and the other's replica);
//   2. the victim is SIGKILLed and its memory directory removed;
//   3. the clock starts; a new victim process starts, forms a new world with
//      the survivor, allocates its state and recovers it into that memory
//      (the memory made resident beside the join and the recovery: Note
//      [Fault in beside the join], kiln/base/resident_memory.h);
//      the clock stops when both ranks have recovered (a collective);
//   4. the new process checks every byte (untimed) and both agree on the verdict.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/process_group.h"

namespace kiln::cli {

// What each process needs to know.
struct RestartBenchSpec {
  std::string dir;        // the memory tier's directory (removed afterwards)
  std::int64_t rows = 0;  // rows per rank; the tensor is [2 * rows, cols]
  std::int64_t cols = 0;
  std::int64_t step = 1;
  // How the restarted process gets its state's memory (Note [Fault in beside
  // the join], kiln/base/resident_memory.h), for A/B runs:
  //   wait4k   made resident from the process's start by a helper thread
  //            per CPU, in small pages (Note [Small pages for a restart]);
  //            the recovery waits for them (the default: 0.68-0.73 s against
  //            1.15-1.33 s in huge pages, A/B in one hold, docs/perf.md)
  //   wait     as wait4k, in huge pages
  //   wait1    as wait, with one helper thread
  //   overlap  as wait, but received into while the helpers still populate
  //   touch    mapped and written with zeros after the join, then received into
  //   fault    mapped only: the recovery's writes fault its pages in
  std::string memory = "wait4k";
  int run = 0;  // distinct for each measurement in one bench (their store keys)
};

// The modes above; InvalidArgument for another.
Status check_restart_memory_mode(const std::string& mode);

// The bench's state of rank r: one nonzero byte per page, so a misplaced or
// stale page shows.
void fill_bench_state(std::vector<char>& state, int rank);

// Where the restart's seconds went, from the restarted process's own clock
// marks (the same monotonic clock on one host).
struct RestartTimes {
  double total_s = 0;               // kill to both ranks recovered: inmem_restart_recovery_s
  double start_s = 0;               // spawn to the child's code running (exec, dynamic loading)
  double join_s = 0;                // forming the two-rank world
  double alloc_s = 0;               // after the join, until its memory may be received into
  double recover_s = 0;             // the restarted rank's recover() from its buddy
  std::int64_t alloc_faults = 0;    // the child's minor page faults while allocating
  std::int64_t recover_faults = 0;  // and while recovering
  // Host-wide /proc/vmstat counts during it: huge-page faults that fell back
  // to small pages, and allocations stalled on memory compaction.
  std::int64_t thp_fallbacks = 0;
  std::int64_t compaction_stalls = 0;
  // Free memory the guest handed back to the host meanwhile (MiB; free page
  // reporting), which the host backs again on next use.
  std::int64_t reported_mib = 0;
};

// Rank 0 of the bench (the survivor): runs steps 1–4 with `state` (its
// fill_bench_state, rows × cols floats) and `scratch` (touched memory of the
// same size, recovered into) and returns the restart's times. `pg` provides
// the store the two-rank worlds form on and its address for the child;
// `log_dir` gets the children's logs. DataLoss when the recovered bytes differ.
Result<RestartTimes> measure_restart_recovery(comm::ProcessGroup& pg, const RestartBenchSpec& spec,
                                              const std::vector<char>& state,
                                              std::vector<char>& scratch,
                                              const std::string& log_dir);

// The child's side: `phase` "store" (then waits to be killed) or "recover".
Status run_restart_child(const std::string& phase, const RestartBenchSpec& spec);

}  // namespace kiln::cli
