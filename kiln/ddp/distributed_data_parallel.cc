#include "kiln/ddp/distributed_data_parallel.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <ranges>

#include "kiln/parallel/after_accumulate.h"
#include <torch/csrc/autograd/variable.h>

#include <fmt/format.h>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/comm/shared_buffer.h"
#include "kiln/ddp/bucket_plan.h"

namespace kiln::ddp {
namespace {

Result<comm::DataType> comm_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return comm::DataType::kFloat32;
    case torch::kDouble: return comm::DataType::kFloat64;
    case torch::kHalf: return comm::DataType::kFloat16;
    case torch::kBFloat16: return comm::DataType::kBFloat16;
    case torch::kInt: return comm::DataType::kInt32;
    case torch::kLong: return comm::DataType::kInt64;
    case torch::kByte:
    case torch::kBool: return comm::DataType::kUInt8;
    default:
      return invalid_argument(fmt::format("DDP: tensors of type {} cannot be communicated",
                                          c10::toString(t)));
  }
}

// Note [Buckets in shared memory]: when every rank is on this host, the
// flat buckets (and their bfloat16 wire copies) whose allreduce would run
// directly (Communicator::direct_allreduce_applies: not under
// KILN_SHM_DIRECT_BYTES, no forced algorithm) lie in ONE comm::SharedBuffer
// (one more for the wires), at 64-byte aligned offsets, so their allreduces
// run directly on the peers' buffers (Note [Direct allreduce on shared
// buffers], kiln/comm/algo/direct.cc): half the memory traffic of the FIFO
// ring (2.4x its bus bandwidth at 64-256 MiB, docs/perf.md, issue 24). One
// buffer means one memfd and one mapping per peer however many buckets, and
// the rebuilds (after the first backward, per auto_bucket_cap trial) reuse
// it while the total size is unchanged, so the peers' cached mappings stay
// valid instead of pinning a freed copy of the gradients each. Bucket
// tensors own a reference to the buffer; gradient views keep the bucket
// tensor, so the memory lives as long as any of them. Elsewhere, or if the
// shared memory cannot be had (a warning), buckets are ordinary tensors.
constexpr std::size_t kSharedAlign = 64;

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

double cpu_seconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

using parallel::AfterAccumulate;

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                                 comm::Communicator& comm, DdpOptions options)
    : module_(std::move(module)), comm_(comm), options_(options) {}

Result<std::unique_ptr<DistributedDataParallel>> DistributedDataParallel::create(
    std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm, DdpOptions options) {
  if (!module) return invalid_argument("DDP: no module");
  std::unique_ptr<DistributedDataParallel> d(new DistributedDataParallel(std::move(module), comm, options));
  for (auto& item : d->module_->named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    d->names_.push_back(item.key());
    d->params_.push_back(item.value());
  }
  KILN_RETURN_IF_ERROR(d->check_and_broadcast());
  KILN_RETURN_IF_ERROR(d->build_buckets());
  return d;
}

DistributedDataParallel::~DistributedDataParallel() {
  for (std::size_t i = 0; i < grad_accumulators_.size(); ++i) {
    grad_accumulators_[i]->del_post_hook(post_hook_keys_[i]);
  }
}

Status DistributedDataParallel::check_and_broadcast() {
  // Every rank must hold the same model: compare a fingerprint of the names,
  // shapes and dtypes before any data moves.
  std::string shape;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    shape += fmt::format("{}:{}:{};", names_[i], fmt::join(params_[i].sizes(), "x"),
                         c10::toString(params_[i].scalar_type()));
  }
  std::int64_t mine[2] = {static_cast<std::int64_t>(fnv1a(shape)), static_cast<std::int64_t>(params_.size())};
  std::vector<std::int64_t> all(2 * comm_.size());
  KILN_RETURN_IF_ERROR(comm_.allgather(mine, all.data(), 2, comm::DataType::kInt64)->wait());
  for (int r = 0; r < comm_.size(); ++r) {
    if (all[2 * r] != all[0] || all[2 * r + 1] != all[1]) {
      return invalid_argument(fmt::format(
          "DDP: rank {}'s model differs from rank 0's ({} vs {} parameters, or different names, "
          "shapes or dtypes): every rank must build the same module",
          r, all[2 * r + 1], all[1]));
    }
  }
  // Start from rank 0's parameters and buffers.
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> tensors = params_;
  for (auto& b : module_->buffers(/*recurse=*/true)) tensors.push_back(b);
  for (auto& t : tensors) {
    if (!t.is_contiguous()) return invalid_argument("DDP: non-contiguous parameter or buffer");
    KILN_ASSIGN_OR_RETURN(comm::DataType dt, comm_dtype(t.scalar_type()));
    KILN_RETURN_IF_ERROR(comm_.broadcast(t.data_ptr(), static_cast<std::size_t>(t.numel()), dt, 0)->wait());
  }
  return Status::ok();
}

