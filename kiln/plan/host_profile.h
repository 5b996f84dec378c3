// A CPU host's measured rates: what `kiln plan` needs to predict a training
// step on machines without a GPU catalog entry. `kiln plan calibrate` writes
// one (TOML, documented in docs/plan.md "Calibration"); a plan names it as
// `cluster.profile` or with `--profile FILE`.
//
// Every rate is what LibTorch (fp32, eager, with autograd) and kiln::comm
// achieve on this host, not a datasheet figure: a miniature model's step is
// made of small products, transcendental elementwise kernels (GeLU, softmax)
// and per-op dispatch, none of which a peak FLOP rate or a stream bandwidth
// predicts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::plan {

// t = fixed + n · per_unit: an elementwise kernel class over n elements.
struct Affine {
  double fixed_s = 0;
  double per_unit_s = 0;
  double at(double n) const { return fixed_s + n * per_unit_s; }
};

// A linear layer's products: t = call + 2MNK / flops + 4(MK + KN + MN) / bytes_per_s.
struct ProductRate {
  double call_s = 0;
  double flops = 0;
  double bytes_per_s = 0;  // 0 = no separable traffic term
  double at(double m, double n, double k) const;
};

// The causal attention core (QKᵀ, scale, mask, softmax, ·V) over `bh`
// matrices of s×hd: t = call + bh · (4·s²·hd / flops + s² · score_s).
struct AttentionRate {
  double call_s = 0;
  double flops = 0;
  double score_s = 0;  // per score: the scale, mask and softmax passes
  double at(double bh, double s, double hd) const;
};

// One rank's compute with a given number of intra-op threads: each kernel
// class of a GPT block as LibTorch runs it in fp32 with autograd (outputs
// allocated, gradients accumulated), forward and backward timed apart.
struct ComputeRates {
  int threads = 1;
  ProductRate linear_fwd, linear_bwd;  // torch::linear with bias; backward = both gradients
  AttentionRate attention_fwd, attention_bwd;
  Affine layer_norm_fwd, layer_norm_bwd;  // per element
  Affine gelu_fwd, gelu_bwd;              // per element
  Affine rotary_fwd, rotary_bwd;          // per element of q or k
  Affine add;                             // residual add (and gradient accumulation), per element
  Affine loss_fwd, loss_bwd;              // cross-entropy, per logit
  Affine embedding_fwd, embedding_bwd;    // per output element
  Affine optimizer_per_tensor;            // AdamW + clipping + zero_grad: fixed = per step
  double optimizer_param_s = 0;           // ... per parameter
  double op_overhead_s = 0;               // one LibTorch op on one element (informational)
};

// Alpha-beta cost of kiln::comm on one transport, fitted from an allreduce
// sweep over 2 ranks: t(S) = 2α + S/β (the ring's cost for n = 2).
struct LinkRates {
  double alpha_s = 0;
  double bytes_per_s = 0;
};

// Note [Core sharing]: when a host's ranks outnumber its cores, fair shares
// of the cores are not all they lose. Each rank that switches in refills
// the caches the others evicted, and every blocking message (a
// tensor-parallel all-reduce, a pipeline hand-off) waits until the peer it
// needs is scheduled: a waiter spins briefly, yields, then sleeps on its
// doorbell (Note [Spin, then yield, then sleep] in
// kiln/comm/transport/context.cc), and the peer may sit behind the other
// ranks of its core's run queue. `kiln plan calibrate` measures both with
// real kiln::comm processes (`kiln bench handoff`): N ranks in pairs run
// rounds of w seconds of compute and a pair all-reduce, at two w, and
//   round = slowdown · max(1, N / cores) · w + handoff
// is fitted per N. `slowdown` (≥ 1 when sharing costs) scales compute;
// `handoff` is wall time a blocking message adds while its rank holds no
// core. Both depend on the ranks per core, measured at 1, 2 and 4.
//
// Note [Lockstep partners]: the pairs' slowdown is not all cache and bus.
// The same probe with groups of one (`--group 1`: ranks that meet no one)
// ran 20% faster per unit of work at 2 ranks per core and 13% at 4 in one
// probe on the CI host, 7% and 6% in a calibration 12 minutes later
// (docs/perf.md, issue 18 session 6), a loss that grows with the work
// between two meetings, not with their number: two runqueues schedule a pair's halves
// independently, so a rank whose partner was preempted waits out the other
// rank's slice while its own core's other rank, waiting for a partner of its
// own, may have nothing to run either. Tensor-parallel ranks meet their
// partner every layer half and lose that; ranks that meet only once per
// pipeline micro-batch or step run as independent ranks, their waits
// played out by pipeline_sim.h. So `independent_slowdown` (the group-of-one
// fit, optional: without it `slowdown` applies to every layout) prices the
// compute of layouts with tp = 1, and `slowdown` that of tp > 1.
//
// Note [Work between meetings]: the pairs' loss need not be proportional to
// the work between two meetings (the affine fit's slope is one number over
// the probed sizes). So the calibration also keeps each probed size's own
// slowdown, what is left of its round after the fitted hand-off per unit of
// work, (round − handoff) / (max(1, N) · w), and `kiln plan` reads the pairs'
// slowdown at the work a layout's tensor-parallel ranks do between two
// all-reduces (a layer half), interpolated in log w, clamped to the sizes
// probed. Without the table (older profiles) the slope applies at any w.
//
// Note [Drifting hosts]: a shared VM's speed moves by 15-25% within
// minutes (docs/perf.md, issue 18 session 6). A slowdown is a ratio of a
// shared round to the same work alone; both halves must be timed within
// seconds of each other, or the ratio carries the drift. So `kiln bench
// handoff --sweep` times the unit alone (rank 0, the others asleep) before
// every repeat of its sweep, each round is divided by the unit timed just
// before it, repeats are spread over the whole sweep rather than back to
// back, and every value is a median, never the fastest. The work's absolute
// scale is the unit timed by `kiln plan calibrate` itself with no rank
// running, seconds before each sweep (rank 0's "alone" unit ran 2.2x slow at
// 8 ranks on 2 cores in one calibration of three). Calibrations spread over
// a measurement window are merged (host_profile_merge.h).
struct WorkSlowdown {
  double work_s = 0;  // work between two meetings, one rank alone
  double slowdown = 1;
};

