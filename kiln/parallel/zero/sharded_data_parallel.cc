#include "kiln/parallel/zero/sharded_data_parallel.h"

#include <algorithm>
#include <stdexcept>

#include <torch/csrc/autograd/variable.h>

#include <fmt/format.h>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/parallel/zero/sharded_unit.h"

namespace kiln::parallel::zero {
namespace {

double steady_seconds(Clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// An exception from a tensor operation as a Status: the memory cap's
// allocator says "out of memory" (ResourceExhausted, as a device would).
Status status_from_exception(const char* what, const std::exception& e) {
  std::string m = e.what();
  m = m.substr(0, m.find('\n'));
  return m.find("out of memory") != std::string::npos
             ? resource_exhausted(fmt::format("sharded data parallel: {}: {}", what, m))
             : internal_error(fmt::format("sharded data parallel: {}: {}", what, m));
}

}  // namespace

ShardedDataParallel::ShardedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                         comm::Communicator& comm, ZeroOptions options)
    : module_(std::move(module)), comm_(comm), options_(options),
      compute_dtype_(options.precision == Precision::kBf16 ? torch::kBFloat16 : torch::kFloat32),
      comm_dtype_(options.precision == Precision::kBf16 ? comm::DataType::kBFloat16
                                                        : comm::DataType::kFloat32),
      optimizer_(options.optimizer) {}

ShardedDataParallel::~ShardedDataParallel() {
  for (auto& u : units_) {
    for (const auto* m : u->modules) set_unit_hooks(m, nullptr, 0);
    if (u->gather_work) (void)u->gather_work->wait(options_.timeout);
    if (u->reduce_work) (void)u->reduce_work->wait(options_.timeout);
    // A unit whose parameters are not gathered leaves them as empty tensors,
    // not as views of released memory (gather_all() first to keep them); no
    // allocation here, where a memory cap could not be reported.
    if (!u->allocated) {
      torch::NoGradGuard no_grad;
      for (auto& p : u->params) p.set_data(torch::empty({0}, p.options()));
    }
  }
  for (std::size_t i = 0; i < grad_accumulators_.size(); ++i) {
    grad_accumulators_[i]->del_post_hook(post_hook_keys_[i]);
  }
}

// ---- gathering ------------------------------------------------------------

Status ShardedDataParallel::gather(Unit& u) {
  if (u.state != Unit::Params::kFreed) return Status::ok();
  if (!u.allocated) {
    set_storage(u.flat, pool_.allocate(u.padded_bytes), u.flat_bytes);
    u.allocated = true;
    account();
  }
  const std::vector<std::size_t> counts = u.layout->shard_counts();
  u.gather_work = comm_.allgatherv(u.send.data_ptr(), u.flat.data_ptr(), counts, comm_dtype_);
  sync_.bytes += u.flat_bytes;
  u.state = Unit::Params::kGathering;
  return Status::ok();
}

Status ShardedDataParallel::wait_gathered(Unit& u) {
  KILN_RETURN_IF_ERROR(gather(u));
  if (u.state == Unit::Params::kGathering) {
    const auto t0 = Clock::now();
    Status s = u.gather_work->wait(options_.timeout);
    const double waited = seconds_since(t0);
    sync_.gather_wait_s += waited;
    if (in_backward_) sync_.backward_gather_wait_s += waited;
    trace("wait_gather", &u, steady_seconds(t0), steady_seconds(t0), steady_seconds(Clock::now()));
    trace_work("gather", u, *u.gather_work);
    u.gather_work.reset();
    if (!s.is_ok()) return s.with_context(fmt::format("gathering the parameters of unit {}", u.name));
    u.state = Unit::Params::kGathered;
  }
  return Status::ok();
}

void ShardedDataParallel::free_params(Unit& u) {
  if (options_.stage != 3 || u.modules.empty() || !u.allocated) return;
  if (u.state == Unit::Params::kGathering) return;  // a prefetch in flight: keep it
  release_storage(u.flat);
  u.allocated = false;
  u.state = Unit::Params::kFreed;
}

Status ShardedDataParallel::gather_all() {
  for (auto& u : units_) KILN_RETURN_IF_ERROR(gather(*u));
  for (auto& u : units_) KILN_RETURN_IF_ERROR(wait_gathered(*u));
  account();
  return Status::ok();
}

Status ShardedDataParallel::visit_parameters_impl(const std::function<void(const torch::Tensor&)>& fn) {
  KILN_RETURN_IF_ERROR(failure_);
  Unit* held = nullptr;
  for (const auto& p : module_->parameters()) {
    auto it = unit_of_.find(p.unsafeGetTensorImpl());
    if (it != unit_of_.end() && units_[it->second].get() != held) {
      if (held != nullptr) free_params(*held);
      held = units_[it->second].get();
      KILN_RETURN_IF_ERROR(wait_gathered(*held));
    }
    fn(p);
  }
  if (held != nullptr) free_params(*held);
  return Status::ok();
}

// The LibTorch boundary: an exception from a tensor operation (the memory
// cap's allocator says "out of memory") becomes a Status, recorded as the
// wrapper's failure so later calls report it too.
template <class Body>
auto ShardedDataParallel::guarded(const char* what, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    return fail(status_from_exception(what, e));
  }
}

