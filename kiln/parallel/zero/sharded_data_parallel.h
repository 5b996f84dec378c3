// ShardedDataParallel: ZeRO stages 1-3 (FSDP-style full sharding) for
// LibTorch modules over a kiln::comm data-parallel group.
//
// Units. The module's parameters are grouped into units: each direct child
// module, and each element of a ModuleList/Sequential child, is a unit
// (consecutive units smaller than `min_unit_params` are merged); parameters
// registered on the root itself form a root unit that stays gathered. Each
// unit's parameters become views into one flat vector (FlatLayout), sharded
// evenly: rank r keeps the fp32 master values of its share, the optimizer
// state of its share, and (stages 2, 3) the gradient of its share only.
//
//   stage 1  parameters and gradients whole on every rank; each unit's
//            gradients are reduce-scattered (in place in the whole gradient
//            buffer it keeps), each rank steps its share and the shares are
//            allgathered back into the parameters: DDP's bytes, as a
//            reduce-scatter and an allgather are an allreduce
//   stage 2  as 1, but gradients are reduce-scattered per unit the moment
//            the unit's gradients are complete, and the whole gradient is
//            freed once that is done
//   stage 3  as 2, and parameters are held only as shares: a unit's whole
//            parameters are allgathered before its forward (the next unit's
//            gather is prefetched meanwhile) and freed after it (except
//            the last, which backward needs first), gathered
//            again before its backward (prefetching the unit before it),
//            and freed when its gradients are reduced
//
// The model runs each unit through parallel::run_unit() (unit_hooks.h);
// stage 3 needs that to know when to gather. The first forward runs with
// every unit gathered and records the order units execute in; a unit that
// never went through run_unit() is then an error naming it, not a read of
// freed memory.
//
// Precision: kBf16 computes and communicates in bfloat16 (parameters,
// activations, gradients, and their reduce-scatter, which accumulates in
// float32 inside kiln::comm) and keeps fp32 master shares and optimizer
// moments; the gradient share is bfloat16 (the ZeRO paper's 2 + 2 + 12
// bytes per parameter). kFp32 does everything in float32.
//
// Collectives: every rank issues the same collectives in the same order (the
// autograd order is the same on every rank; reductions launch in unit order,
// Note [Why reductions launch in order] in the .cc).
//
// Threading: one training thread calls forward (through the model),
// backward(), step() and the rest. Errors are Status values; a failed
// collective inside a forward hook throws (the LibTorch boundary) and
// backward() returns it as a Status.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/unit_hooks.h"
#include "kiln/parallel/zero/buffer_pool.h"
#include "kiln/parallel/zero/flat_layout.h"
#include "kiln/parallel/zero/sharded_optimizer.h"