struct CoreSharingPoint {
  double ranks_per_core = 1;
  double slowdown = 1;
  double handoff_s = 0;
  double independent_slowdown = 0;  // 0: not measured (use slowdown)
  // Note [Work between meetings]: the pairs' slowdown per probed work size,
  // ascending in work; empty: `slowdown` at every size.
  std::vector<WorkSlowdown> by_work;
  // The pairs' slowdown at `work_s` between meetings (slowdown without a table).
  double slowdown_at(double work_s) const;
};

// Note [Pipeline hand-off]: inside a pipeline a stage's tensor-parallel
// ranks do not stay runnable as the lockstep pairs of [core_sharing] do:
// they sleep through each wait for the previous stage and meet their partner
// when the kernel has woken both. Whether their collectives therefore wait
// longer was measured directly (Note [The group wait, measured] in
// cli/torch/bench_handoff_cmd.cc, bench/pipeline_group_wait.sh; docs/plan.md,
// issue 18 session 10): on this repository's 2-core host as long as the
// lockstep pairs' at 2 ranks per core and 30% shorter at 4. So the host model
// prices a TP collective inside a pipeline with the lockstep hand-off, and a
// profile has no pipeline section. (Sessions 5-10 fitted one,
// [pipeline_handoff], as the residual of a pipeline probe's step after the
// model's compute: 0.16-0.77 ms of wait per 2% of step, 0 to 1.6 ms between
// refits of one hour; a profile that still carries it is refused by name.)
struct HostProfile {
  std::string source = "profile";  // where it came from, for messages
  std::string host;                // hostname at calibration
  std::string cpu;                 // model name, informational
  std::string blas;                // BLAS kernel LibTorch ran (e.g. OpenBLAS SkylakeX)
  std::string measured_at;         // UTC, ISO 8601
  int cores = 1;                   // online CPUs the ranks share
  double memory_bytes = 0;         // physical memory
  ComputeRates one_thread;         // one rank, one intra-op thread
  ComputeRates all_threads;        // one rank, `cores` intra-op threads
  double stream_bytes_per_s = 0;   // one thread copying a DRAM-sized buffer
  double stream_all_bytes_per_s = 0;  // all cores copying at once (the host's aggregate)
  LinkRates shm;                   // ranks on one host (kiln::comm's shared-memory transport)
  LinkRates tcp;                   // ranks across hosts (TCP; calibrated over loopback)
  // Measured core sharing by ranks per core, ascending; empty in profiles
  // written before it was measured (then sharing costs only fair shares).
  std::vector<CoreSharingPoint> sharing;

  // Piecewise linear in the ranks per core between the measured points,
  // clamped to the first and the last (1 and 0 without measurements).
  double sharing_slowdown(double ranks_per_core) const;
  // ... with `work_s` of compute between two meetings of the pairs (Note
  // [Work between meetings]): each level's slowdown_at, then as above.
  double sharing_slowdown(double ranks_per_core, double work_s) const;
  // Note [Lockstep partners]: the slowdown of ranks that meet no partner
  // between long runs of compute; sharing_slowdown() where not measured.
  double independent_slowdown(double ranks_per_core) const;
  double handoff_s(double ranks_per_core) const;

  // Rates of a rank with `threads` intra-op threads: measured at 1 and at
  // `cores`; in between, the one nearer (ties: 1), capped at `cores`.
  const ComputeRates& rates(int threads) const;
};

// Reads a profile. NotFound for a missing file; InvalidArgument naming the
// file, the line and the field for anything malformed, missing or unknown
// ("config host.toml: field 'compute_1_thread.linear_fwd_gflops' ... at line 7").
Result<HostProfile> read_host_profile(const std::string& path);
Result<HostProfile> parse_host_profile(std::string_view toml_text, const std::string& source);

// The profile as the TOML read_host_profile reads (round-trips exactly up to
// the printed precision, 6 significant digits).
std::string host_profile_to_toml(const HostProfile& profile);

}  // namespace kiln::plan
