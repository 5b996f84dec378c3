// N ranks with per-rank batch B/N end with the same parameters as one
// process with batch B; with and without no_sync() accumulation; a model
// mismatch and an unused parameter are errors that say what and where.
#include "kiln/ddp/distributed_data_parallel.h"

#include <algorithm>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ddp {
namespace {

constexpr int kBatch = 24;
constexpr int kSteps = 5;

struct NetImpl : torch::nn::Module {
  explicit NetImpl(int hidden = 32, bool with_unused = false) {
    fc1 = register_module("fc1", torch::nn::Linear(8, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, hidden));
    fc3 = register_module("fc3", torch::nn::Linear(hidden, 4));
    if (with_unused) spare = register_module("spare", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    return fc3(torch::tanh(fc2(torch::tanh(fc1(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr}, spare{nullptr};
};

struct Data {
  torch::Tensor x, y;
};

Data make_data() {
  torch::manual_seed(1234);
  return {torch::randn({kBatch, 8}), torch::randn({kBatch, 4})};
}

std::shared_ptr<NetImpl> make_net(int seed) {
  torch::manual_seed(seed);
  return std::make_shared<NetImpl>();
}

// One process, whole batch: what DDP must reproduce.
std::shared_ptr<NetImpl> train_reference(const Data& d, int steps = kSteps) {
  auto net = make_net(1);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    torch::mse_loss(net->forward(d.x), d.y).backward();
    opt.step();
  }
  return net;
}

Status compare(NetImpl& got, NetImpl& want, double tolerance = 1e-5) {
  // Over want's parameters: `got` may register more after them (spare).
  auto a = got.parameters(), b = want.parameters();
  for (std::size_t i = 0; i < b.size(); ++i) {
    double diff = (a[i] - b[i]).abs().max().item<double>();
    double scale = std::max(b[i].abs().max().item<double>(), 1e-6);
    if (diff / scale > tolerance) {
      return internal_error(fmt::format("parameter {} differs from the single-process run by {:.3g} (relative)", i, diff / scale));
    }
  }
  return Status::ok();
}

Status train_ddp(comm::Communicator& c, bool accumulate, DdpOptions options = {},
                 double tolerance = 1e-5, int steps = kSteps,
                 std::size_t* bucket_allreduces = nullptr) {
  torch::set_num_threads(1);
  Data d = make_data();
  auto net = make_net(1 + c.rank());  // rank 0's initial weights must win the broadcast
  options.first_bucket_cap_bytes = 256;  // several buckets even for this small model
  if (!options.auto_bucket_cap) options.bucket_cap_bytes = 2048;
  KILN_ASSIGN_OR_RETURN(auto ddp, DistributedDataParallel::create(net, c, options));
  if (!options.auto_bucket_cap && ddp->bucket_count() < 3) return internal_error("expected several buckets");
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  const int per_rank = kBatch / c.size();
  auto x = d.x.narrow(0, c.rank() * per_rank, per_rank);
  auto y = d.y.narrow(0, c.rank() * per_rank, per_rank);
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    if (accumulate) {
      const int half = per_rank / 2;
      {
        auto guard = ddp->no_sync();
        auto loss = torch::mse_loss(net->forward(x.narrow(0, 0, half)), y.narrow(0, 0, half)) / 2;
        KILN_RETURN_IF_ERROR(ddp->backward(loss));
      }
      auto loss = torch::mse_loss(net->forward(x.narrow(0, half, half)), y.narrow(0, half, half)) / 2;
      KILN_RETURN_IF_ERROR(ddp->backward(loss));
    } else {
      KILN_RETURN_IF_ERROR(ddp->backward(torch::mse_loss(net->forward(x), y)));
    }
    // The buckets this step reduced: the rebuild after the first backward
    // may re-plan them (Note [Rebuilding buckets from the observed order]).
    if (bucket_allreduces != nullptr) *bucket_allreduces += ddp->last_sync().buckets;
    opt.step();
  }
  if (options.auto_bucket_cap) {
    const auto& caps = options.auto_caps;
    if (ddp->tuning()) return internal_error("still tuning after all candidates were tried");
    if (std::find(caps.begin(), caps.end(), ddp->bucket_cap_bytes()) == caps.end()) {
      return internal_error(fmt::format("auto chose {} bytes, not a candidate", ddp->bucket_cap_bytes()));
    }
  }
  auto reference = train_reference(d, steps);
  return compare(*net, *reference, tolerance);
}

class DdpEquivalence : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(DdpEquivalence, MatchesOneProcessWithTheWholeBatch) {
  auto [world, accumulate] = GetParam();
  auto result = comm::testing::run_ranks(world, [accumulate = accumulate](comm::Communicator& c) {
    return train_ddp(c, accumulate);
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(Worlds, DdpEquivalence,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Bool()),
                         [](const auto& info) {
                           return fmt::format("world{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param) ? "no_sync_accumulation" : "plain");
                         });

TEST(Ddp, Bf16CompressedGradientsStayWithinBf16Rounding) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) {
    DdpOptions o;
    o.compress_bf16 = true;
    return train_ddp(c, false, o, /*tolerance=*/2e-2);
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

// Note [Buckets in shared memory]: on one host every bucket's allreduce runs
// directly on the ranks' shared buckets (KILN_SHM_DIRECT_BYTES=1, so even
// this model's small buckets qualify), and training still matches one
// process with the whole batch; with bf16 compression the wire copies are
// shared too.
TEST(Ddp, OnOneHostBucketsAreSharedAndEveryBucketReducesDirectly) {
  comm::testing::RunOptions o;
  o.env["KILN_SHM_DIRECT_BYTES"] = "1";
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    for (bool bf16 : {false, true}) {
      DdpOptions options;
      options.compress_bf16 = bf16;
      std::size_t bucket_allreduces = 0;
      const std::uint64_t before = c.direct_allreduces();
      KILN_RETURN_IF_ERROR(
          train_ddp(c, false, options, bf16 ? 2e-2 : 1e-5, kSteps, &bucket_allreduces));
      const std::uint64_t direct = c.direct_allreduces() - before;
      if (bucket_allreduces < kSteps || direct != bucket_allreduces) {
        return internal_error(fmt::format("{}: {} of the {} bucket allreduces ran directly",
                                          bf16 ? "bf16" : "float32", direct, bucket_allreduces));
      }
    }
    return Status::ok();
  }, o);
  EXPECT_TRUE(result.ok()) << result.report;
}

TEST(Ddp, AutoBucketCapTriesEveryCandidateThenKeepsOne) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) {
    DdpOptions o;
    o.auto_bucket_cap = true;
    o.auto_caps = {256, 1024, 4096};
    o.auto_rounds = 2;
    // Step 1 observes the order, steps 2-7 try the caps twice each in turn,
    // the rest use the choice.
    EXPECT_EQ(o.auto_tuning_steps(), 7);
    return train_ddp(c, false, o, 1e-5, /*steps=*/9);
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

// Note [Gradients as bucket views]: once the buckets are final, backward
// accumulates into the buffers the allreduce sends and nothing is copied;
// dropping .grad (set_to_none) costs one copy per gradient and stays correct.
TEST(Ddp, GradientsAreBucketViewsAndCopiedOnlyWhenDropped) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    Data d = make_data();
    for (bool set_to_none : {false, true}) {
      auto net = make_net(1);
      DdpOptions o;
      o.first_bucket_cap_bytes = 256;
      o.bucket_cap_bytes = 2048;
      KILN_ASSIGN_OR_RETURN(auto ddp, DistributedDataParallel::create(net, c, o));
      torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
      auto x = d.x.narrow(0, c.rank() * kBatch / 2, kBatch / 2);
      auto y = d.y.narrow(0, c.rank() * kBatch / 2, kBatch / 2);
      for (int s = 0; s < kSteps; ++s) {
        for (auto& p : net->parameters()) {  // zero_grad()'s two behaviours (1.13 / 2.x defaults)
          if (set_to_none) {
            p.mutable_grad() = torch::Tensor();
          } else if (p.grad().defined()) {
            p.mutable_grad().zero_();
          }
        }
        KILN_RETURN_IF_ERROR(ddp->backward(torch::mse_loss(net->forward(x), y)));
        std::size_t copies = ddp->last_sync().grad_copies;
        // Step 0 copies (no views yet); step 1 rebuilds the buckets after it.
        if (s >= 2 && !set_to_none && copies != 0) {
          return internal_error(fmt::format("step {}: {} gradients copied with views in place", s, copies));
        }
        if (s >= 2 && set_to_none && copies != net->parameters().size()) {
          return internal_error(fmt::format("step {}: {} copies after set_to_none, expected one per "
                                            "parameter", s, copies));
        }
        opt.step();
      }
      KILN_RETURN_IF_ERROR(compare(*net, *train_reference(d)));
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

TEST(Ddp, DifferentModelsOnRanksAreRejectedNamingTheRank) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    auto net = std::make_shared<NetImpl>(c.rank() == 1 ? 33 : 32);
    auto ddp = DistributedDataParallel::create(net, c);
    if (ddp.is_ok()) return internal_error("mismatched models accepted");
    if (ddp.status().code() != Code::kInvalidArgument ||
        ddp.status().message().find("rank 1") == std::string::npos) {
      return internal_error("unhelpful error: " + ddp.status().to_string());
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

TEST(Ddp, AnUnusedParameterIsNamedUnlessDeclared) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    Data d = make_data();
    torch::manual_seed(1);
    auto net = std::make_shared<NetImpl>(32, /*with_unused=*/true);
    KILN_ASSIGN_OR_RETURN(auto ddp, DistributedDataParallel::create(net, c));
    Status s = ddp->backward(torch::mse_loss(net->forward(d.x), d.y));
    if (s.is_ok() || s.code() != Code::kFailedPrecondition ||
        s.message().find("spare.weight") == std::string::npos ||
        s.message().find("find_unused_parameters") == std::string::npos) {
      return internal_error("unused parameter not reported: " + s.to_string());
    }
    return Status::ok();  // the group is out of step now: nothing more on it
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

// Declared (c10d's find_unused_parameters): the parameter no forward uses
// counts as a zero gradient; the others train exactly as one process with
// the whole batch would, and the unused one does not move.
TEST(Ddp, DeclaredUnusedParametersGetZeroGradientsAndTheRestTrainExactly) {
  auto result = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    Data d = make_data();
    torch::manual_seed(1);  // as make_net(1): spare is registered after fc1..fc3
    auto net = std::make_shared<NetImpl>(32, /*with_unused=*/true);
    DdpOptions options;
    options.find_unused_parameters = true;
    options.first_bucket_cap_bytes = 256;
    options.bucket_cap_bytes = 2048;
    KILN_ASSIGN_OR_RETURN(auto ddp, DistributedDataParallel::create(net, c, options));
    torch::Tensor spare_before = net->spare->weight.detach().clone();
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
    const int per_rank = kBatch / c.size();
    auto x = d.x.narrow(0, c.rank() * per_rank, per_rank);
    auto y = d.y.narrow(0, c.rank() * per_rank, per_rank);
    for (int s = 0; s < kSteps; ++s) {
      opt.zero_grad();
      KILN_RETURN_IF_ERROR(ddp->backward(torch::mse_loss(net->forward(x), y)));
      if (ddp->last_sync().buckets == 0) return internal_error("no bucket was allreduced");
      const torch::Tensor& g = net->spare->weight.grad();
      if (!g.defined() || g.abs().max().item<double>() != 0) {
        return internal_error(fmt::format("step {}: the unused parameter's gradient is not zero", s));
      }
      opt.step();
    }
    if (!torch::equal(net->spare->weight, spare_before)) {
      return internal_error("the unused parameter moved");
    }
    auto reference = train_reference(d);
    return compare(*net, *reference);
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

}  // namespace
}  // namespace kiln::ddp