namespace kiln::parallel::zero {

enum class Precision { kFp32, kBf16 };

struct ZeroOptions {
  int stage = 3;  // 1, 2 or 3
  Precision precision = Precision::kFp32;
  // Units smaller than this many parameters are merged with their
  // neighbours (0: every child module is its own unit).
  std::int64_t min_unit_params = 0;
  // Prefetch the next unit's gather and reduce each unit as soon as its
  // gradients are ready. false: gather every unit before forward, reduce
  // every unit after backward (the non-overlapped baseline of kiln bench fsdp).
  bool overlap = true;
  // Stage 3: units whose gather is started ahead of the one computing, in
  // forward and in backward (Note [Prefetching]). 1 holds at most 2 units'
  // parameters at once; 2 keeps the link busy through a unit that computes
  // faster than it gathers, or a peer running a little behind, for one more
  // unit of memory.
  int prefetch = 1;
  // Reductions (stages 2, 3) left in flight while backward goes on: each
  // holds its unit's whole gradient until done (Note [Bounded reductions in
  // flight]). 1 saves memory; 2 lets a slow reduction overlap more backward.
  int reductions_in_flight = 2;
  OptimizerOptions optimizer;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // per collective wait
  // Records a TraceEvent for every collective, wait and phase (take_trace()):
  // what kiln bench fsdp --trace writes to find where exposed time goes.
  bool trace = false;
};

// One collective, wait or phase of the training thread, for the schedule's
// timeline (ZeroOptions::trace). Times are steady-clock seconds, which every
// process on one host shares, so two ranks' traces line up.
struct TraceEvent {
  // gather, reduce, wait_gather, wait_reduce, forward, pre_backward, grads,
  // backward, step
  std::string what;
  std::string unit;  // empty for phases of the whole model
  double issued = 0, started = 0, ended = 0;  // collectives: submitted, began running, done
};

// Bytes this rank holds for training state, tracked at every allocation and
// release of a parameter, gradient or optimizer tensor the wrapper owns.
struct StateBytes {
  std::size_t params = 0;     // whole parameters held throughout (stages 1, 2; the root unit)
  std::size_t grads = 0;      // whole gradients held throughout (stage 1)
  std::size_t shards = 0;     // master shares, gradient shares, send copies
  std::size_t optimizer = 0;  // optimizer moments
  // Held only around a unit's use: stage 3's gathered parameters, autograd's
  // gradients until they are copied out, reduction staging (stages 2, 3),
  // and the idle blocks the wrapper keeps for the next of these (BufferPool).
  std::size_t in_flight = 0;
  std::size_t persistent() const { return params + grads + shards + optimizer; }
  std::size_t total() const { return persistent() + in_flight; }
};

struct ZeroSyncStats {
  double backward_s = 0;      // loss.backward() including hooks
  double exposed_comm_s = 0;  // waiting for reductions (inside backward() and after it)
  double backward_reduce_wait_s = 0;  // the part of exposed_comm_s inside loss.backward()
  double gather_wait_s = 0;   // waiting for parameter gathers (forward and backward)
  double backward_gather_wait_s = 0;  // the part of gather_wait_s inside backward
  std::size_t bytes = 0;      // bytes sent through collectives this step (per rank)
};

// The ZeRO paper's per-rank training-state bytes for `parameters` parameters
// on `world` ranks: parameters (4 bytes fp32, 2 bf16), gradients (same) and
// K bytes of sharded state (moments: AdamW 8, SGD with momentum 4; bf16 adds
// the 4-byte master), each divided by the world size where `stage` shards
// it. Stage 0 is plain data parallelism (nothing sharded; DDP keeps fp32).
std::size_t state_bytes_formula(int stage, Precision precision, const OptimizerOptions& optimizer,
                                std::int64_t parameters, int world);

class ShardedDataParallel : public UnitHooks {
 public:
  // Collective: checks every rank has the same parameter names and shapes,
  // broadcasts rank 0's parameters and buffers, and shards them.
  static Result<std::unique_ptr<ShardedDataParallel>> create(std::shared_ptr<torch::nn::Module> module,
                                                             comm::Communicator& comm,
                                                             ZeroOptions options);
  // Stage 3: parameters not gathered at destruction become empty tensors.
  ~ShardedDataParallel() override;

  torch::nn::Module& module() { return *module_; }
  const ZeroOptions& options() const { return options_; }
  std::size_t unit_count() const { return units_.size(); }
  std::string unit_name(std::size_t u) const;
  std::int64_t parameter_count() const { return parameter_count_; }

  // loss.backward(), then waits for every unit's reduction: afterwards each
  // rank's gradient share holds the mean over ranks, added to what earlier
  // backward() calls since the last step() left there (accumulation).
  Status backward(const torch::Tensor& loss);
  // Scales the gradient shares so their global L2 norm is at most max_norm
  // (torch::nn::utils::clip_grad_norm_'s arithmetic); returns the norm before.
  Result<double> clip_grad_norm(double max_norm);
  // The optimizer step on this rank's shares at learning rate `lr`, then
  // zeroes the gradient shares and (stages 1, 2) starts gathering the new
  // parameters (the next forward waits for each unit's).
  Status step(double lr);
  // Makes every parameter of the module hold its whole current value (for
  // evaluation digests, export): stage 3 keeps them until the next forward.
  Status gather_all();
  // Calls fn on every parameter of the module, in module.parameters() order,
  // holding its whole current value; stage 3 gathers one unit at a time, so
  // this needs no more memory than a forward does.
  Status visit_parameters(const std::function<void(const torch::Tensor&)>& fn);