Status ShardedDataParallel::step(double lr) {
  const auto t0 = Clock::now();
  Status s = guarded("optimizer step", [&] { return step_impl(lr); });
  trace("step", nullptr, steady_seconds(t0), steady_seconds(t0), steady_seconds(Clock::now()));
  return s;
}
Status ShardedDataParallel::backward(const torch::Tensor& loss) {
  return guarded("backward", [&] { return backward_impl(loss); });
}
Result<double> ShardedDataParallel::clip_grad_norm(double max_norm) {
  return guarded("clipping gradients", [&] { return clip_grad_norm_impl(max_norm); });
}
Status ShardedDataParallel::restore(const ckpt::LoadedState& loaded) {
  return guarded("restoring a checkpoint", [&] { return restore_impl(loaded); });
}
Status ShardedDataParallel::visit_parameters(const std::function<void(const torch::Tensor&)>& fn) {
  return guarded("reading parameters", [&] { return visit_parameters_impl(fn); });
}

// Note [A failed rank aborts its group]: after a failure here (out of
// memory under the cap, a unit that bypassed run_unit) this rank stops
// issuing the collectives its peers go on issuing, and whatever it issues
// next (the shutdown barrier) would reach them as a "message size mismatch"
// in the middle of their gather. Aborting the communicator at once tells
// them instead that this rank failed, by its number.
Status ShardedDataParallel::fail(Status s) {
  if (failure_.is_ok() && !s.is_ok()) {
    failure_ = s;
    comm_.abort(s);
  }
  return s;
}

void ShardedDataParallel::before_forward(std::size_t unit) {
  Unit& u = *units_[unit];
  if (options_.trace) trace("forward", &u, 0, 0, steady_seconds(Clock::now()));
  Status s = failure_;
  if (s.is_ok() && root_ != nullptr) s = wait_gathered(*root_);
  if (s.is_ok()) {
    if (!order_known_) {
      if (!u.entered) exec_order_.push_back(unit);
      u.entered = true;
    }
    if (!options_.overlap && options_.stage == 3) {
      s = gather_all();  // the baseline: every unit before any computes
    } else {
      s = wait_gathered(u);
      // Prefetch the next units in execution order (Note [Prefetching]).
      if (s.is_ok() && order_known_ && options_.overlap) {
        auto it = std::find(exec_order_.begin(), exec_order_.end(), unit);
        for (int ahead = 0; ahead < prefetch_depth() && it != exec_order_.end() && s.is_ok();
             ++ahead) {
          if (++it != exec_order_.end()) s = gather(*units_[*it]);
        }
      }
    }
  }
  if (!s.is_ok()) throw std::runtime_error(fail(s).to_string());
}

void ShardedDataParallel::after_forward(std::size_t unit, const torch::nn::Module& module,
                                        torch::Tensor& out) {
  Unit& u = *units_[unit];
  if (options_.stage != 3) return;
  // A merged unit runs several modules: it is freed after the last of them.
  const bool last = !u.modules.empty() && u.modules.back() == &module;
  if (torch::GradMode::is_enabled() && out.requires_grad()) {
    out.register_hook([this, unit](const torch::Tensor& g) {
      pre_backward(unit);
      return g;
    });
  }
  // Note [The last unit stays gathered]: backward starts with the unit that
  // forward ran last, so freeing it only to gather it again at once would
  // expose that whole gather (FSDP keeps its root unit gathered the same way).
  // Backward frees it with its gradients; without grad mode it is freed here.
  const bool backward_next = torch::GradMode::is_enabled() && out.requires_grad() && order_known_ &&
                             !exec_order_.empty() && exec_order_.back() == unit;
  if (last && options_.overlap && !backward_next) {
    account();
    free_params(u);
  }
}

