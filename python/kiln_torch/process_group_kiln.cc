#include "python/kiln_torch/process_group_kiln.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstdlib>
#include <random>

#include "kiln/base/auth/job_token.h"
#include "kiln/base/knobs.h"
#include "python/kiln_torch/c10d_store.h"
#include "python/kiln_torch/kiln_work.h"

namespace kiln::torch_backend {
namespace {

using c10d::OpType;

// Off by default: on a 1 Gbit/s link its DDP step measured no faster than
// the ring's (docs/perf.md, issue 21, session 5).
const Knob<bool> kDuplex{"KILN_TORCH_DUPLEX", false,
                         "kiln_torch: a two-rank group over TCP sends large allreduces as one "
                         "stream per direction, on a second connection"};


comm::DataType kiln_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), "kiln backend: ", op, ": tensors must be on the CPU, not ",
              t.device());
  TORCH_CHECK(t.layout() == at::kStrided, "kiln backend: ", op, ": sparse tensors are not supported");
  switch (t.scalar_type()) {
    case at::kFloat: return comm::DataType::kFloat32;
    case at::kDouble: return comm::DataType::kFloat64;
    case at::kHalf: return comm::DataType::kFloat16;
    case at::kBFloat16: return comm::DataType::kBFloat16;
    case at::kInt: return comm::DataType::kInt32;
    case at::kLong: return comm::DataType::kInt64;
    case at::kByte: return comm::DataType::kUInt8;
    default: break;
  }
  TORCH_CHECK(false, "kiln backend: ", op, ": dtype ", t.scalar_type(),
              " is not supported (float32, float64, float16, bfloat16, int32, int64, uint8)");
  return comm::DataType::kFloat32;  // not reached
}

comm::ReduceOp kiln_op(const c10d::ReduceOp& op, const char* name) {
  switch (op.op_) {
    case c10d::ReduceOp::SUM: return comm::ReduceOp::kSum;
    case c10d::ReduceOp::AVG: return comm::ReduceOp::kAvg;
    case c10d::ReduceOp::PRODUCT: return comm::ReduceOp::kProd;
    case c10d::ReduceOp::MIN: return comm::ReduceOp::kMin;
    case c10d::ReduceOp::MAX: return comm::ReduceOp::kMax;
    default: break;
  }
  TORCH_CHECK(false, "kiln backend: ", name, ": reduce op #", static_cast<int>(op.op_),
              " is not supported (SUM, AVG, PRODUCT, MIN, MAX)");
  return comm::ReduceOp::kSum;  // not reached
}

const at::Tensor& one(const std::vector<at::Tensor>& tensors, const char* op) {
  TORCH_CHECK(tensors.size() == 1, "kiln backend: ", op,
              " takes one tensor per process (got ", tensors.size(), ")");
  return tensors[0];
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "kiln backend: ", op, ": mixed dtypes ",
              a.scalar_type(), " and ", b.scalar_type());
}

// Copies `staged` back into `t` when they differ (t was not contiguous).
std::function<void()> copy_back(const at::Tensor& t, const at::Tensor& staged) {
  if (staged.is_same(t)) return nullptr;
  return [t, staged]() mutable { t.copy_(staged); };
}

// Writes `flat`'s consecutive pieces into `tensors`.
void scatter_into(const at::Tensor& flat, std::vector<at::Tensor>& tensors) {
  int64_t offset = 0;
  for (auto& t : tensors) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

at::Tensor flatten_all(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(t.reshape({-1}));
  return at::cat(flat);
}

char* bytes_at(const at::Tensor& t, int64_t elements) {
  return static_cast<char*>(t.data_ptr()) + elements * static_cast<int64_t>(t.element_size());
}

// Note [A random tag per group]: Kiln names its shared-memory segments after
// the tag, this rank and its pid. PyTorch gives every group its own store
// prefix but no name, and non-members never build a group, so ranks could
// not count groups alike: rank 0 draws the tag and shares it.
std::string agree_tag(store::Store& store, int rank, Deadline deadline) {
  if (rank == 0) {
    std::random_device rd;
    std::string tag = fmt::format("torch-{:08x}{:08x}", rd(), rd());
    Status s = store.set("kiln/tag", tag);
    TORCH_CHECK(s.is_ok(), "kiln backend: rank 0 publishing the group's tag: ", s.to_string());
    return tag;
  }
  auto tag = store.get("kiln/tag", deadline);
  TORCH_CHECK(tag.is_ok(), "kiln backend: rank ", rank, " waiting for rank 0 to form the group: ",
              tag.status().to_string());
  return *tag;
}

}  // namespace

