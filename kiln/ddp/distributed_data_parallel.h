// DistributedDataParallel: data-parallel training of a LibTorch module over
// kiln::comm, with gradient sync hidden behind backward (c10d's Reducer).
//
// At construction the module's parameters and buffers are broadcast from
// rank 0, after checking that every rank has the same parameter names and
// shapes. Gradients are grouped into buckets in reverse registration order
// (the order backward produces them): a small first bucket so communication
// starts early, then buckets up to `bucket_cap_bytes`. Each parameter's
// .grad is a view into its bucket, so backward accumulates straight into the
// buffer that is sent (no copy; Note [Gradients as bucket views]); a hook
// after each gradient's accumulation marks it ready, and the
// moment a bucket is complete its allreduce (average) starts on the
// communicator's engine while backward continues on earlier layers. Buckets
// launch in index order on every rank (Note [Why buckets launch in order]:
// all ranks must issue the same collectives in the same order).
//
// Threading: one training thread calls backward(); hooks run on it (CPU
// autograd runs on the calling thread). Errors: Status values; LibTorch
// exceptions are caught at this boundary and returned as Internal.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/comm/shared_buffer.h"

namespace kiln::ddp {

struct DdpOptions {
  std::size_t bucket_cap_bytes = 25u << 20;
  std::size_t first_bucket_cap_bytes = 1u << 20;
  // Parameters whose gradient backward never produced count as zero instead
  // of being an error (c10d's find_unused_parameters).
  bool find_unused_parameters = false;
  // Communicate gradients as bfloat16 (half the bytes; averaged in float32
  // arithmetic, rounded to bfloat16 on the wire). Parameters stay float32.
  bool compress_bf16 = false;
  // bucket_cap = auto: after the first synchronized step, try the caps in
  // `auto_caps` in turn, `auto_rounds` times each, and keep the one whose
  // best trial had the least backward-plus-exposed-communication time on the
  // slowest rank (Note [Judging a bucket cap]). Every rank decides the same.
  bool auto_bucket_cap = false;
  std::vector<std::size_t> auto_caps{1u << 20, 4u << 20, 16u << 20, 25u << 20, 64u << 20};
  int auto_rounds = 3;
  // Steps bucket_cap = auto spends before its choice is in place (0 without
  // it): the first step, which observes the gradient order, then the trials.
  int auto_tuning_steps() const {
    return auto_bucket_cap ? 1 + static_cast<int>(auto_caps.size()) * std::max(1, auto_rounds) : 0;
  }
};

// One bucket's allreduce: the bytes each rank sent in (the wire dtype's:
// bf16 when compressed) and the seconds the operation itself ran.
// launched/started/finished: seconds since backward began that it was
// issued, began running and ended (where the link sat idle shows here).
struct CollectiveStat {
  std::size_t bytes = 0;
  double seconds = 0;
  double launched_s = 0;
  double started_s = 0;
  double finished_s = 0;
};

// Timing of the last synchronized backward().
struct SyncStats {
  double backward_s = 0;      // loss.backward() including hooks
  // CPU seconds during loss.backward(): the calling thread's, and the rest of
  // the process's (the communicator's threads, running the buckets launched
  // so far). Where backward's wall time goes beyond its own CPU: the cores
  // it lost to communication, here or in a peer process on the same host.
  double backward_thread_cpu_s = 0;
  double backward_other_cpu_s = 0;
  double exposed_comm_s = 0;  // waiting for allreduces after backward returned
  // First bucket launched .. last one reduced: the sync's duration, overlapped
  // or not (bytes / sync_s is the achieved gradient bandwidth, kiln::diag).
  double sync_s = 0;
  std::size_t buckets = 0;
  std::size_t bytes = 0;
  // Gradients copied into their bucket during it (Note [Gradients as bucket
  // views]): 0 in the steady state when zero_grad() zeroes in place.
  std::size_t grad_copies = 0;
  std::vector<CollectiveStat> collectives;  // one per bucket, in launch order
};

class DistributedDataParallel {
 public:
  static Result<std::unique_ptr<DistributedDataParallel>> create(
      std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm, DdpOptions options = {});
  ~DistributedDataParallel();