// Note [Prefetching]: forward gathers units k+1..k+d (in the recorded
// execution order; d = options_.prefetch) while unit k computes; backward
// gathers units k-1..k-d while unit k's backward runs. d gathers ahead bound
// the gathered parameters at d + 1 units. The engine runs collectives in
// issue order, so a gather issued ahead also queues ahead of the reductions
// launched after it: the unit backward needs next never waits behind them.
void ShardedDataParallel::pre_backward(std::size_t unit) {
  Unit& u = *units_[unit];
  if (options_.trace) trace("pre_backward", &u, 0, 0, steady_seconds(Clock::now()));
  Status s = failure_;
  if (s.is_ok()) s = wait_gathered(u);
  if (s.is_ok() && options_.overlap) {
    auto it = std::find(exec_order_.begin(), exec_order_.end(), unit);
    for (int ahead = 0; ahead < prefetch_depth() && it != exec_order_.end() &&
                        it != exec_order_.begin() && s.is_ok();
         ++ahead) {
      Unit& prev = *units_[*--it];
      // Only units whose backward is still to come (their gradients pending).
      if (!prev.complete) s = gather(prev);
    }
  }
  account();
  if (!s.is_ok()) throw std::runtime_error(fail(s).to_string());
}

// ---- reducing -------------------------------------------------------------

void ShardedDataParallel::on_grad_ready(std::size_t unit) {
  if (!in_backward_) return;
  Unit& u = *units_[unit];
  if (u.pending == 0) return;
  // The gradient autograd just stored counts until it is copied and dropped.
  --u.pending;
  std::size_t alive = 0;
  for (auto& p : u.params) {
    if (p.grad().defined()) alive += p.grad().nbytes();
  }
  u.grad_bytes_alive = alive;
  account();
  if (u.pending > 0) return;
  u.complete = true;
  if (options_.trace) trace("grads", &u, 0, 0, steady_seconds(Clock::now()));
  if (!options_.overlap) return;
  // Note [Why reductions launch in order]: every rank must issue the same
  // collectives in the same order. Reductions launch in reverse execution
  // order; a unit that completes early waits for the ones before it.
  while (next_reduction_ < exec_order_.size()) {
    Unit& next = *units_[exec_order_[exec_order_.size() - 1 - next_reduction_]];
    if (!next.complete) break;
    Status s = launch_reduction(next);
    ++next_reduction_;
    if (!s.is_ok()) {
      (void)fail(s);
      return;
    }
  }
}

Status ShardedDataParallel::launch_reduction(Unit& u) {
  torch::NoGradGuard no_grad;
  const std::int64_t block = u.layout->block();
  // The parameters are not needed once their gradients are complete; their
  // block becomes the staging (Note [One block per unit in flight]).
  free_params(u);
  if (options_.stage == 1 && !u.share_fresh) {
    // The reduce-scatter writes this rank's block of the staging in place:
    // keep the share earlier backward calls left there, to add back.
    u.partial = u.grad_share.clone();
  }
  if (options_.stage != 1) {
    u.staging = pool_.empty(block * comm_.size(), compute_dtype_);
    // Only the padding at the end of each rank's block is not written below.
    for (int r = 0; r < comm_.size(); ++r) {
      const std::int64_t used = u.layout->shard(r).count;
      u.staging.narrow(0, r * block + used, block - used).zero_();
    }
  }
  for (std::size_t i = 0; i < u.params.size(); ++i) {
    torch::Tensor& g = u.params[i].mutable_grad();
    for (const auto& seg : u.layout->padded_segments(i)) {
      torch::Tensor dst = u.staging.narrow(0, seg.dst, seg.len);
      if (!g.defined()) {  // unused this backward: contributes zero
        dst.zero_();
        continue;
      }
      dst.copy_(g.reshape({-1}).narrow(0, seg.src, seg.len));
    }
    g = torch::Tensor();
  }
  u.grad_bytes_alive = 0;
  account();
  // Stage 1: in place, into this rank's block of the staging (grad_share is
  // a view of it); stages 2, 3: into the share, or beside it when the share
  // already holds earlier backward calls' part.
  void* out;
  if (options_.stage == 1 || u.share_fresh) {
    out = u.grad_share.data_ptr();
  } else {
    u.partial = torch::empty({block}, compute_dtype_);
    out = u.partial.data_ptr();
  }
  u.reduce_work = comm_.reduce_scatter(u.staging.data_ptr(), out, static_cast<std::size_t>(block),
                                       comm_dtype_, comm::ReduceOp::kAvg);
  sync_.bytes += u.staging.nbytes();
  account();
  // Note [Bounded reductions in flight]: each reduction holds its unit's
  // whole gradient as staging until it is done. Finishing the oldest beyond
  // options_.reductions_in_flight (in issue order, which is the engine's
  // order) bounds that at a few units instead of the whole model.
  reducing_.push_back(&u);
  const auto limit = static_cast<std::size_t>(std::max(1, options_.reductions_in_flight));
  while (!reducing_.empty() && (reducing_.size() > limit || reducing_.front()->reduce_work->test())) {
    Unit* oldest = reducing_.front();
    reducing_.pop_front();
    KILN_RETURN_IF_ERROR(finish_reduction(*oldest));
  }
  return Status::ok();
}

