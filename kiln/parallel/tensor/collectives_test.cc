// Tensor-parallel operations on 2 and 4 real processes against the dense
// computation on one: values and every gradient agree to float rounding.
#include "kiln/parallel/tensor/collectives.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"

namespace kiln::parallel::tensor {
namespace {

using comm::testing::run_ranks;

Status close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1e-6, want.abs().max().item<double>());
  if (err / scale < 1e-5) return Status::ok();
  return internal_error(fmt::format("{}: max error {} (scale {})", what, err, scale));
}

// Rank r's share of rows [r * n / world, (r + 1) * n / world) of dim `dim`.
torch::Tensor share(const torch::Tensor& t, std::int64_t dim, int rank, int world) {
  const std::int64_t n = t.size(dim) / world;
  return t.narrow(dim, rank * n, n);
}

TEST(TensorParallel, ColumnThenRowParallelMlpMatchesTheDenseOne) {
  for (int world : {2, 4}) {
    auto run = run_ranks(world, [world](comm::Communicator& group) -> Status {
      torch::manual_seed(3);
      torch::Tensor x = torch::randn({5, 8}, torch::requires_grad());
      torch::Tensor w1 = torch::randn({16, 8}), b1 = torch::randn({16}), w2 = torch::randn({8, 16});
      // Dense.
      torch::Tensor w1d = w1.clone().requires_grad_(), w2d = w2.clone().requires_grad_();
      torch::Tensor xd = x.detach().clone().requires_grad_();
      torch::Tensor yd = torch::linear(torch::gelu(torch::linear(xd, w1d, b1)), w2d);
      yd.pow(2).sum().backward();
      // Parallel: w1 split by output rows, w2 by input columns.
      const int r = group.rank();
      torch::Tensor w1p = share(w1, 0, r, world).clone().requires_grad_();
      torch::Tensor w2p = share(w2, 1, r, world).clone().requires_grad_();
      torch::Tensor xp = x.detach().clone().requires_grad_();
      torch::Tensor h = torch::gelu(torch::linear(copy_to_group(xp, group), w1p, share(b1, 0, r, world)));
      torch::Tensor yp = reduce_from_group(torch::linear(h, w2p), group);
      yp.pow(2).sum().backward();
      KILN_RETURN_IF_ERROR(close(yp, yd, "output"));
      KILN_RETURN_IF_ERROR(close(xp.grad(), xd.grad(), "input gradient"));
      KILN_RETURN_IF_ERROR(close(w1p.grad(), share(w1d.grad(), 0, r, world), "column-parallel weight gradient"));
      return close(w2p.grad(), share(w2d.grad(), 1, r, world), "row-parallel weight gradient");
    });
    EXPECT_TRUE(run.ok()) << "world " << world << ": " << run.report;
  }
}

TEST(TensorParallel, VocabParallelEmbeddingAndCrossEntropyMatchTheDenseOnes) {
  auto run = run_ranks(2, [](comm::Communicator& group) -> Status {
    torch::manual_seed(5);
    const std::int64_t vocab = 10, dim = 4;
    torch::Tensor table = torch::randn({vocab, dim});
    torch::Tensor tokens = torch::randint(0, vocab, {3, 6}, torch::kLong);
    torch::Tensor targets = torch::randint(0, vocab, {18}, torch::kLong);
    torch::Tensor head = torch::randn({vocab, dim});
    // Dense.
    torch::Tensor td = table.clone().requires_grad_(), hd = head.clone().requires_grad_();
    torch::Tensor ld = torch::nn::functional::cross_entropy(
        torch::linear(torch::embedding(td, tokens).view({18, dim}), hd), targets);
    ld.backward();
    // Parallel: both tables split by vocabulary rows.
    const int r = group.rank();
    torch::Tensor tp = share(table, 0, r, 2).clone().requires_grad_();
    torch::Tensor hp = share(head, 0, r, 2).clone().requires_grad_();
    torch::Tensor x = vocab_parallel_embedding(tokens, tp, r * vocab / 2, group).view({18, dim});
    torch::Tensor logits = torch::linear(copy_to_group(x, group), hp);
    torch::Tensor lp = vocab_parallel_cross_entropy(logits, targets, r * vocab / 2, group).mean();
    lp.backward();
    KILN_RETURN_IF_ERROR(close(lp, ld, "loss"));
    KILN_RETURN_IF_ERROR(close(tp.grad(), share(td.grad(), 0, r, 2), "embedding gradient"));
    return close(hp.grad(), share(hd.grad(), 0, r, 2), "head gradient");
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

TEST(TensorParallel, SequenceGatherAndReduceScatterAreEachOthersTranspose) {
  auto run = run_ranks(2, [](comm::Communicator& group) -> Status {
    torch::manual_seed(9);
    torch::Tensor full = torch::randn({2, 6, 3});
    torch::Tensor mine = share(full, 1, group.rank(), 2).clone().requires_grad_();
    torch::Tensor gathered = gather_from_sequence(mine, 1, group);
    KILN_RETURN_IF_ERROR(close(gathered, full, "gathered sequence"));
    // d/dmine of sum(gathered * w) is this rank's share of (w summed over ranks).
    torch::Tensor w = torch::full({2, 6, 3}, 1.0 + group.rank());
    (gathered * w).sum().backward();
    KILN_RETURN_IF_ERROR(close(mine.grad(), share(torch::full({2, 6, 3}, 3.0), 1, group.rank(), 2), "gradient"));
    torch::Tensor scattered = reduce_scatter_to_sequence(full, 1, group);
    return close(scattered, share(full * 2, 1, group.rank(), 2), "reduce-scattered sequence");
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

}  // namespace
}  // namespace kiln::parallel::tensor