  // Checkpoint state (docs/formats.md "Sharded training state"): this rank's
  // share of each unit's master parameters and optimizer state as rows of
  // flat tensors, the unit layout and optimizer step as blobs. The tensors in
  // `keep_alive` back the view until the save returns.
  Status capture(ckpt::StateView* view, std::vector<torch::Tensor>* keep_alive,
                 std::string* layout_blob, std::string* optim_blob);
  // The `zero/layout` blob capture() writes: units, their parameters' names
  // and shapes (what a checkpoint saved by another layout is cut into).
  std::string layout_json() const;
  // Restores from a checkpoint loaded for (this rank, this world)
  // (ckpt::load_step(dir, rank, world)) or whole (rank 0 of 1): any saved
  // world size and stage. DataLoss naming the unit if the layout differs.
  Status restore(const ckpt::LoadedState& loaded);

  const ZeroSyncStats& last_sync() const { return sync_; }
  // The events recorded since the last call (ZeroOptions::trace).
  std::vector<TraceEvent> take_trace() { return std::exchange(trace_, {}); }
  StateBytes state_bytes() const;
  StateBytes peak_state_bytes() const { return peak_; }
  void reset_peak() { peak_ = state_bytes(); }
  // The ZeRO paper's per-rank bytes for this stage and precision: parameters
  // (4 or 2 bytes each), gradients (4 or 2) and K bytes of sharded state
  // (moments: AdamW 8, SGD with momentum 4; bf16 adds the 4-byte master),
  // each divided by the world size where the stage shards it.
  std::size_t formula_state_bytes() const;
  // The most bytes in flight at once (StateBytes::in_flight) by construction,
  // in units of the largest unit (Note [Bounded reductions in flight]).
  std::size_t in_flight_bound() const;
  // Blocks the wrapper keeps for gathered parameters and staging.
  std::size_t pooled_blocks() const;

  // UnitHooks (called by run_unit on the training thread).
  void before_forward(std::size_t unit) override;
  void after_forward(std::size_t unit, const torch::nn::Module& module,
                     torch::Tensor& out) override;

 private:
  struct Unit;
  ShardedDataParallel(std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm,
                      ZeroOptions options);
  Status build_units();
  Status check_and_broadcast();
  Status shard_units();
  Status gather(Unit& u);          // starts the allgather if not gathered or gathering
  Status wait_gathered(Unit& u);   // waits for it (starting it if needed)
  void free_params(Unit& u);
  void on_grad_ready(std::size_t unit);
  Status launch_reduction(Unit& u);
  Status finish_reduction(Unit& u);
  void pre_backward(std::size_t unit);
  Status fail(Status s);  // records the first failure
  int prefetch_depth() const { return std::max(1, options_.prefetch); }
  template <class Body>
  auto guarded(const char* what, Body&& body) -> decltype(body());
  Status step_impl(double lr);
  Status backward_impl(const torch::Tensor& loss);
  Result<double> clip_grad_norm_impl(double max_norm);
  Status restore_impl(const ckpt::LoadedState& loaded);
  Status visit_parameters_impl(const std::function<void(const torch::Tensor&)>& fn);
  void account();         // updates peak_
  void trace(const char* what, const Unit* u, double issued, double started, double ended);
  void trace_work(const char* what, const Unit& u, const comm::Work& w);

  std::shared_ptr<torch::nn::Module> module_;
  comm::Communicator& comm_;
  ZeroOptions options_;
  torch::ScalarType compute_dtype_;
  comm::DataType comm_dtype_;
  std::vector<std::unique_ptr<Unit>> units_;
  Unit* root_ = nullptr;  // parameters on the root module itself, if any
  std::map<const c10::TensorImpl*, std::size_t> unit_of_;  // parameter -> its unit
  std::vector<std::shared_ptr<torch::autograd::Node>> grad_accumulators_;
  std::vector<std::uintptr_t> post_hook_keys_;
  std::int64_t parameter_count_ = 0;
  ShardedOptimizer optimizer_;
  BufferPool pool_{0};  // stage 3's gathered parameters, stages 2-3's staging
  std::vector<std::size_t> exec_order_;  // units in the order forward ran them
  bool order_known_ = false;
  bool in_backward_ = false;
  std::size_t next_reduction_ = 0;  // index into the reverse execution order
  std::deque<Unit*> reducing_;  // reductions launched and not yet finished, oldest first
  Status failure_;
  ZeroSyncStats sync_;
  StateBytes peak_;
  std::vector<TraceEvent> trace_;
};

}  // namespace kiln::parallel::zero