// Note [One block per unit in flight]: every pooled block is one unit's
// padded flat (world × block() elements), so a unit's gathered parameters
// and its reduction staging take the same block, one after the other: in
// backward, a unit's parameters are freed the moment its gradients are
// complete and the staging its reduction sends from takes their block. Stage
// 3 needs at most the unit computing, the one prefetched and the reductions
// in flight (their count bounded before the next unit gathers); stage 2 the
// reductions in flight and the one being filled. Without overlap, stage 3
// gathers every unit at once (the baseline of kiln bench fsdp keeps them all).
std::size_t ShardedDataParallel::pooled_blocks() const {
  const auto reductions = static_cast<std::size_t>(std::max(1, options_.reductions_in_flight));
  if (options_.stage == 3) {
    return options_.overlap ? 1 + static_cast<std::size_t>(prefetch_depth()) + reductions
                            : units_.size() + 1;
  }
  return options_.stage == 2 ? reductions + 1 : 0;
}

std::size_t ShardedDataParallel::in_flight_bound() const {
  std::size_t largest = 0;
  std::int64_t largest_share = 0;
  for (const auto& u : units_) {
    largest_share = std::max(largest_share, u->layout->block());
    if (options_.stage == 3 && u->modules.empty()) continue;  // the root stays gathered
    largest = std::max(largest, u->padded_bytes);
  }
  // The optimizer's two fp32 scratch shares (Note [Optimizer scratch]).
  const std::size_t scratch = 2 * sizeof(float) * static_cast<std::size_t>(largest_share);
  // The pooled blocks (one more: the newest reduction is counted before the
  // oldest finishes), and autograd's gradients of the unit whose backward
  // just ran.
  if (options_.stage == 1) return 2 * largest + scratch;
  return (pooled_blocks() + 1 + 1) * largest + scratch;
}

Status ShardedDataParallel::finish_reduction(Unit& u) {
  if (!u.reduce_work) return Status::ok();
  const auto t0 = Clock::now();
  Status s = u.reduce_work->wait(options_.timeout);
  // Every wait counts, wherever it happens: after backward, and inside it
  // when more reductions than options_.reductions_in_flight are running
  // (the non-overlapped baseline launches them all after backward).
  const double waited = seconds_since(t0);
  sync_.exposed_comm_s += waited;
  if (in_backward_) sync_.backward_reduce_wait_s += waited;
  trace("wait_reduce", &u, steady_seconds(t0), steady_seconds(t0), steady_seconds(Clock::now()));
  trace_work("reduce", u, *u.reduce_work);
  u.reduce_work.reset();
  if (!s.is_ok()) return s.with_context(fmt::format("reducing the gradients of unit {}", u.name));
  if (u.partial.defined()) {
    u.grad_share.add_(u.partial);
    u.partial = torch::Tensor();
  }
  if (options_.stage != 1) u.staging = torch::Tensor();
  u.share_fresh = false;
  account();
  return Status::ok();
}