  torch::nn::Module& module() { return *module_; }

  // loss.backward(), then waits until every bucket is averaged across ranks:
  // afterwards each parameter's grad is the mean of all ranks' gradients
  // (accumulated over the no_sync() steps before it).
  Status backward(const torch::Tensor& loss);

  // While alive, backward() accumulates gradients locally and communicates
  // nothing (gradient accumulation); the next backward() outside syncs all.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& d) : d_(d) { d_.sync_enabled_ = false; }
    ~NoSync() { d_.sync_enabled_ = true; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallel& d_;
  };
  NoSync no_sync() { return NoSync(*this); }

  const SyncStats& last_sync() const { return stats_; }
  // The bucket cap in use (after auto tuning: the one it chose).
  std::size_t bucket_cap_bytes() const { return options_.bucket_cap_bytes; }
  bool tuning() const {
    return options_.auto_bucket_cap && static_cast<int>(tuning_index_) + 1 < options_.auto_tuning_steps();
  }
  std::size_t bucket_count() const { return buckets_.size(); }

 private:
  struct Bucket {
    torch::Tensor buffer;               // flat, one dtype
    torch::Tensor wire;                 // bfloat16 copy sent instead, when compressing
    std::vector<std::size_t> params;    // indices into params_
    std::vector<std::int64_t> offsets;  // element offset of each param in buffer
    std::size_t pending = 0;
    comm::WorkPtr work;
  };

  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm,
                          DdpOptions options);
  Status check_and_broadcast();
  Status build_buckets();
  Status assign_buckets(const std::vector<std::size_t>& order, const std::vector<bool>& break_before);
  Status rebuild_from_observed_order();
  void on_grad_accumulated(std::size_t param);
  torch::Tensor bucket_view(std::size_t param);
  void point_grad_at_bucket(std::size_t param);
  void launch_ready_buckets();
  void reset_for_backward();
  // Note [Buckets in shared memory]: all ranks on this host.
  bool shared_buckets() const { return comm_.size() > 1 && comm_.topology().hosts == 1; }
  // Lays the buckets (or their bfloat16 wires) whose allreduce would run
  // directly into `held`, reused when the size is unchanged.
  void place_in_shared_memory(bool wires, std::shared_ptr<comm::SharedBuffer>& held);

  std::shared_ptr<torch::nn::Module> module_;
  comm::Communicator& comm_;
  DdpOptions options_;
  std::vector<torch::Tensor> params_;  // registration order
  std::vector<std::string> names_;
  std::vector<Bucket> buckets_;
  // Note [Buckets in shared memory]: one buffer for all buckets, one for
  // all bfloat16 wires; null when no bucket qualifies.
  std::shared_ptr<comm::SharedBuffer> shared_grads_, shared_wires_;
  std::vector<std::size_t> bucket_of_;   // param -> bucket
  std::vector<std::size_t> slot_of_;     // param -> position in its bucket
  std::vector<bool> ready_;              // this backward
  std::vector<double> ready_at_;         // seconds into this backward
  Clock::time_point backward_started_;
  Clock::time_point first_launch_;  // of this backward's first bucket (SyncStats::sync_s)
  bool rebuilt_ = false;                 // Note [Rebuilding buckets from the observed order]
  std::vector<std::size_t> observed_order_;
  std::vector<double> observed_ready_s_;  // seconds into backward, in observed_order_
  double observed_backward_s_ = 0;
  // Where buckets close early under the bucket cap in use (bucket_plan.h).
  std::vector<bool> observed_breaks() const;
  std::size_t tuning_index_ = 0;         // trials done; the next tries auto_caps[index % size]
  std::vector<double> tuning_best_s_;    // per candidate: its best trial (slowest rank's time)
  Status tune_bucket_cap();
  std::vector<std::shared_ptr<torch::autograd::Node>> grad_accumulators_;
  std::vector<std::uintptr_t> post_hook_keys_;
  std::size_t next_launch_ = 0;
  bool sync_enabled_ = true;
  bool in_backward_ = false;
  SyncStats stats_;
};

}  // namespace kiln::ddp
