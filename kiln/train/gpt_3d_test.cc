// The tensor-parallel GPT's collectives on real processes: Megatron-LM's
// two all-reduces per layer in the forward pass and two in the backward,
// counted on the tensor group's communicator.
#include "kiln/train/gpt_3d.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"
#include "kiln/train/task.h"

namespace kiln::train {
namespace {

using comm::testing::run_ranks;

// All-reduces the tensor group issues in one forward, loss and backward.
struct Counts {
  std::uint64_t forward = 0, loss = 0, backward = 0;
};

Result<Counts> count_allreduces(comm::Communicator& group, int layers) {
  const ModelConfig config{.kind = ModelKind::kGpt, .vocab = 32, .seq_len = 8, .d_model = 16,
                           .layers = layers, .heads = 4, .dropout = 0.0, .rotary = true};
  torch::manual_seed(7);
  std::unique_ptr<Task> whole = make_task(config);
  KILN_ASSIGN_OR_RETURN(const parallel::MeshLayout mesh, parallel::MeshLayout::create(group.size(), group.size(), 1));
  KILN_ASSIGN_OR_RETURN(auto model, Gpt3d::create(config, *whole->module(), mesh, group.rank(), group, {}));
  const torch::Tensor tokens = torch::randint(config.vocab, {2, config.seq_len}, torch::kLong);
  const torch::Tensor targets = torch::randint(config.vocab, {2, config.seq_len}, torch::kLong);
  Counts c;
  const std::uint64_t start = group.allreduces();
  torch::Tensor logits = model->forward(0, tokens);
  c.forward = group.allreduces() - start;
  torch::Tensor loss = model->loss(logits, targets);
  c.loss = group.allreduces() - start - c.forward;
  loss.backward();
  c.backward = group.allreduces() - start - c.forward - c.loss;
  return c;
}

TEST(Gpt3dTensorParallel, EachLayerAllReducesTwiceForwardAndTwiceBackward) {
  auto run = run_ranks(2, [](comm::Communicator& group) -> Status {
    for (int layers : {1, 3}) {
      KILN_ASSIGN_OR_RETURN(const Counts c, count_allreduces(group, layers));
      // Forward: the row-parallel attention output and FFN output per layer,
      // plus the vocabulary-parallel embedding's sum.
      // Backward: the input gradients of the column-parallel qkv and FFN
      // input per layer, plus the head's input gradient (the embedding's and
      // the loss's backward are local).
      // Loss: the vocabulary-parallel cross-entropy's max, then its sums.
      const std::uint64_t expected_forward = 2 * static_cast<std::uint64_t>(layers) + 1;
      const std::uint64_t expected_backward = 2 * static_cast<std::uint64_t>(layers) + 1;
      if (c.forward != expected_forward || c.backward != expected_backward || c.loss != 2) {
        return internal_error(fmt::format(
            "{} layers: {} all-reduces forward, {} in the loss, {} backward; expected {}, 2, {}", layers,
            c.forward, c.loss, c.backward, expected_forward, expected_backward));
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

}  // namespace
}  // namespace kiln::train