Status ShardedDataParallel::backward_impl(const torch::Tensor& loss) {
  KILN_RETURN_IF_ERROR(failure_);
  for (auto& u : units_) {
    u->pending = u->params.size();
    u->complete = false;
  }
  if (!order_known_) {
    for (std::size_t i = 0; i < units_.size(); ++i) {
      if (units_[i]->modules.empty()) {
        exec_order_.insert(exec_order_.begin(), i);  // the root: gathered before any unit runs
      } else if (!units_[i]->entered && options_.stage < 3) {
        exec_order_.push_back(i);  // unused, or not run through run_unit(): harmless below stage 3
      } else if (!units_[i]->entered) {
        return fail(failed_precondition(fmt::format(
            "sharded data parallel: unit '{}' did not run through parallel::run_unit() in the "
            "forward pass; every child module with parameters must (kiln/parallel/unit_hooks.h)",
            units_[i]->name)));
      }
    }
    order_known_ = true;
  }
  next_reduction_ = 0;
  in_backward_ = true;
  const auto t0 = Clock::now();
  try {
    loss.backward();
  } catch (const std::exception& e) {
    in_backward_ = false;
    if (!failure_.is_ok()) return failure_;
    return fail(status_from_exception("backward", e));
  }
  in_backward_ = false;
  sync_.backward_s = seconds_since(t0);
  trace("backward", nullptr, steady_seconds(t0), steady_seconds(t0), steady_seconds(Clock::now()));
  KILN_RETURN_IF_ERROR(failure_);
  // Units whose gradients backward did not (all) produce: unused this step.
  for (auto& u : units_) u->complete = true;
  while (next_reduction_ < exec_order_.size()) {
    Unit& next = *units_[exec_order_[exec_order_.size() - 1 - next_reduction_]];
    KILN_RETURN_IF_ERROR(fail(launch_reduction(next)));
    ++next_reduction_;
  }
  reducing_.clear();
  for (auto& u : units_) KILN_RETURN_IF_ERROR(fail(finish_reduction(*u)));
  for (auto& u : units_) free_params(*u);
  account();
  return Status::ok();
}

// ---- the optimizer step ----------------------------------------------------

Result<double> ShardedDataParallel::clip_grad_norm_impl(double max_norm) {
  KILN_RETURN_IF_ERROR(failure_);
  torch::NoGradGuard no_grad;
  double sum_sq = 0;
  for (auto& u : units_) {
    torch::Tensor g = u->grad_share.narrow(0, 0, u->mine.count).to(torch::kFloat64);
    sum_sq += g.pow(2).sum().item<double>();
  }
  KILN_RETURN_IF_ERROR(fail(comm_.allreduce(&sum_sq, 1, comm::DataType::kFloat64, comm::ReduceOp::kSum)
                                ->wait(options_.timeout)));
  const double norm = std::sqrt(sum_sq);
  // torch::nn::utils::clip_grad_norm_'s rule.
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    for (auto& u : units_) u->grad_share.narrow(0, 0, u->mine.count).mul_(coef);
  }
  return norm;
}

Status ShardedDataParallel::step_impl(double lr) {
  KILN_RETURN_IF_ERROR(failure_);
  torch::NoGradGuard no_grad;
  optimizer_.begin_step(lr);
  sync_ = ZeroSyncStats{};
  // Unit by unit in execution order: the step on this rank's share, then the
  // new share goes to the others. Stages 1 and 2 gather every unit now (the
  // forward waits for each in turn); stage 3 prefetches only the first
  // options_.prefetch sharded units to run, which the steps of the others
  // overlap.
  int prefetched = 0;
  for (std::size_t k = 0; k < units_.size(); ++k) {
    Unit& u = *units_[order_known_ ? exec_order_[k] : k];
    // In flight while a prefetch was running: finish it before the share
    // it sends from changes.
    if (u.gather_work) KILN_RETURN_IF_ERROR(fail(wait_gathered(u)));
    optimizer_.step(u.opt_index, u.master, u.grad_share.narrow(0, 0, u.mine.count));
    u.grad_share.zero_();
    u.share_fresh = true;
    const bool sharded = options_.stage == 3 && !u.modules.empty();
    if (sharded) {
      if (u.send.data_ptr() != u.master.data_ptr()) u.send.copy_(u.master);
    } else if (!u.master_is_view) {
      u.flat.narrow(0, u.mine.offset, u.mine.count).copy_(u.master);
    }
    u.state = Unit::Params::kFreed;  // stale until gathered again
    if (!sharded || (options_.overlap && prefetched++ < prefetch_depth())) {
      KILN_RETURN_IF_ERROR(fail(gather(u)));
    }
  }
  account();
  return Status::ok();
}

void ShardedDataParallel::trace(const char* what, const Unit* u, double issued, double started,
                                double ended) {
  if (options_.trace) trace_.push_back({what, u != nullptr ? u->name : "", issued, started, ended});
}

void ShardedDataParallel::trace_work(const char* what, const Unit& u, const comm::Work& w) {
  if (!w.test()) return;
  trace(what, &u, steady_seconds(w.submitted_at()), steady_seconds(w.started_at()),
        steady_seconds(w.finished_at()));
}

void ShardedDataParallel::account() {
  StateBytes now = state_bytes();
  if (now.total() > peak_.total()) peak_ = now;
}

}  // namespace kiln::parallel::zero
