// ZeRO stages 1-3 on 2, 3 and 4 real processes end with the same parameters
// as one process training the whole batch with LibTorch's own optimizer;
// checkpoints move between world sizes and stages; state memory follows the
// ZeRO paper's formulas.
#include "kiln/parallel/zero/sharded_data_parallel.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/parallel/counting_allocator.h"

namespace kiln::parallel::zero {
namespace {

constexpr int kBatch = 24;
constexpr int kSteps = 4;

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int width) : fc(register_module("fc", torch::nn::Linear(width, width))) {}
  torch::Tensor forward(torch::Tensor x) { return x + torch::tanh(fc->forward(x)); }
  torch::nn::Linear fc;
};
TORCH_MODULE(Block);

// Every unit runs through run_unit(); `spare` never runs.
struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool with_spare = false) {
    in = register_module("in", torch::nn::Linear(8, 16));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 3; ++i) blocks->push_back(Block(16));
    out = register_module("out", torch::nn::Linear(16, 4));
    if (with_spare) spare = register_module("spare", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = run_unit(*in, [&] { return torch::tanh(in->forward(x)); });
    for (const auto& b : *blocks) x = run_unit(*b, [&] { return b->as<Block>()->forward(x); });
    return run_unit(*out, [&] { return out->forward(x); });
  }
  torch::nn::Linear in{nullptr}, out{nullptr}, spare{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Net);

struct Data {
  torch::Tensor x, y;
};

Data make_data(int step) {
  torch::manual_seed(1000 + step);
  return {torch::randn({kBatch, 8}), torch::randn({kBatch, 4})};
}

Net make_net(int seed) {
  torch::manual_seed(seed);
  return Net();
}

struct Case {
  int stage = 3;
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  double clip = 0;
  int accumulate = 1;  // backward() calls per step
  Precision precision = Precision::kFp32;
  std::int64_t min_unit_params = 0;
  bool overlap = true;
  int prefetch = 1;
  bool trace = false;
};

OptimizerOptions optimizer_options(const Case& s) {
  OptimizerOptions o;
  o.kind = s.optimizer;
  o.lr = s.optimizer == OptimizerKind::kAdamW ? 0.01 : 0.1;
  o.weight_decay = 0.01;
  o.momentum = s.optimizer == OptimizerKind::kSgd ? 0.9 : 0;
  return o;
}

torch::Tensor flat_parameters(torch::nn::Module& m) {
  std::vector<torch::Tensor> all;
  for (auto& p : m.parameters()) all.push_back(p.detach().to(torch::kFloat32).reshape({-1}));
  return torch::cat(all);
}

