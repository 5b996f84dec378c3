#include "kiln/parallel/tensor/collectives.h"

#include <stdexcept>

#include <fmt/format.h>

namespace kiln::parallel::tensor {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The communicator travels through the autograd context as an integer: the
// group outlives the graph (collectives.h).
std::int64_t handle(comm::Communicator& group) { return reinterpret_cast<std::intptr_t>(&group); }
comm::Communicator& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<comm::Communicator*>(ctx->saved_data["group"].toInt());
}

comm::DataType wire_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return comm::DataType::kFloat32;
    case torch::kFloat64: return comm::DataType::kFloat64;
    case torch::kBFloat16: return comm::DataType::kBFloat16;
    case torch::kFloat16: return comm::DataType::kFloat16;
    default:
      throw std::runtime_error(fmt::format("tensor parallel: no collective for dtype {}",
                                           c10::toString(t.scalar_type())));
  }
}

void check(const Status& s, const char* op, comm::Communicator& group) {
  if (!s.is_ok()) {
    throw std::runtime_error(fmt::format("tensor parallel {} over {}: {}", op, group.describe(), s.to_string()));
  }
}

// In place; `t` must be contiguous.
void allreduce_(torch::Tensor& t, comm::Communicator& group, comm::ReduceOp op, const char* what) {
  check(group.allreduce(t.data_ptr(), static_cast<std::size_t>(t.numel()), wire_type(t), op)->wait(), what, group);
}

torch::Tensor allreduced(const torch::Tensor& x, comm::Communicator& group, const char* what) {
  torch::Tensor out = x.contiguous().clone();
  allreduce_(out, group, comm::ReduceOp::kSum, what);
  return out;
}

torch::Tensor allgathered(const torch::Tensor& x, std::int64_t dim, comm::Communicator& group) {
  // Gather along dimension 0 of x moved to the front, then move it back.
  torch::Tensor front = x.movedim(dim, 0).contiguous();
  std::vector<std::int64_t> shape = front.sizes().vec();
  shape[0] *= group.size();
  torch::Tensor out = torch::empty(shape, front.options());
  check(group.allgather(front.data_ptr(), out.data_ptr(), static_cast<std::size_t>(front.numel()),
                        wire_type(front))->wait(), "allgather", group);
  return out.movedim(0, dim).contiguous();
}

torch::Tensor reduce_scattered(const torch::Tensor& x, std::int64_t dim, comm::Communicator& group) {
  torch::Tensor front = x.movedim(dim, 0).contiguous();
  if (front.size(0) % group.size() != 0) {
    throw std::runtime_error(fmt::format("sequence parallel: dimension {} of size {} does not divide "
                                         "over {} ranks", dim, front.size(0), group.size()));
  }
  std::vector<std::int64_t> shape = front.sizes().vec();
  shape[0] /= group.size();
  torch::Tensor out = torch::empty(shape, front.options());
  check(group.reduce_scatter(front.data_ptr(), out.data_ptr(), static_cast<std::size_t>(out.numel()),
                             wire_type(front), comm::ReduceOp::kSum)->wait(), "reduce-scatter", group);
  return out.movedim(0, dim).contiguous();
}

struct CopyToGroup : torch::autograd::Function<CopyToGroup> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, std::int64_t group) {
    ctx->saved_data["group"] = group;
    return x;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad) {
    return {allreduced(grad[0], group_of(ctx), "allreduce (backward of f)"), torch::Tensor()};
  }
};

struct ReduceFromGroup : torch::autograd::Function<ReduceFromGroup> {
  static torch::Tensor forward(AutogradContext*, torch::Tensor x, std::int64_t group) {
    return allreduced(x, *reinterpret_cast<comm::Communicator*>(group), "allreduce (forward of g)");
  }
  static tensor_list backward(AutogradContext*, tensor_list grad) { return {grad[0], torch::Tensor()}; }
};

struct GatherFromSequence : torch::autograd::Function<GatherFromSequence> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, std::int64_t dim, std::int64_t group) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["dim"] = dim;
    return allgathered(x, dim, *reinterpret_cast<comm::Communicator*>(group));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad) {
    return {reduce_scattered(grad[0], ctx->saved_data["dim"].toInt(), group_of(ctx)), torch::Tensor(),
            torch::Tensor()};
  }
};

