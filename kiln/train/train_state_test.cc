// The checkpoint adapter across strategies: a checkpoint saved by ZeRO-3 on
// 4 ranks loads into plain data parallelism on 2 ranks (a whole module and
// LibTorch's AdamW on each, restored as `kiln train --strategy ddp` restores
// it) with the parameters and both Adam moments the sharded run held, to the
// bit. The loss-curve half of the checkpoint item (the loaded run
// continues as one process would) is Trainer.ShardedCheckpointsResume-
// OnAnotherWorldSizeAndStrategy.
#include "kiln/train/train_state.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/parallel/unit_hooks.h"

namespace kiln::train {
namespace {

namespace zero = parallel::zero;

constexpr int kSaveSteps = 3;
constexpr double kLr = 0.01;
constexpr double kWeightDecay = 0.01;

// Five units (in, blocks.0-2, out), each through run_unit. Units follow
// named_parameters() order and each unit's parameters follow it within the
// unit, so the units' flats laid end to end are the module's parameters laid
// end to end: what lets the test compare without the layout code under test.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    in = register_module("in", torch::nn::Linear(8, 16));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 3; ++i) blocks->push_back(torch::nn::Linear(16, 16));
    out = register_module("out", torch::nn::Linear(16, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = parallel::run_unit(*in, [&] { return torch::tanh(in->forward(x)); });
    for (const auto& b : *blocks) {
      x = parallel::run_unit(*b,
                             [&] { return torch::tanh(b->as<torch::nn::Linear>()->forward(x)); });
    }
    return parallel::run_unit(*out, [&] { return out->forward(x); });
  }
  torch::nn::Linear in{nullptr}, out{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Net);

// What the sharded ranks held when they saved, assembled whole from every
// rank's share: per kind ("param", "exp_avg", "exp_avg_sq"), the units'
// flats end to end.
struct Held {
  torch::Tensor param, exp_avg, exp_avg_sq;
};

std::string share_file(const std::string& dir, int rank) {
  return fmt::format("{}/held.rank{}.pt", dir, rank);
}

// Each saving rank writes the shares its checkpoint view points at (the
// memory the wrapper trains in, not the files): per entry, the rows and a
// [row_offset, rows, total] record, in the view's order.
Status write_shares(const ckpt::StateView& view, const std::string& path) {
  std::vector<torch::Tensor> out;
  for (const ckpt::EntryView& e : view.entries()) {
    if (!e.is_tensor || e.name.rfind("zero/", 0) != 0) continue;
    out.push_back(torch::tensor({e.spec.row_offset, e.spec.rows, e.spec.shape[0]}, torch::kInt64));
    out.push_back(
        torch::from_blob(const_cast<std::byte*>(e.data), {e.spec.rows}, torch::kFloat32).clone());
  }
  torch::save(out, path);
  return Status::ok();
}

Result<Held> assemble(const std::string& dir, int world, const std::vector<std::string>& names) {
  std::vector<torch::Tensor> whole(names.size());
  for (int r = 0; r < world; ++r) {
    std::vector<torch::Tensor> shares;
    torch::load(shares, share_file(dir, r));
    if (shares.size() != 2 * names.size())
      return internal_error(fmt::format("rank {} wrote {} tensors", r, shares.size()));
    for (std::size_t i = 0; i < names.size(); ++i) {
      auto rec = shares[2 * i].accessor<std::int64_t, 1>();
      if (!whole[i].defined()) whole[i] = torch::full({rec[2]}, std::nanf(""), torch::kFloat32);
      whole[i].narrow(0, rec[0], rec[1]).copy_(shares[2 * i + 1]);
    }
  }
  std::map<std::string, std::vector<torch::Tensor>> by_kind;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (whole[i].isnan().any().item<bool>())
      return internal_error(names[i] + ": no rank held some rows");
    by_kind[names[i].substr(names[i].rfind('/') + 1)].push_back(whole[i]);
  }
  return Held{torch::cat(by_kind["param"]), torch::cat(by_kind["exp_avg"]),
              torch::cat(by_kind["exp_avg_sq"])};
}

// Saves step kSaveSteps of ZeRO-3 training on `world` ranks under
// dir/ckpt, and every rank's shares (write_shares) beside it.
Status save_sharded(comm::Communicator& c, const std::string& dir, zero::Precision precision) {
  torch::set_num_threads(1);
  torch::manual_seed(1);
  Net net;
  zero::ZeroOptions o;
  o.stage = 3;
  o.precision = precision;
  o.optimizer.lr = kLr;
  o.optimizer.weight_decay = kWeightDecay;
  KILN_ASSIGN_OR_RETURN(auto z, zero::ShardedDataParallel::create(net.ptr(), c, o));
  const auto dtype = precision == zero::Precision::kBf16 ? torch::kBFloat16 : torch::kFloat32;
  for (int step = 0; step < kSaveSteps; ++step) {
    torch::manual_seed(100 * step + c.rank());
    auto x = torch::randn({6, 8}).to(dtype), y = torch::randn({6, 4});
    KILN_RETURN_IF_ERROR(z->backward(torch::mse_loss(net->forward(x).to(torch::kFloat32), y)));
    KILN_RETURN_IF_ERROR(z->step(kLr));
  }
  Snapshot snap;
  KILN_RETURN_IF_ERROR(capture_sharded_state(*z, {kSaveSteps, 0, 0}, c.rank(), c.size(), &snap));
  KILN_ASSIGN_OR_RETURN(auto cp, ckpt::Checkpointer::create({.root = dir + "/ckpt", .comm = &c}));
  KILN_RETURN_IF_ERROR(cp->save(snap.view, kSaveSteps, Deadline::after_seconds(60)));
  KILN_RETURN_IF_ERROR(cp->wait(Deadline::after_seconds(60)));
  if (c.rank() == 0) {
    std::string names;
    for (const auto& e : snap.view.entries()) {
      if (e.is_tensor && e.name.rfind("zero/", 0) == 0) names += e.name + "\n";
    }
    torch::save(
        torch::from_blob(names.data(), {static_cast<std::int64_t>(names.size())}, torch::kUInt8)
            .clone(),
        dir + "/names.pt");
  }
  return write_shares(snap.view, share_file(dir, c.rank()));
}

std::vector<std::string> read_names(const std::string& dir) {
  torch::Tensor t;
  torch::load(t, dir + "/names.pt");
  std::string all(reinterpret_cast<const char*>(t.data_ptr()), static_cast<std::size_t>(t.numel()));
  std::vector<std::string> names;
  for (std::size_t at = 0, nl; (nl = all.find('\n', at)) != std::string::npos; at = nl + 1) {
    names.push_back(all.substr(at, nl - at));
  }
  return names;
}

// On each data-parallel rank: a fresh model and AdamW, restored from the
// whole checkpoint as the trainer's ddp strategy reads it.
Status load_into_ddp(comm::Communicator& c, const std::string& dir, const Held& held) {
  torch::set_num_threads(1);
  torch::manual_seed(7 + c.rank());  // other weights than the saved run's: all overwritten
  Net net;
  torch::optim::AdamW adam(net->parameters(),
                           torch::optim::AdamWOptions(kLr).weight_decay(kWeightDecay));
  KILN_ASSIGN_OR_RETURN(auto loaded,
                        ckpt::load_step(fmt::format("{}/ckpt/step-{}", dir, kSaveSteps), 0, 1));
  KILN_ASSIGN_OR_RETURN(Progress progress, restore_state(loaded, *net, adam, c.rank()));
  if (progress.step != kSaveSteps)
    return internal_error(fmt::format("restored step {}", progress.step));
  std::vector<torch::Tensor> params, m1, m2;
  for (const auto& p : net->parameters()) {
    params.push_back(p.detach().reshape({-1}));
    auto it = adam.state().find(c10::guts::to_string(p.unsafeGetTensorImpl()));
    if (it == adam.state().end())
      return internal_error("a parameter has no AdamW state after the load");
    auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
    if (st.step() != kSaveSteps)
      return internal_error(fmt::format("AdamW step {} after the load", st.step()));
    m1.push_back(st.exp_avg().reshape({-1}));
    m2.push_back(st.exp_avg_sq().reshape({-1}));
  }
  for (auto [what, got, want] : {std::tuple{"parameters", torch::cat(params), held.param},
                                 std::tuple{"exp_avg", torch::cat(m1), held.exp_avg},
                                 std::tuple{"exp_avg_sq", torch::cat(m2), held.exp_avg_sq}}) {
    if (got.sizes() != want.sizes() || !torch::equal(got, want)) {
      return internal_error(fmt::format(
          "rank {}/{}: {} differ from what the ZeRO-3 ranks held (max abs {:.3g})", c.rank(),
          c.size(), what,
          got.sizes() == want.sizes() ? (got - want).abs().max().item<double>() : -1.0));
    }
  }
  return Status::ok();
}

TEST(TrainState, AZero3CheckpointOnFourRanksLoadsIntoDdpOnTwoBitExactly) {
  // bf16 too: the checkpoint holds the fp32 master shares, which DDP keeps.
  for (zero::Precision precision : {zero::Precision::kFp32, zero::Precision::kBf16}) {
    const std::string dir = fmt::format("/tmp/kiln-zero-to-ddp-{}", ::getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    auto saved = comm::testing::run_ranks(
        4, [&](comm::Communicator& c) { return save_sharded(c, dir, precision); });
    ASSERT_TRUE(saved.ok()) << saved.report;
    auto held = assemble(dir, 4, read_names(dir));
    ASSERT_TRUE(held.is_ok()) << held.status().to_string();
    auto loaded = comm::testing::run_ranks(
        2, [&](comm::Communicator& c) { return load_into_ddp(c, dir, *held); });
    EXPECT_TRUE(loaded.ok()) << (precision == zero::Precision::kBf16 ? "bf16: " : "fp32: ")
                             << loaded.report;
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace kiln::train