Status DistributedDataParallel::build_buckets() {
  // Until a backward has been observed, assume gradients arrive in reverse
  // registration order (roughly what backward does).
  std::vector<std::size_t> order(params_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = params_.size() - 1 - i;
  KILN_RETURN_IF_ERROR(assign_buckets(order, {}));
  for (std::size_t i = 0; i < params_.size(); ++i) {
    // The accumulator is owned by the graph only while one exists: keep it
    // alive, or the hook would go with it.
    grad_accumulators_.push_back(torch::autograd::impl::grad_accumulator(params_[i]));
    post_hook_keys_.push_back(grad_accumulators_.back()->add_post_hook(
        std::make_unique<AfterAccumulate>([this, i] { on_grad_accumulated(i); })));
  }
  ready_.assign(params_.size(), false);
  ready_at_.assign(params_.size(), 0.0);
  return Status::ok();
}

Status DistributedDataParallel::assign_buckets(const std::vector<std::size_t>& order,
                                               const std::vector<bool>& break_before) {
  std::vector<std::size_t> bytes;
  for (std::size_t p : order) bytes.push_back(params_[p].numel() * params_[p].element_size());
  auto plan = plan_buckets(bytes, options_.first_bucket_cap_bytes, options_.bucket_cap_bytes, break_before);
  std::vector<Bucket> buckets;
  bucket_of_.assign(params_.size(), 0);
  slot_of_.assign(params_.size(), 0);
  for (const auto& members : plan) {
    Bucket b;
    std::int64_t total = 0;
    torch::ScalarType dtype = params_[order[members.front()]].scalar_type();
    for (std::size_t m : members) {
      std::size_t p = order[m];
      if (params_[p].scalar_type() != dtype) {
        return invalid_argument(fmt::format("DDP: parameters {} and {} differ in dtype; mixed-dtype "
                                            "models are not supported yet",
                                            names_[order[members.front()]], names_[p]));
      }
      bucket_of_[p] = buckets.size();
      slot_of_[p] = b.params.size();
      b.params.push_back(p);
      b.offsets.push_back(total);
      total += params_[p].numel();
    }
    b.buffer = torch::empty({total}, torch::TensorOptions().dtype(dtype));  // placed below
    buckets.push_back(std::move(b));
  }
  torch::NoGradGuard no_grad;
  // Gradients that lived in the old buckets move into the new ones; the old
  // buckets may share the memory the new ones reuse, so take them out first.
  std::vector<torch::Tensor> old_grads(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& grad = params_[i].grad();
    if (grad.defined()) old_grads[i] = grad.clone();
  }
  for (auto& b : buckets_) b.wire.reset();
  buckets_ = std::move(buckets);
  for (auto& b : buckets_) b.buffer.zero_();
  place_in_shared_memory(/*wires=*/false, shared_grads_);
  if (options_.compress_bf16) place_in_shared_memory(/*wires=*/true, shared_wires_);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!old_grads[i].defined()) continue;
    torch::Tensor view = bucket_view(i);
    view.copy_(old_grads[i]);
    params_[i].mutable_grad() = view;
  }
  log()->debug("DDP: {} parameters in {} buckets", params_.size(), buckets_.size());
  return Status::ok();
}