// One process, the whole batch, LibTorch's optimizer.
torch::Tensor train_reference(const Case& s, int steps = kSteps) {
  Net net = make_net(1);
  OptimizerOptions o = optimizer_options(s);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (s.optimizer == OptimizerKind::kAdamW) {
    opt = std::make_unique<torch::optim::AdamW>(
        net->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  } else {
    opt = std::make_unique<torch::optim::SGD>(
        net->parameters(), torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
  }
  for (int step = 0; step < steps; ++step) {
    opt->zero_grad();
    Data d = make_data(step);
    const int micro = kBatch / s.accumulate;
    for (int a = 0; a < s.accumulate; ++a) {
      auto x = d.x.narrow(0, a * micro, micro), y = d.y.narrow(0, a * micro, micro);
      (torch::mse_loss(net->forward(x), y) / s.accumulate).backward();
    }
    if (s.clip > 0) torch::nn::utils::clip_grad_norm_(net->parameters(), s.clip);
    opt->step();
  }
  return flat_parameters(*net);
}

Result<std::unique_ptr<ShardedDataParallel>> make_sharded(Net net, comm::Communicator& c, const Case& s) {
  ZeroOptions z;
  z.stage = s.stage;
  z.precision = s.precision;
  z.min_unit_params = s.min_unit_params;
  z.overlap = s.overlap;
  z.prefetch = s.prefetch;
  z.trace = s.trace;
  z.optimizer = optimizer_options(s);
  return ShardedDataParallel::create(net.ptr(), c, z);
}

// Trains `steps` steps on this rank's rows of each batch.
Status train_steps(ShardedDataParallel& z, Net& net, comm::Communicator& c, const Case& s, int first,
                   int steps) {
  const int per_rank = kBatch / c.size();
  for (int step = first; step < first + steps; ++step) {
    Data d = make_data(step);
    const int micro = per_rank / s.accumulate;
    for (int a = 0; a < s.accumulate; ++a) {
      const int row = c.rank() * per_rank + a * micro;
      auto x = d.x.narrow(0, row, micro), y = d.y.narrow(0, row, micro);
      if (s.precision == Precision::kBf16) x = x.to(torch::kBFloat16);
      auto loss = torch::mse_loss(net->forward(x).to(torch::kFloat32), y) / s.accumulate;
      KILN_RETURN_IF_ERROR(z.backward(loss));
    }
    if (s.clip > 0) KILN_RETURN_IF_ERROR(z.clip_grad_norm(s.clip).status());
    KILN_RETURN_IF_ERROR(z.step(optimizer_options(s).lr));
  }
  return Status::ok();
}

// fp32: the largest element difference relative to the largest parameter.
// bf16: the L2 norm of the difference relative to the parameters' norm (the
// per-element error of bf16 weights under Adam is a few update sizes).
Status compare(const torch::Tensor& got, const torch::Tensor& want, double tolerance,
               const std::string& what, bool l2 = false) {
  const double diff = l2 ? (got - want).norm().item<double>() : (got - want).abs().max().item<double>();
  const double scale = l2 ? want.norm().item<double>() : want.abs().max().item<double>();
  if (diff / scale > tolerance) {
    return internal_error(fmt::format("{}: parameters differ from the single-process run by {:.3g} "
                                      "(relative{}; tolerance {:.1g})", what, diff / scale,
                                      l2 ? ", L2" : "", tolerance));
  }
  return Status::ok();
}

Status run_sharded(comm::Communicator& c, const Case& s, const torch::Tensor& want, double tolerance) {
  torch::set_num_threads(1);
  Net net = make_net(1 + c.rank());  // rank 0's initial weights must win the broadcast
  KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
  KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, 0, kSteps));
  KILN_RETURN_IF_ERROR(z->gather_all());
  return compare(flat_parameters(*net), want, tolerance,
                 fmt::format("stage {} rank {}/{}", s.stage, c.rank(), c.size()),
                 s.precision == Precision::kBf16);
}

void expect_matches_reference(int ranks, const Case& s, double tolerance = 1e-5) {
  torch::set_num_threads(1);
  const torch::Tensor want = train_reference(s);
  auto r = comm::testing::run_ranks(ranks, [&](comm::Communicator& c) { return run_sharded(c, s, want, tolerance); });
  EXPECT_TRUE(r.ok()) << r.report;
}

class StagesAndWorlds : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(StagesAndWorlds, AdamWMatchesOneProcess) {
  auto [stage, ranks] = GetParam();
  expect_matches_reference(ranks, {.stage = stage});
}

INSTANTIATE_TEST_SUITE_P(Zero, StagesAndWorlds,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Values(2, 3, 4)),
                         [](const auto& info) {
                           return fmt::format("stage{}_world{}", std::get<0>(info.param),
                                              std::get<1>(info.param));
                         });

TEST(ShardedDataParallel, SgdWithMomentumAndGlobalNormClipping) {
  for (int stage : {1, 3}) {
    expect_matches_reference(3, {.stage = stage, .optimizer = OptimizerKind::kSgd, .clip = 0.05});
  }
}

TEST(ShardedDataParallel, GradientAccumulationAcrossBackwardCalls) {
  for (int stage : {1, 2, 3}) expect_matches_reference(2, {.stage = stage, .accumulate = 2});
}

TEST(ShardedDataParallel, MergedUnitsAndTheNonOverlappedBaselineMatchToo) {
  expect_matches_reference(2, {.stage = 3, .min_unit_params = 400});
  expect_matches_reference(2, {.stage = 3, .overlap = false});
  expect_matches_reference(3, {.stage = 3, .prefetch = 2});
}

