// OverlappedLinear computes torch::nn::Linear's gradients (bit for bit with
// one slice, to float32 rounding in row blocks), has each weight block's
// gradient accumulated before the input gradient exists, and trains under
// DDP to the same parameters as one process with nn::Linear and the whole
// batch.
#include "kiln/ddp/overlapped_linear.h"

#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"
#include "kiln/ddp/distributed_data_parallel.h"
#include "kiln/parallel/after_accumulate.h"

namespace kiln::ddp {
namespace {

constexpr int kIn = 40, kHidden = 50, kOut = 6, kBatch = 24;

// Two layers, as a plain and as an overlapped model with the same weights.
struct Plain : torch::nn::Module {
  Plain() {
    fc1 = register_module("fc1", torch::nn::Linear(kIn, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kOut));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

struct Overlapped : torch::nn::Module {
  // fc1's weight in `slices` row blocks (50 rows: uneven blocks for 3).
  Overlapped(const Plain& from, int slices) {
    fc1 = register_module("fc1", OverlappedLinear(kIn, kHidden, OverlappedLinearOptions{true, slices}));
    fc2 = register_module("fc2", OverlappedLinear(kHidden, kOut));
    fc1->copy_from(from.fc1->weight, from.fc1->bias);
    fc2->copy_from(from.fc2->weight, from.fc2->bias);
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  OverlappedLinear fc1{nullptr}, fc2{nullptr};
};

// The joined weight gradient of an overlapped layer.
torch::Tensor weight_grad(const OverlappedLinear& l) {
  std::vector<torch::Tensor> g;
  for (const auto& s : l->weight_slices()) g.push_back(s.grad());
  return torch::cat(g);
}

// One backward of the loss from x_in; returns the input's gradient (the
// parameters' stay in their .grad).
template <typename Net>
torch::Tensor input_grad_of(Net& net, const torch::Tensor& x_in, const torch::Tensor& y) {
  torch::Tensor x = x_in.clone().requires_grad_(true);
  torch::mse_loss(net.forward(x), y).backward();
  return x.grad();
}

TEST(OverlappedLinear, GradientsEqualNnLinearsBitForBitWithOneSlice) {
  torch::manual_seed(7);
  Plain plain;
  Overlapped ours(plain, 1);
  auto x = torch::randn({kBatch, kIn}), y = torch::randn({kBatch, kOut});
  auto plain_x_grad = input_grad_of(plain, x, y);
  auto our_x_grad = input_grad_of(ours, x, y);
  // Parameter names are nn::Linear's.
  std::vector<std::string> names;
  for (const auto& item : ours.named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names, (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));
  EXPECT_TRUE(torch::equal(plain.fc1->weight.grad(), ours.fc1->weight_slices()[0].grad()));
  EXPECT_TRUE(torch::equal(plain.fc1->bias.grad(), ours.fc1->bias().grad()));
  EXPECT_TRUE(torch::equal(plain.fc2->weight.grad(), ours.fc2->weight_slices()[0].grad()));
  EXPECT_TRUE(torch::equal(plain.fc2->bias.grad(), ours.fc2->bias().grad()));
  EXPECT_TRUE(torch::equal(plain_x_grad, our_x_grad));
}

TEST(OverlappedLinear, RowBlocksGiveNnLinearsGradientsToFloat32Rounding) {
  torch::manual_seed(8);
  Plain plain;
  Overlapped ours(plain, 3);
  ASSERT_EQ(ours.fc1->weight_slices().size(), 3u);
  EXPECT_EQ(ours.fc1->weight_slices()[0].size(0), 17);
  EXPECT_EQ(ours.fc1->weight_slices()[2].size(0), 16);
  EXPECT_TRUE(torch::equal(ours.fc1->weight(), plain.fc1->weight));
  auto x = torch::randn({kBatch, kIn}), y = torch::randn({kBatch, kOut});
  auto plain_x_grad = input_grad_of(plain, x, y);
  auto our_x_grad = input_grad_of(ours, x, y);
  const torch::Tensor want = plain.fc1->weight.grad(), got = weight_grad(ours.fc1);
  const double scale = want.abs().max().item<double>();
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-6 * scale);
  EXPECT_TRUE(torch::equal(plain.fc1->bias.grad(), ours.fc1->bias().grad()));
  EXPECT_TRUE(torch::equal(plain.fc2->weight.grad(), ours.fc2->weight_slices()[0].grad()));
  EXPECT_TRUE(torch::equal(plain_x_grad, our_x_grad));
}

TEST(OverlappedLinear, TakesInputsWithLeadingDimensions) {
  torch::manual_seed(9);
  torch::nn::Linear plain(kIn, kOut);
  OverlappedLinear ours(kIn, kOut);
  ours->copy_from(plain->weight, plain->bias);
  auto x = torch::randn({3, 4, kIn});
  auto want = plain(x), got = ours(x);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
}

// Note [A Linear's weight gradient first]: when a weight block's gradient
// is accumulated (where DDP's hook fires), the input's gradient does not
// exist yet; nn::Linear computes it in the same node, before.
TEST(OverlappedLinear, EachWeightBlockIsAccumulatedBeforeTheInputGradient) {
  torch::manual_seed(10);
  Plain plain;
  Overlapped ours(plain, 3);
  auto x = torch::randn({kBatch, kIn}).requires_grad_(true);
  std::vector<std::string> seen;  // "<param>:<input grad ready?>"
  std::vector<std::shared_ptr<torch::autograd::Node>> keep;
  auto watch = [&](const torch::Tensor& p, const std::string& name) {
    keep.push_back(torch::autograd::impl::grad_accumulator(p));
    keep.back()->add_post_hook(std::make_unique<parallel::AfterAccumulate>(
        [&, name] { seen.push_back(fmt::format("{}:{}", name, x.grad().defined() ? "x" : "-")); }));
  };
  for (int i = 0; i < 3; ++i) watch(ours.fc1->weight_slices()[i], fmt::format("w{}", i));
  watch(plain.fc1->weight, "plain");
  torch::mse_loss(ours.forward(x), torch::zeros({kBatch, kOut})).backward();
  EXPECT_EQ(seen, (std::vector<std::string>{"w0:-", "w1:-", "w2:-"}));
  x.mutable_grad().reset();
  torch::mse_loss(plain.forward(x), torch::zeros({kBatch, kOut})).backward();
  EXPECT_EQ(seen.back(), "plain:x");
}

// Two ranks with half the batch each, the first layer in 4 blocks and
// buckets small enough that blocks land in different ones: the same
// parameters as one process training nn::Linear on the whole batch.
TEST(OverlappedLinear, DdpTrainsItLikeOneProcessWithNnLinear) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    torch::manual_seed(11);
    Plain reference;
    auto x = torch::randn({kBatch, kIn}), y = torch::randn({kBatch, kOut});
    torch::manual_seed(12 + c.rank());  // rank 0's weights must win the broadcast
    Plain start;
    if (c.rank() == 0) {
      torch::NoGradGuard g;
      for (auto [a, b] : {std::pair{start.fc1->weight, reference.fc1->weight},
                          {start.fc1->bias, reference.fc1->bias},
                          {start.fc2->weight, reference.fc2->weight},
                          {start.fc2->bias, reference.fc2->bias}}) {
        a.copy_(b);
      }
    }
    auto net = std::make_shared<Overlapped>(start, 4);
    DdpOptions o;
    o.first_bucket_cap_bytes = 256;
    o.bucket_cap_bytes = 2048;
    KILN_ASSIGN_OR_RETURN(auto ddp, DistributedDataParallel::create(net, c, o));
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
    torch::optim::SGD ref_opt(reference.parameters(), torch::optim::SGDOptions(0.1));
    const int half = kBatch / 2;
    for (int s = 0; s < 4; ++s) {
      opt.zero_grad();
      KILN_RETURN_IF_ERROR(ddp->backward(torch::mse_loss(
          net->forward(x.narrow(0, c.rank() * half, half)), y.narrow(0, c.rank() * half, half))));
      opt.step();
      ref_opt.zero_grad();
      torch::mse_loss(reference.forward(x), y).backward();
      ref_opt.step();
    }
    const std::pair<torch::Tensor, torch::Tensor> pairs[] = {
        {net->fc1->weight(), reference.fc1->weight}, {net->fc1->bias(), reference.fc1->bias},
        {net->fc2->weight(), reference.fc2->weight}, {net->fc2->bias(), reference.fc2->bias}};
    for (const auto& [got, want] : pairs) {
      const double diff = (got - want).abs().max().item<double>();
      if (diff > 1e-5 * want.abs().max().item<double>()) {
        return internal_error(fmt::format("rank {}: a parameter differs from one process's by {:.3g}",
                                          c.rank(), diff));
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

}  // namespace
}  // namespace kiln::ddp