void DistributedDataParallel::place_in_shared_memory(bool wires,
                                                     std::shared_ptr<comm::SharedBuffer>& held) {
  std::vector<std::size_t> at(buckets_.size(), std::numeric_limits<std::size_t>::max());
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    const torch::Tensor& flat = buckets_[i].buffer;
    if (wires && flat.scalar_type() != torch::kFloat) continue;
    const std::size_t b = static_cast<std::size_t>(flat.numel()) * (wires ? 2 : flat.element_size());
    if (!shared_buckets() || b == 0 || !comm_.direct_allreduce_applies(b)) continue;
    at[i] = bytes;
    bytes += (b + kSharedAlign - 1) / kSharedAlign * kSharedAlign;
  }
  if (bytes == 0) {
    held.reset();
    return;
  }
  if (held && held->size() == bytes) {
    std::memset(held->data(), 0, bytes);  // no old bucket is used any more
  } else {
    held.reset();  // free the old one first: at most one copy of the gradients
    auto buffer = comm::SharedBuffer::allocate(bytes);
    if (!buffer.is_ok()) {
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true)) {
        log()->warn("DDP: gradient buckets in ordinary memory (said once): {}",
                    buffer.status().to_string());
      }
      return;
    }
    held = std::make_shared<comm::SharedBuffer>(std::move(*buffer));
  }
  auto* base = static_cast<char*>(held->data());
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    if (at[i] == std::numeric_limits<std::size_t>::max()) continue;
    Bucket& b = buckets_[i];
    const auto dtype = wires ? torch::kBFloat16 : b.buffer.scalar_type();
    torch::Tensor flat = torch::from_blob(
        base + at[i], {b.buffer.numel()}, [owner = held](void*) { (void)owner; },
        torch::TensorOptions().dtype(dtype));
    (wires ? b.wire : b.buffer) = std::move(flat);
  }
}

// Note [Rebuilding buckets from the observed order] (c10d's rebuild_buckets):
// after the first synchronized backward, the buckets are laid out again in
// the order gradients actually arrived, and closed early where a gap
// follows (Note [Closing a bucket at a gap], bucket_plan.h), so a finished
// gradient never waits in a bucket for one computed much later (e.g. a
// layer's weight for the next layer's bias). A gap is long past
// max(2 ms, 2% of backward); a bucket of first_bucket_cap_bytes or more
// also closes at gaps over 2 ms. Rank 0's observation (order, ready times,
// backward time) is broadcast so every rank builds the same buckets, for
// the bucket cap in use and for each cap bucket_cap = auto tries.
Status DistributedDataParallel::rebuild_from_observed_order() {
  const std::size_t n = params_.size();
  std::vector<std::int64_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<std::int64_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) {
                     return ready_at_[static_cast<std::size_t>(a)] < ready_at_[static_cast<std::size_t>(b)];
                   });
  std::vector<double> times(n + 1);  // ready times in that order, then backward
  for (std::size_t k = 0; k < n; ++k) times[k] = ready_at_[static_cast<std::size_t>(order[k])];
  times[n] = stats_.backward_s;
  KILN_RETURN_IF_ERROR(comm_.broadcast(order.data(), n, comm::DataType::kInt64, 0)->wait());
  KILN_RETURN_IF_ERROR(comm_.broadcast(times.data(), n + 1, comm::DataType::kFloat64, 0)->wait());
  observed_order_.assign(order.begin(), order.end());
  observed_ready_s_.assign(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(n));
  observed_backward_s_ = times[n];
  if (options_.auto_bucket_cap && !options_.auto_caps.empty()) {
    options_.bucket_cap_bytes = options_.auto_caps[0];  // the first candidate's trial step is next
  }
  return assign_buckets(observed_order_, observed_breaks());
}

std::vector<bool> DistributedDataParallel::observed_breaks() const {
  std::vector<std::size_t> bytes;
  for (std::size_t p : observed_order_) bytes.push_back(params_[p].numel() * params_[p].element_size());
  const GapRule rule{std::max(2e-3, 0.02 * observed_backward_s_), 2e-3, options_.first_bucket_cap_bytes};
  return breaks_at_gaps(bytes, observed_ready_s_, options_.first_bucket_cap_bytes,
                        options_.bucket_cap_bytes, rule);
}