struct ReduceScatterToSequence : torch::autograd::Function<ReduceScatterToSequence> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, std::int64_t dim, std::int64_t group) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["dim"] = dim;
    return reduce_scattered(x, dim, *reinterpret_cast<comm::Communicator*>(group));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad) {
    return {allgathered(grad[0], ctx->saved_data["dim"].toInt(), group_of(ctx)), torch::Tensor(),
            torch::Tensor()};
  }
};

// Note [Vocabulary-parallel cross-entropy]: loss = log(sum_v exp(z_v - max))
// - (z_target - max), with the max, the sum and the target's logit each
// reduced over the group; the gradient is softmax - onehot, computed locally
// from the saved softmax of this rank's columns.
struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor logits, torch::Tensor targets,
                               std::int64_t vocab_start, std::int64_t group_handle) {
    comm::Communicator& group = *reinterpret_cast<comm::Communicator*>(group_handle);
    torch::Tensor z = logits.to(torch::kFloat32);
    torch::Tensor max = std::get<0>(z.max(1)).contiguous();
    allreduce_(max, group, comm::ReduceOp::kMax, "allreduce max (cross-entropy)");
    torch::Tensor shifted = z - max.unsqueeze(1);
    const std::int64_t rows = z.size(1);
    torch::Tensor outside = targets.lt(vocab_start).logical_or(targets.ge(vocab_start + rows));
    torch::Tensor local = (targets - vocab_start).masked_fill(outside, 0);
    torch::Tensor picked = shifted.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(outside, 0).contiguous();
    torch::Tensor exp = shifted.exp();
    torch::Tensor sum = exp.sum(1).contiguous();
    // One collective for both sums.
    torch::Tensor both = torch::stack({picked, sum}).contiguous();
    allreduce_(both, group, comm::ReduceOp::kSum, "allreduce (cross-entropy)");
    torch::Tensor loss = both[1].log() - both[0];
    ctx->save_for_backward({exp.div_(both[1].unsqueeze(1)), local, outside});
    ctx->saved_data["dtype"] = static_cast<std::int64_t>(logits.scalar_type());
    return loss;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor g = saved[0].clone();  // softmax of this rank's columns
    torch::Tensor inside = saved[2].logical_not().to(g.scalar_type());
    g.scatter_add_(1, saved[1].unsqueeze(1), -inside.unsqueeze(1));
    g.mul_(grad[0].unsqueeze(1));
    return {g.to(static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt())), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor copy_to_group(const torch::Tensor& x, comm::Communicator& group) {
  if (group.size() == 1) return x;
  return CopyToGroup::apply(x, handle(group));
}

torch::Tensor reduce_from_group(const torch::Tensor& x, comm::Communicator& group) {
  if (group.size() == 1) return x;
  return ReduceFromGroup::apply(x, handle(group));
}

torch::Tensor gather_from_sequence(const torch::Tensor& x, std::int64_t dim, comm::Communicator& group) {
  if (group.size() == 1) return x;
  return GatherFromSequence::apply(x, dim, handle(group));
}

torch::Tensor reduce_scatter_to_sequence(const torch::Tensor& x, std::int64_t dim,
                                         comm::Communicator& group) {
  if (group.size() == 1) return x;
  return ReduceScatterToSequence::apply(x, dim, handle(group));
}

torch::Tensor vocab_parallel_embedding(const torch::Tensor& tokens, const torch::Tensor& weight,
                                       std::int64_t vocab_start, comm::Communicator& group) {
  if (group.size() == 1) return torch::embedding(weight, tokens);
  return reduce_from_group(vocab_embedding_partial(tokens, weight, vocab_start), group);
}

torch::Tensor vocab_embedding_partial(const torch::Tensor& tokens, const torch::Tensor& weight,
                                      std::int64_t vocab_start) {
  torch::Tensor outside = tokens.lt(vocab_start).logical_or(tokens.ge(vocab_start + weight.size(0)));
  torch::Tensor local = (tokens - vocab_start).masked_fill(outside, 0);
  return torch::embedding(weight, local).masked_fill(outside.unsqueeze(-1), 0);
}

torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           std::int64_t vocab_start, comm::Communicator& group) {
  if (group.size() == 1) {
    return torch::nn::functional::cross_entropy(
        logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  }
  return VocabParallelCrossEntropy::apply(logits, targets, vocab_start, handle(group));
}

}  // namespace kiln::parallel::tensor
