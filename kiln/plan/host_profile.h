// A CPU host's measured rates: what `kiln plan` needs to predict a training
// step on machines without a GPU catalog entry. `kiln plan calibrate` writes
// one (TOML, documented in docs/plan.md "Calibration"); a plan names it as
// `cluster.profile` or with `--profile FILE`.
//
// Every rate is what LibTorch (fp32) and kiln::comm achieve on this host, not
// a datasheet figure: the small GEMMs and the per-op dispatch cost of eager
// LibTorch are what a miniature model's step is made of.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::plan {

// One rank's compute with a given number of intra-op threads.
struct ComputeRates {
  int threads = 1;
  // Matrix products (torch::mm / bmm, fp32), fitted over a sweep of small-GPT
  // shapes: t = gemm_call_s + 2MNK / gemm_flops + 4(MK + KN + MN) / gemm_bytes_per_s.
  double gemm_flops = 0;           // sustained fp32 FLOP/s
  double gemm_call_s = 0;          // per call: dispatch, allocation, packing set-up
  double gemm_bytes_per_s = 0;     // operand traffic; 0 = not separable (ignored)
  // Batched products (torch::bmm: the attention core), which LibTorch runs
  // product by product: t = bmm_call_s + batch·(bmm_product_s + 2MNK / bmm_flops).
  double bmm_flops = 0;
  double bmm_call_s = 0;
  double bmm_product_s = 0;
  // Elementwise LibTorch ops on cache-resident tensors (~1 MiB).
  double elementwise_bytes_per_s = 0;
  // One LibTorch op on a one-element tensor: dispatch + output allocation.
  double op_overhead_s = 0;

  // Seconds for one product of M×K by K×N (torch::mm, a linear layer).
  double gemm_s(double m, double n, double k) const;
  // Seconds for one batched call of `batch` such products (torch::bmm).
  double bmm_s(double m, double n, double k, double batch) const;
};

// Alpha-beta cost of kiln::comm on one transport, fitted from an allreduce
// sweep over 2 ranks: t(S) = 2α + S/β (the ring's cost for n = 2).
struct LinkRates {
  double alpha_s = 0;
  double bytes_per_s = 0;
};

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

  // Rates of a rank with `threads` intra-op threads: measured at 1 and at
  // `cores`, linear in between, capped at `cores`.
  ComputeRates rates(int threads) const;
};

// Reads a profile. NotFound for a missing file; InvalidArgument naming the
// file, the line and the field for anything malformed, missing or unknown
// ("profile host.toml: field 'gemm_1_thread.gflops' ... at line 7").
Result<HostProfile> read_host_profile(const std::string& path);
Result<HostProfile> parse_host_profile(std::string_view toml_text, const std::string& source);

// The profile as the TOML read_host_profile reads (round-trips exactly up to
// the printed precision, 6 significant digits).
std::string host_profile_to_toml(const HostProfile& profile);

}  // namespace kiln::plan