void DistributedDataParallel::reset_for_backward() {
  std::fill(ready_.begin(), ready_.end(), false);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.work.reset();
  }
  next_launch_ = 0;
}

torch::Tensor DistributedDataParallel::bucket_view(std::size_t i) {
  Bucket& b = buckets_[bucket_of_[i]];
  // Not an autograd view (narrow().view() would be one): optimizers call
  // detach_() on .grad in zero_grad(), which autograd refuses for views. The
  // deleter holds the bucket buffer, so the memory lives as long as the grad.
  torch::Tensor buffer = b.buffer;
  auto* at = static_cast<char*>(buffer.data_ptr()) + b.offsets[slot_of_[i]] * buffer.element_size();
  return torch::from_blob(at, params_[i].sizes(), [buffer](void*) {}, buffer.options());
}

// Note [Gradients as bucket views]: a parameter's .grad is a view into its
// bucket, so AccumulateGrad adds each backward's gradient straight into the
// buffer the allreduce sends, and the averaged result is what the optimizer
// reads: no copy in, no copy out. A copy happens only when .grad is not the
// view: the first backward, after the buckets are rebuilt, or after
// zero_grad(set_to_none) dropped it (LibTorch 2.x's default; 1.13 zeroes in place).
void DistributedDataParallel::point_grad_at_bucket(std::size_t i) {
  torch::NoGradGuard no_grad;
  torch::Tensor view = bucket_view(i);
  torch::Tensor& grad = params_[i].mutable_grad();
  if (grad.defined() && grad.data_ptr() == view.data_ptr()) return;
  if (grad.defined()) {
    view.copy_(grad);
    ++stats_.grad_copies;
  } else {
    view.zero_();  // an unused parameter whose .grad was dropped
  }
  grad = view;
}

void DistributedDataParallel::on_grad_accumulated(std::size_t i) {
  if (!sync_enabled_ || !in_backward_ || ready_[i]) return;
  point_grad_at_bucket(i);
  ready_[i] = true;
  ready_at_[i] = seconds_since(backward_started_);
  Bucket& b = buckets_[bucket_of_[i]];
  if (--b.pending == 0) launch_ready_buckets();
}

void DistributedDataParallel::launch_ready_buckets() {
  // Note [Why buckets launch in order]: a later bucket that is complete
  // waits for earlier ones, so every rank issues the same sequence.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    if (next_launch_ == 0) first_launch_ = Clock::now();
    Bucket& b = buckets_[next_launch_++];
    if (options_.compress_bf16 && b.buffer.scalar_type() == torch::kFloat) {
      torch::NoGradGuard no_grad;
      if (!b.wire.defined()) b.wire = torch::empty_like(b.buffer, torch::kBFloat16);
      b.wire.copy_(b.buffer);
      b.work = comm_.allreduce(b.wire.data_ptr(), static_cast<std::size_t>(b.wire.numel()),
                               comm::DataType::kBFloat16, comm::ReduceOp::kAvg);
      continue;
    }
    auto dt = comm_dtype(b.buffer.scalar_type());
    b.work = comm_.allreduce(b.buffer.data_ptr(), static_cast<std::size_t>(b.buffer.numel()), *dt,
                             comm::ReduceOp::kAvg);
  }
}