// The schedule (how far gathers run ahead, whether anything overlaps) moves
// collectives in time, never what they compute: the parameters after
// training are the same to the bit, in fp32 and in bf16.
TEST(ShardedDataParallel, PrefetchDepthAndOverlapDoNotChangeOneBit) {
  auto r = comm::testing::run_ranks(3, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    for (Precision precision : {Precision::kFp32, Precision::kBf16}) {
      torch::Tensor first;
      for (const Case& s : {Case{.precision = precision, .prefetch = 1},
                            Case{.precision = precision, .prefetch = 2},
                            Case{.precision = precision, .prefetch = 4},
                            Case{.precision = precision, .overlap = false}}) {
        Net net = make_net(1 + c.rank());
        KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
        KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, 0, kSteps));
        KILN_RETURN_IF_ERROR(z->gather_all());
        torch::Tensor got = flat_parameters(*net);
        if (!first.defined()) {
          first = got;
        } else if (!torch::equal(got, first)) {
          return internal_error(fmt::format(
              "{} prefetch {} overlap {}: parameters differ from prefetch 1 by {:.3g} (max abs)",
              precision == Precision::kBf16 ? "bf16" : "fp32", s.prefetch, s.overlap,
              (got - first).abs().max().item<double>()));
        }
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// bf16 compute and communication, fp32 master weights: the trajectory stays
// within bf16's resolution of the fp32 one after a few steps (the tolerance
// docs/train.md documents: 3e-2 of the parameters' L2 norm after 4 steps).
TEST(ShardedDataParallel, Bf16StaysNearTheFp32Trajectory) {
  for (int stage : {1, 2, 3}) {
    expect_matches_reference(2, {.stage = stage, .precision = Precision::kBf16}, 3e-2);
  }
}

TEST(ShardedDataParallel, AUnitThatBypassesRunUnitIsAnErrorNamingIt) {
  auto r = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::manual_seed(1);
    Net net(/*with_spare=*/true);
    KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, {.stage = 3}));
    Data d = make_data(0);
    auto loss = torch::mse_loss(net->forward(d.x), d.y);
    Status s = z->backward(loss);
    if (s.is_ok() || s.message().find("'spare'") == std::string::npos) {
      return internal_error("expected an error naming unit 'spare', got: " + s.to_string());
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// Rank 1 runs out of memory in backward (its cap injected just before) and
// then does what a ProcessGroup's destructor does: a barrier. Rank 0, in the
// middle of its backward's gathers, must report that rank 1 failed, not a
// "message size mismatch" with that barrier (Note [A failed rank aborts its
// group]).
TEST(ShardedDataParallel, APeerOutOfMemoryIsReportedAsThatRanksFailure) {
  auto r = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    CountingAllocator& memory = CountingAllocator::install();
    const Case s{.stage = 3};
    Net net = make_net(1);
    KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
    KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, 0, 1));
    Data d = make_data(1);
    auto loss = torch::mse_loss(net->forward(d.x), d.y);
    if (c.rank() == 1) memory.set_cap(memory.live_bytes());  // no gradient fits
    Status st = z->backward(loss);
    if (c.rank() == 1) {
      (void)c.barrier()->wait(std::chrono::seconds(10));
      if (st.code() != Code::kResourceExhausted ||
          st.message().find("out of memory") == std::string::npos) {
        return internal_error("rank 1: expected an out-of-memory error, got: " + st.to_string());
      }
      return Status::ok();
    }
    if (st.is_ok() || st.message().find("rank 1") == std::string::npos ||
        st.message().find("mismatch") != std::string::npos) {
      return internal_error("rank 0: expected an error saying rank 1 failed, got: " +
                            st.to_string());
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// Per-rank state bytes held across steps equal the ZeRO paper's formula for
// the stage within 10%, and the peak adds no more than the gathered units and
// reduction buffers the wrapper bounds by construction.
TEST(ShardedDataParallel, StateBytesFollowTheZeroFormulas) {
  auto r = comm::testing::run_ranks(4, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    for (int stage : {1, 2, 3}) {
      Net net = make_net(1);
      KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, {.stage = stage}));
      KILN_RETURN_IF_ERROR(train_steps(*z, net, c, {.stage = stage}, 0, 2));
      const double formula = static_cast<double>(z->formula_state_bytes());
      const double held = static_cast<double>(z->state_bytes().persistent());
      if (std::abs(held - formula) > 0.10 * formula) {
        return internal_error(fmt::format("stage {}: holds {} state bytes after a step, the formula "
                                          "says {}", stage, held, formula));
      }
      const double peak = static_cast<double>(z->peak_state_bytes().total());
      const double bound = formula + static_cast<double>(z->in_flight_bound());
      if (peak > bound) {
        return internal_error(fmt::format("stage {}: peak {} bytes, formula {} + in-flight bound {}",
                                          stage, peak, formula, z->in_flight_bound()));
      }
      // The bound is a few units, not the model: sharding still pays.
      if (stage == 3 && peak > 0.9 * 16.0 * static_cast<double>(z->parameter_count())) {
        return internal_error(fmt::format("stage 3: peak {} bytes is close to replicated state", peak));
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// The overlapped schedule itself, read from the wrapper's trace of one step
// (every event is stamped on this rank's training thread or at a collective's
// submission from it, so their order is the program's, not timing luck). Over
// the units u0..u4 in execution order, with prefetch 1:
// - forward: u(k+1)'s gather is issued once u(k)'s forward has begun and
//   before u(k+1)'s begins: one unit ahead, never all at once;
// - backward: u(k-1)'s gather is issued before u(k)'s gradients are complete;
// - u(k)'s reduce-scatter is issued before u(k-1)'s gradients are complete:
//   it overlaps the rest of backward.
// The non-overlapped baseline breaks all three (the test's check of itself).
TEST(ShardedDataParallel, GathersRunOneUnitAheadAndReductionsStartInsideBackward) {
  auto r = comm::testing::run_ranks(2, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    for (bool overlap : {true, false}) {
      const Case s{.stage = 3, .overlap = overlap, .trace = true};
      Net net = make_net(1);
      KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
      KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, 0, 1));  // records the execution order
      (void)z->take_trace();
      Data d = make_data(1);
      const int rows = kBatch / c.size();
      KILN_RETURN_IF_ERROR(z->backward(torch::mse_loss(
          net->forward(d.x.narrow(0, c.rank() * rows, rows)), d.y.narrow(0, c.rank() * rows, rows))));
      std::vector<TraceEvent> events = z->take_trace();
      double backward_start = 0;
      std::vector<std::string> order;
      std::map<std::string, double> forward_start, grads_done, reduce_issued, forward_gather, backward_gather;
      for (const TraceEvent& e : events) {
        if (e.what == "backward") backward_start = e.started;
      }
      for (const TraceEvent& e : events) {
        if (e.what == "forward") {
          order.push_back(e.unit);
          forward_start[e.unit] = e.ended;  // stamped as the unit's forward begins
        }
        if (e.what == "grads") grads_done[e.unit] = e.ended;
        if (e.what == "reduce") reduce_issued[e.unit] = e.issued;
        if (e.what == "gather") (e.issued < backward_start ? forward_gather : backward_gather)[e.unit] = e.issued;
      }
      if (order.size() != 5 || grads_done.size() != 5 || reduce_issued.size() != 5) {
        return internal_error(fmt::format("overlap {}: traced {} forwards, {} gradients, {} reductions",
                                          overlap, order.size(), grads_done.size(), reduce_issued.size()));
      }
      bool ahead_in_forward = true, ahead_in_backward = true, reduced_inside = true;
      for (std::size_t k = 0; k + 1 < order.size(); ++k) {
        auto g = forward_gather.find(order[k + 1]);
        ahead_in_forward = ahead_in_forward && g != forward_gather.end() &&
                           forward_start[order[k]] < g->second && g->second < forward_start[order[k + 1]];
      }
      for (std::size_t k = order.size() - 1; k >= 1; --k) {
        auto g = backward_gather.find(order[k - 1]);
        ahead_in_backward = ahead_in_backward && g != backward_gather.end() && g->second < grads_done[order[k]];
        reduced_inside = reduced_inside && reduce_issued[order[k]] < grads_done[order[k - 1]];
      }
      for (auto [what, holds] : {std::pair{"forward gathers one unit ahead", ahead_in_forward},
                                 std::pair{"backward gathers one unit ahead", ahead_in_backward},
                                 std::pair{"reductions start inside backward", reduced_inside}}) {
        if (holds != overlap) {
          return internal_error(fmt::format("rank {}, overlap {}: '{}' is {}", c.rank(), overlap, what, holds));
        }
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// The bytes each step sends (what kiln bench fsdp's comm_bytes_ratio_vs_ddp
// divides by DDP's 2 x 4 bytes x parameters) are the schedule's, counted by
// hand: stages 1 and 2 reduce-scatter the gradients and allgather the
// stepped shares (DDP's bytes: an allreduce is the two); stage 3 gathers
// every unit in forward and again in backward, except the unit forward ran
// last, which stays gathered into backward (as FSDP keeps its root), and
// reduce-scatters every unit: 1.5 - (last unit's parameters) / (2 x all).
// The units' sizes divide by 4, so no padding is sent.
TEST(ShardedDataParallel, EachStepSendsTheSchedulesBytes) {
  auto r = comm::testing::run_ranks(4, [](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    for (int stage : {1, 2, 3}) {
      for (bool overlap : {true, false}) {
        const Case s{.stage = stage, .overlap = overlap};
        Net net = make_net(1);
        KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
        // Step 0 records the execution order; step 1's bytes are the schedule's.
        KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, 0, 1));
        Data d = make_data(1);
        const int rows = kBatch / c.size();
        KILN_RETURN_IF_ERROR(z->backward(torch::mse_loss(
            net->forward(d.x.narrow(0, c.rank() * rows, rows)), d.y.narrow(0, c.rank() * rows, rows))));
        const std::size_t all = 4 * static_cast<std::size_t>(z->parameter_count());
        const std::size_t last = 4 * static_cast<std::size_t>(net->out->weight.numel() + net->out->bias.numel());
        // Without overlap, stage 3 gathers every unit once and keeps it
        // through backward (the bench's baseline): DDP's bytes too.
        const std::size_t want = stage == 3 && overlap ? 3 * all - last : 2 * all;
        if (z->last_sync().bytes != want) {
          return internal_error(fmt::format("stage {} overlap {}: sent {} bytes in a step, the schedule {} "
                                            "({} parameter bytes, {} in the last unit)",
                                            stage, overlap, z->last_sync().bytes, want, all, last));
        }
      }
    }
    return Status::ok();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// Saved by ZeRO-3 on 4 ranks, loaded by ZeRO-3 on 3 and ZeRO-1 on 2: the
// loaded parameters are the saved ones to the bit, and the loaded runs
// continue as one uninterrupted process would.
TEST(ShardedDataParallel, CheckpointsMoveAcrossWorldSizesAndStages) {
  const std::string dir = fmt::format("/tmp/kiln-zero-ckpt-{}", ::getpid());
  std::filesystem::remove_all(dir);
  torch::set_num_threads(1);
  const Case s3{.stage = 3};
  const torch::Tensor want = train_reference(s3, kSteps + 2);
  auto saved = comm::testing::run_ranks(4, [&](comm::Communicator& c) -> Status {
    torch::set_num_threads(1);
    Net net = make_net(1);
    KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s3));
    KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s3, 0, kSteps));
    ckpt::StateView view;
    std::vector<torch::Tensor> keep;
    std::string layout, optim;
    KILN_RETURN_IF_ERROR(z->capture(&view, &keep, &layout, &optim));
    KILN_ASSIGN_OR_RETURN(auto cp, ckpt::Checkpointer::create({.root = dir, .comm = &c}));
    KILN_RETURN_IF_ERROR(cp->save(view, kSteps, Deadline::after_seconds(60)));
    KILN_RETURN_IF_ERROR(z->gather_all());
    if (c.rank() == 0) torch::save(flat_parameters(*net), dir + "/saved-parameters.pt");
    return Status::ok();
  });
  ASSERT_TRUE(saved.ok()) << saved.report;
  for (auto [ranks, stage] : {std::pair{3, 3}, std::pair{2, 1}}) {
    auto resumed = comm::testing::run_ranks(ranks, [&, ranks = ranks, stage = stage](comm::Communicator& c) -> Status {
      torch::set_num_threads(1);
      Net net = make_net(7);  // overwritten by the checkpoint
      const Case s{.stage = stage};
      KILN_ASSIGN_OR_RETURN(auto z, make_sharded(net, c, s));
      KILN_ASSIGN_OR_RETURN(auto loaded, ckpt::load_step(fmt::format("{}/step-{}", dir, kSteps), c.rank(), ranks));
      KILN_RETURN_IF_ERROR(z->restore(loaded));
      KILN_RETURN_IF_ERROR(z->gather_all());
      torch::Tensor saved;
      torch::load(saved, dir + "/saved-parameters.pt");
      if (!torch::equal(flat_parameters(*net), saved)) {
        return internal_error(fmt::format("loaded on {} ranks, stage {}: parameters differ from the "
                                          "saved ones by {:.3g}", ranks, stage,
                                          (flat_parameters(*net) - saved).abs().max().item<double>()));
      }
      KILN_RETURN_IF_ERROR(train_steps(*z, net, c, s, kSteps, 2));
      KILN_RETURN_IF_ERROR(z->gather_all());
      return compare(flat_parameters(*net), want, 1e-5, fmt::format("resumed on {} ranks, stage {}", ranks, stage));
    });
    EXPECT_TRUE(resumed.ok()) << resumed.report;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln::parallel::zero