ProcessGroupKiln::ProcessGroupKiln(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                   int size, std::chrono::milliseconds timeout)
    : c10d::ProcessGroup(rank, size) {
  auto kiln_store = std::make_shared<C10dStore>(store);
  kiln_store->set_default_timeout(timeout);
  comm::CommOptions options;
  options.timeout = timeout;
  options.connect.tag = agree_tag(*kiln_store, rank, Deadline::after(timeout));
  const char* master = std::getenv("MASTER_ADDR");
  if (master != nullptr && *master != '\0') options.connect.route_hint = master;
  // Under `kiln launch` / `kiln run` the job token (docs/security.md) guards
  // the tcp transport between ranks; PyTorch's own store has no such guard.
  auto token = auth::token_from_env();
  TORCH_CHECK(token.is_ok(), "kiln backend: rank ", rank, ": ", token.status().to_string());
  options.connect.token = std::move(*token);
  auto formed = comm::Communicator::create(kiln_store, rank, size, options);
  TORCH_CHECK(formed.is_ok(), "kiln backend: rank ", rank, " of ", size,
              " forming the group: ", formed.status().to_string());
  comm_ = std::move(*formed);
  pair_streams();
  init();
}

// Note [A failure fails both communicators]: with a second communicator, an
// operation that failed on one (a mismatch, a timeout) leaves the other
// healthy, and calls that use only that one would go on, and hang on a peer
// that saw the failure. So the first failure of any call aborts both, as one
// communicator aborts itself; the destructor detaches them first (pending
// work fails while they are torn down).
struct ProcessGroupKiln::FailAll {
  std::mutex mu;
  std::vector<comm::Communicator*> comms;  // guarded by mu
  void operator()(const Status& why) {
    std::lock_guard lock(mu);
    for (auto* c : comms) c->abort(why);
  }
};

void ProcessGroupKiln::pair_streams() {
  if (size_ != 2) return;
  // Every rank must agree, whatever its environment says: the smallest vote wins.
  std::int32_t want = comm_->topology().any_remote && kDuplex.get() ? 1 : 0;
  Status agreed = comm_->allreduce(&want, 1, comm::DataType::kInt32, comm::ReduceOp::kMin)->wait();
  TORCH_CHECK(agreed.is_ok(), "kiln backend: rank ", rank_,
              " agreeing on a second stream: ", agreed.to_string());
  if (want == 0) return;
  auto second = comm_->split(0, rank_);
  TORCH_CHECK(second.is_ok(), "kiln backend: rank ", rank_,
              " forming the group's second connection: ", second.status().to_string());
  reverse_ = std::move(*second);
  // comm_ carries rank 0's bytes to rank 1, reverse_ rank 1's to rank 0.
  duplex_ = rank_ == 0 ? std::make_unique<Duplex>(comm_.get(), reverse_.get(), rank_)
                       : std::make_unique<Duplex>(reverse_.get(), comm_.get(), rank_);
  fail_all_ = std::make_shared<FailAll>();
  fail_all_->comms = {comm_.get(), reverse_.get()};
}