Status DistributedDataParallel::backward(const torch::Tensor& loss) {
  reset_for_backward();
  if (sync_enabled_) stats_.grad_copies = 0;
  auto start = Clock::now();
  backward_started_ = start;
  const double thread_cpu0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
  const double process_cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  in_backward_ = true;
  try {
    loss.backward();
  } catch (const c10::Error& e) {
    in_backward_ = false;
    return internal_error(fmt::format("DDP backward: {}", e.what_without_backtrace()));
  }
  in_backward_ = false;
  if (!sync_enabled_) return Status::ok();
  stats_.backward_s = seconds_since(start);
  stats_.backward_thread_cpu_s = cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - thread_cpu0;
  stats_.backward_other_cpu_s =
      cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process_cpu0 - stats_.backward_thread_cpu_s;
  auto after_backward = Clock::now();

  std::vector<std::string> unused;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (ready_[i]) continue;
    if (!options_.find_unused_parameters) {
      unused.push_back(names_[i]);
      continue;
    }
    // Counts as a zero gradient (plus what no_sync() steps accumulated).
    in_backward_ = true;
    on_grad_accumulated(i);
    in_backward_ = false;
  }
  if (!unused.empty()) {
    return failed_precondition(fmt::format(
        "DDP: no gradient reached {} in this backward; if the model skips parameters on purpose, "
        "set find_unused_parameters",
        fmt::join(unused, ", ")));
  }
  Status first_error;
  stats_.bytes = 0;
  stats_.collectives.clear();
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    auto& b = buckets_[i];
    if (!b.work) return internal_error("DDP: a bucket was never launched");
    Status s = b.work->wait();
    if (!s.is_ok() && first_error.is_ok()) {
      first_error = s.with_context(
          fmt::format("DDP gradient allreduce of bucket {} of {}", i, buckets_.size()));
    }
    stats_.bytes += static_cast<std::size_t>(b.buffer.numel()) * b.buffer.element_size();
    const torch::Tensor& sent = b.wire.defined() && options_.compress_bf16 ? b.wire : b.buffer;
    auto at = [&](Clock::time_point t) {
      return std::chrono::duration<double>(t - backward_started_).count();
    };
    stats_.collectives.push_back({static_cast<std::size_t>(sent.numel()) * sent.element_size(),
                                  b.work->run_seconds(), at(b.work->submitted_at()),
                                  at(b.work->started_at()), at(b.work->finished_at())});
  }
  KILN_RETURN_IF_ERROR(first_error);
  if (options_.compress_bf16) {
    torch::NoGradGuard no_grad;
    for (auto& b : buckets_) {
      if (b.wire.defined()) b.buffer.copy_(b.wire);
    }
  }
  stats_.exposed_comm_s = seconds_since(after_backward);
  stats_.sync_s = seconds_since(first_launch_);
  stats_.buckets = buckets_.size();

  if (!rebuilt_) {
    rebuilt_ = true;
    return rebuild_from_observed_order();
  }
  if (tuning()) return tune_bucket_cap();
  return Status::ok();
}

// Note [Judging a bucket cap]: a trial's cost is backward plus the exposed
// communication after it, on the slowest rank: that is what a cap changes
// in the step (small buckets hide more communication but add launches and
// hook work to backward; large ones leave the last bucket exposed). One trial
// per cap misjudges on a shared machine, where any step may run 30% slow for
// reasons of its own: each cap gets `auto_rounds` trials, taken in turn (so
// interference lasting several steps hits several caps alike), and is judged
// by its best trial, since interference only ever adds time.
Status DistributedDataParallel::tune_bucket_cap() {
  double cost = stats_.backward_s + stats_.exposed_comm_s;
  KILN_RETURN_IF_ERROR(comm_.allreduce(&cost, 1, comm::DataType::kFloat64, comm::ReduceOp::kMax)->wait());
  const std::size_t n = options_.auto_caps.size();
  if (tuning_best_s_.size() != n) tuning_best_s_.assign(n, std::numeric_limits<double>::infinity());
  double& best_of_this_cap = tuning_best_s_[tuning_index_ % n];
  best_of_this_cap = std::min(best_of_this_cap, cost);
  ++tuning_index_;
  std::size_t next;
  if (tuning()) {
    next = options_.auto_caps[tuning_index_ % n];
  } else {
    std::size_t best = static_cast<std::size_t>(
        std::min_element(tuning_best_s_.begin(), tuning_best_s_.end()) - tuning_best_s_.begin());
    next = options_.auto_caps[best];
    auto mib = options_.auto_caps | std::views::transform([](std::size_t c) { return c >> 20; });
    log()->info("DDP bucket_cap=auto chose {} MiB (backward + exposed comm {:.3f} s, best of {} "
                "trials; candidates {} MiB: {:.3f} s)",
                next >> 20, tuning_best_s_[best], std::max(1, options_.auto_rounds),
                fmt::join(mib, "/"), fmt::join(tuning_best_s_, "/"));
  }
  options_.bucket_cap_bytes = next;
  return assign_buckets(observed_order_, observed_breaks());
}

}  // namespace kiln::ddp