ProcessGroupKiln::~ProcessGroupKiln() {
  if (fail_all_) {
    std::lock_guard lock(fail_all_->mu);
    fail_all_->comms.clear();
  }
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::submit(
    OpType type, const char* name, std::vector<at::Tensor> outputs, std::vector<at::Tensor> keep,
    const std::function<std::vector<comm::WorkPtr>()>& issue, std::function<void()> finish) {
  std::vector<comm::WorkPtr> ops;
  {
    std::lock_guard lock(issue_mu_);
    ops = issue();
  }
  comm::WorkPtr last = ops.empty() ? nullptr : ops.back();
  auto work = c10::make_intrusive<KilnWork>(rank_, type, name, std::move(outputs), std::move(keep),
                                            last, std::move(finish));
  if (!last) {
    work->complete(Status::ok());
    return work;
  }
  // Done when every operation is: they may run on two communicators' engines,
  // so the last issued need not be the last to finish. Registered outside
  // issue_mu_: a done operation calls back at once, and a future's callbacks
  // may issue more (a comm hook).
  auto left = std::make_shared<std::atomic<std::size_t>>(ops.size());
  auto all = std::make_shared<std::vector<comm::WorkPtr>>(std::move(ops));
  for (const auto& op : *all) {
    op->on_done([work, left, all, fail_all = fail_all_](const Status&) {
      if (left->fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      // The first failure in issue order is the cause; later operations fail after it.
      for (const auto& o : *all) {
        Status s = o->status();
        if (s.is_ok()) continue;
        if (fail_all) (*fail_all)(s);
        return work->complete(s);
      }
      work->complete(Status::ok());
    });
  }
  return work;
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::broadcast(std::vector<at::Tensor>& tensors,
                                                           const c10d::BroadcastOptions& opts) {
  const at::Tensor& t = one(tensors, "broadcast");
  auto dt = kiln_dtype(t, "broadcast");
  TORCH_CHECK(opts.rootTensor == 0, "kiln backend: broadcast: rootTensor must be 0");
  at::Tensor buf = t.contiguous();
  int root = static_cast<int>(opts.rootRank);
  return submit(
      OpType::BROADCAST, "broadcast", {t}, {t, buf},
      [&] { return std::vector{comm_->broadcast(buf.data_ptr(), buf.numel(), dt, root)}; },
      copy_back(t, buf));
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::allreduce(std::vector<at::Tensor>& tensors,
                                                           const c10d::AllreduceOptions& opts) {
  const at::Tensor& t = one(tensors, "allreduce");
  auto dt = kiln_dtype(t, "allreduce");
  auto op = kiln_op(opts.reduceOp, "allreduce");
  at::Tensor buf = t.contiguous();
  if (duplex_ && Duplex::suits(buf.nbytes(), dt, op)) {
    at::Tensor scratch = duplex_->scratch(buf.nbytes());
    return submit(
        OpType::ALLREDUCE, "allreduce", {t}, {t, buf, scratch},
        [&] { return duplex_->allreduce(buf.data_ptr(), scratch.data_ptr(), buf.numel(), dt, op); },
        copy_back(t, buf));
  }
  return submit(
      OpType::ALLREDUCE, "allreduce", {t}, {t, buf},
      [&] { return std::vector{comm_->allreduce(buf.data_ptr(), buf.numel(), dt, op)}; },
      copy_back(t, buf));
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::allreduce_coalesced(
    std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) {
  TORCH_CHECK(!tensors.empty(), "kiln backend: allreduce_coalesced: no tensors");
  auto dt = kiln_dtype(tensors[0], "allreduce_coalesced");
  for (const auto& t : tensors) {
    kiln_dtype(t, "allreduce_coalesced");
    check_same(tensors[0], t, "allreduce_coalesced");
  }
  auto op = kiln_op(opts.reduceOp, "allreduce_coalesced");
  at::Tensor flat = flatten_all(tensors);
  std::vector<at::Tensor> keep = tensors;
  keep.push_back(flat);
  return submit(
      OpType::ALLREDUCE_COALESCED, "allreduce_coalesced", tensors, std::move(keep),
      [&] { return std::vector{comm_->allreduce(flat.data_ptr(), flat.numel(), dt, op)}; },
      [flat, tensors]() mutable { scatter_into(flat, tensors); });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::reduce(std::vector<at::Tensor>& tensors,
                                                        const c10d::ReduceOptions& opts) {
  const at::Tensor& t = one(tensors, "reduce");
  auto dt = kiln_dtype(t, "reduce");
  auto op = kiln_op(opts.reduceOp, "reduce");
  TORCH_CHECK(opts.rootTensor == 0, "kiln backend: reduce: rootTensor must be 0");
  int root = static_cast<int>(opts.rootRank);
  at::Tensor buf = t.contiguous();
  void* recv = rank_ == root ? buf.data_ptr() : nullptr;
  return submit(
      OpType::REDUCE, "reduce", {t}, {t, buf},
      [&] { return std::vector{comm_->reduce(buf.data_ptr(), recv, buf.numel(), dt, op, root)}; },
      rank_ == root ? copy_back(t, buf) : nullptr);
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::allgather(
    std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& /*opts*/) {
  const at::Tensor& in = one(inputs, "allgather");
  auto dt = kiln_dtype(in, "allgather");
  TORCH_CHECK(outputs.size() == 1 && outputs[0].size() == static_cast<size_t>(size_),
              "kiln backend: allgather: expected one list of ", size_, " output tensors");
  for (const auto& o : outputs[0]) {
    check_same(in, o, "allgather");
    TORCH_CHECK(o.numel() == in.numel(), "kiln backend: allgather: output of ", o.numel(),
                " elements for an input of ", in.numel());
  }
  at::Tensor src = in.contiguous();
  at::Tensor flat = at::empty({size_ * in.numel()}, in.options());
  std::vector<at::Tensor> outs = outputs[0];
  std::vector<at::Tensor> keep = outs;
  keep.insert(keep.end(), {src, flat});
  return submit(
      OpType::ALLGATHER, "allgather", outs, std::move(keep),
      [&] { return std::vector{comm_->allgather(src.data_ptr(), flat.data_ptr(), src.numel(), dt)}; },
      [flat, outs]() mutable { scatter_into(flat, outs); });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::_allgather_base(
    at::Tensor& output, at::Tensor& input, const c10d::AllgatherOptions& /*opts*/) {
  auto dt = kiln_dtype(input, "_allgather_base");
  check_same(input, output, "_allgather_base");
  TORCH_CHECK(output.numel() == size_ * input.numel(), "kiln backend: _allgather_base: output of ",
              output.numel(), " elements, expected ", size_, " x ", input.numel());
  at::Tensor src = input.contiguous();
  at::Tensor dst = output.contiguous();
  return submit(
      OpType::_ALLGATHER_BASE, "_allgather_base", {output}, {output, src, dst},
      [&] { return std::vector{comm_->allgather(src.data_ptr(), dst.data_ptr(), src.numel(), dt)}; },
      copy_back(output, dst));
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::reduce_scatter(
    std::vector<at::Tensor>& outputs, std::vector<std::vector<at::Tensor>>& inputs,
    const c10d::ReduceScatterOptions& opts) {
  const at::Tensor& out = one(outputs, "reduce_scatter");
  auto dt = kiln_dtype(out, "reduce_scatter");
  auto op = kiln_op(opts.reduceOp, "reduce_scatter");
  TORCH_CHECK(inputs.size() == 1 && inputs[0].size() == static_cast<size_t>(size_),
              "kiln backend: reduce_scatter: expected one list of ", size_, " input tensors");
  for (const auto& i : inputs[0]) {
    check_same(out, i, "reduce_scatter");
    TORCH_CHECK(i.numel() == out.numel(), "kiln backend: reduce_scatter: input of ", i.numel(),
                " elements for an output of ", out.numel());
  }
  at::Tensor flat = flatten_all(inputs[0]);
  at::Tensor dst = out.contiguous();
  return submit(
      OpType::REDUCE_SCATTER, "reduce_scatter", {out}, {out, flat, dst},
      [&] {
        return std::vector{
            comm_->reduce_scatter(flat.data_ptr(), dst.data_ptr(), dst.numel(), dt, op)};
      },
      copy_back(out, dst));
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::_reduce_scatter_base(
    at::Tensor& output, at::Tensor& input, const c10d::ReduceScatterOptions& opts) {
  auto dt = kiln_dtype(input, "_reduce_scatter_base");
  check_same(input, output, "_reduce_scatter_base");
  auto op = kiln_op(opts.reduceOp, "_reduce_scatter_base");
  TORCH_CHECK(input.numel() == size_ * output.numel(),
              "kiln backend: _reduce_scatter_base: input of ", input.numel(),
              " elements, expected ", size_, " x ", output.numel());
  at::Tensor src = input.contiguous();
  at::Tensor dst = output.contiguous();
  return submit(
      OpType::_REDUCE_SCATTER_BASE, "_reduce_scatter_base", {output}, {output, src, dst},
      [&] {
        return std::vector{
            comm_->reduce_scatter(src.data_ptr(), dst.data_ptr(), dst.numel(), dt, op)};
      },
      copy_back(output, dst));
}

std::vector<comm::WorkPtr> ProcessGroupKiln::alltoallv(const at::Tensor& send,
                                                       const at::Tensor& recv,
                                                       const std::vector<int64_t>& send_counts,
                                                       const std::vector<int64_t>& recv_counts) {
  auto dt = kiln_dtype(send, "alltoall");
  std::vector<int64_t> send_offsets(size_, 0), recv_offsets(size_, 0);
  for (int r = 1; r < size_; ++r) {
    send_offsets[r] = send_offsets[r - 1] + send_counts[r - 1];
    recv_offsets[r] = recv_offsets[r - 1] + recv_counts[r - 1];
  }
  // Step k pairs every rank with the ranks k above and k below it; step 0
  // is the block a rank keeps (a copy on the engine, in order).
  std::vector<comm::WorkPtr> ops;
  for (int k = 0; k < size_; ++k) {
    int to = (rank_ + k) % size_, from = (rank_ - k + size_) % size_;
    ops.push_back(comm_->sendrecv(bytes_at(send, send_offsets[to]),
                                  static_cast<std::size_t>(send_counts[to]), to,
                                  bytes_at(recv, recv_offsets[from]),
                                  static_cast<std::size_t>(recv_counts[from]), from, dt));
  }
  return ops;
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::alltoall_base(
    at::Tensor& output, at::Tensor& input, std::vector<int64_t>& output_split_sizes,
    std::vector<int64_t>& input_split_sizes, const c10d::AllToAllOptions& /*opts*/) {
  auto dt = kiln_dtype(input, "alltoall_base");
  check_same(input, output, "alltoall_base");
  at::Tensor src = input.contiguous();
  at::Tensor dst = output.contiguous();
  if (output_split_sizes.empty() && input_split_sizes.empty()) {
    TORCH_CHECK(input.numel() == output.numel() && input.numel() % size_ == 0,
                "kiln backend: alltoall_base: ", input.numel(), " input and ", output.numel(),
                " output elements do not split evenly across ", size_, " ranks");
    std::size_t per_rank = static_cast<std::size_t>(input.numel() / size_);
    return submit(
        OpType::ALLTOALL_BASE, "alltoall_base", {output}, {output, src, dst},
        [&] { return std::vector{comm_->alltoall(src.data_ptr(), dst.data_ptr(), per_rank, dt)}; },
        copy_back(output, dst));
  }
  // Splits count rows of dimension 0; an empty list means even rows.
  auto element_counts = [&](const at::Tensor& t, const std::vector<int64_t>& splits,
                            const char* which) {
    TORCH_CHECK(t.dim() > 0, "kiln backend: alltoall_base: a split ", which, " needs dim >= 1");
    int64_t rows = t.size(0), row = rows == 0 ? 0 : t.numel() / rows;
    std::vector<int64_t> counts(size_);
    if (splits.empty()) {
      TORCH_CHECK(rows % size_ == 0, "kiln backend: alltoall_base: ", rows, " ", which,
                  " rows do not split evenly across ", size_, " ranks");
      for (auto& c : counts) c = rows / size_ * row;
      return counts;
    }
    TORCH_CHECK(splits.size() == static_cast<size_t>(size_), "kiln backend: alltoall_base: ",
                splits.size(), " ", which, " split sizes for ", size_, " ranks");
    int64_t sum = 0;
    for (int r = 0; r < size_; ++r) {
      TORCH_CHECK(splits[r] >= 0, "kiln backend: alltoall_base: negative split size");
      counts[r] = splits[r] * row;
      sum += splits[r];
    }
    TORCH_CHECK(sum == rows, "kiln backend: alltoall_base: ", which, " split sizes sum to ", sum,
                ", the tensor has ", rows, " rows");
    return counts;
  };
  auto send_counts = element_counts(src, input_split_sizes, "input");
  auto recv_counts = element_counts(dst, output_split_sizes, "output");
  return submit(
      OpType::ALLTOALL_BASE, "alltoall_base", {output}, {output, src, dst},
      [&] { return alltoallv(src, dst, send_counts, recv_counts); }, copy_back(output, dst));
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::alltoall(std::vector<at::Tensor>& outputs,
                                                          std::vector<at::Tensor>& inputs,
                                                          const c10d::AllToAllOptions& /*opts*/) {
  TORCH_CHECK(inputs.size() == static_cast<size_t>(size_) &&
                  outputs.size() == static_cast<size_t>(size_),
              "kiln backend: alltoall: expected ", size_, " input and ", size_, " output tensors");
  std::vector<int64_t> send_counts, recv_counts;
  for (int r = 0; r < size_; ++r) {
    kiln_dtype(inputs[r], "alltoall");
    kiln_dtype(outputs[r], "alltoall");
    check_same(inputs[0], inputs[r], "alltoall");
    check_same(inputs[0], outputs[r], "alltoall");
    send_counts.push_back(inputs[r].numel());
    recv_counts.push_back(outputs[r].numel());
  }
  at::Tensor src = flatten_all(inputs);
  at::Tensor dst = flatten_all(outputs);  // staging; overwritten
  std::vector<at::Tensor> keep = inputs;
  keep.insert(keep.end(), outputs.begin(), outputs.end());
  keep.insert(keep.end(), {src, dst});
  return submit(
      OpType::ALLTOALL, "alltoall", outputs, std::move(keep),
      [&] { return alltoallv(src, dst, send_counts, recv_counts); },
      [dst, outs = outputs]() mutable { scatter_into(dst, outs); });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::barrier(const c10d::BarrierOptions& /*opts*/) {
  // Over both connections: the barrier follows every earlier operation.
  return submit(OpType::BARRIER, "barrier", {}, {}, [&] {
    std::vector ops{comm_->barrier()};
    if (reverse_) ops.push_back(reverse_->barrier());
    return ops;
  });
}

// Tags are not matched: a pair's sends and receives pair up in issue order.
c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::send(std::vector<at::Tensor>& tensors,
                                                      int dst_rank, int /*tag*/) {
  const at::Tensor& t = one(tensors, "send");
  auto dt = kiln_dtype(t, "send");
  at::Tensor buf = t.contiguous();
  return submit(OpType::SEND, "send", {t}, {t, buf},
                [&] { return std::vector{comm_->send(buf.data_ptr(), buf.numel(), dt, dst_rank)}; });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupKiln::recv(std::vector<at::Tensor>& tensors,
                                                      int src_rank, int /*tag*/) {
  const at::Tensor& t = one(tensors, "recv");
  auto dt = kiln_dtype(t, "recv");
  at::Tensor buf = t.contiguous();
  return submit(
      OpType::RECV, "recv", {t}, {t, buf},
      [&] { return std::vector{comm_->recv(buf.data_ptr(), buf.numel(), dt, src_rank)}; },
      copy_back(t, buf));
}

}  // namespace kiln::torch_backend
