// kiln train with tensor and pipeline parallelism on real processes: every
// layout (tp x pp x dp up to 8 ranks, both schedules, sequence parallelism,
// ZeRO-1 across replicas) trains the GPT exactly as one process does.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kiln/data/dataset_writer.h"
#include "kiln/data/sampler.h"
#include "kiln/data/testing/test_dataset.h"
#include "kiln/train/task.h"
#include "kiln/train/testing/train_on.h"
#include "kiln/train/trainer.h"

namespace kiln::train {
namespace {

using data::testing::ScratchDir;
using testing::max_relative_difference;
using testing::step_records;
using testing::train_on;

constexpr int kSeq = 8, kVocab = 32;
// bf16 against fp32 (docs/train.md "Tensor and pipeline parallelism"):
// relative L2 over the whole model after 5 steps, and the final eval loss
// (measured: about 1e-2 and 7e-5).
constexpr double kBf16ParameterTolerance = 2e-2, kBf16LossTolerance = 1e-3;

// Learnable sequences: each token follows from the one before, with noise.
void write_tokens(const std::string& dir, int n, std::uint64_t seed) {
  data::Schema schema{{"tokens", data::FieldKind::kTensor, data::DType::kInt32}};
  auto w = data::DatasetWriter::create(dir, schema, {.shard_bytes = 4 << 10});
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::uint64_t x = seed;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int32_t> t(kSeq + 1);
    t[0] = static_cast<std::int32_t>((x = data::mix64(x)) % kVocab);
    for (int k = 1; k <= kSeq; ++k) {
      const bool noise = (x = data::mix64(x)) % 5 == 0;
      t[static_cast<std::size_t>(k)] = noise ? static_cast<std::int32_t>(x % kVocab) : (t[static_cast<std::size_t>(k) - 1] * 3 + 1) % kVocab;
    }
    std::vector<std::uint8_t> bytes(t.size() * sizeof(std::int32_t));
    std::memcpy(bytes.data(), t.data(), bytes.size());
    ASSERT_TRUE(w->add({data::FieldValue::tensor(data::DType::kInt32, {kSeq + 1}, bytes)}).is_ok());
  }
  ASSERT_TRUE(w->finish().is_ok());
}

struct GptFixture {
  GptFixture() {
    write_tokens(dir.path() + "/data/train", 256, 1);
    write_tokens(dir.path() + "/data/test", 40, 2);
  }
  TrainConfig config(int layers, std::int64_t steps) const {
    TrainConfig c;
    c.model = {.kind = ModelKind::kGpt, .vocab = kVocab, .seq_len = kSeq, .d_model = 16, .layers = layers,
               .heads = 4, .dropout = 0.0};
    c.data = {.dir = dir.path() + "/data", .cache_dir = dir.path() + "/cache", .shuffle_window = 64};
    c.optim = {.kind = OptimizerKind::kAdamW, .lr = 3e-3, .warmup_steps = 1, .grad_clip = 1.0};
    c.train = {.batch_size = 16, .grad_accum = 1, .max_steps = steps, .seed = 11, .threads = 1};
    c.eval = {.every = 0, .batch_size = 10};
    return c;
  }
  ScratchDir dir;
};

struct Layout {
  int tp, pp, dp;
  int microbatches = 4;
  std::string schedule = "1f1b";
  int chunks = 1;
  bool sequence_parallel = false;
  Strategy strategy = Strategy::kDdp;
  Precision precision = Precision::kFp32;
  std::string name() const {
    return fmt::format("tp {} pp {} dp {} m {} {}{}{}{}{}", tp, pp, dp, microbatches, schedule,
                       chunks > 1 ? fmt::format(" v {}", chunks) : "", sequence_parallel ? " sp" : "",
                       strategy != Strategy::kDdp ? std::string(" ") + strategy_name(strategy) : "", precision == Precision::kBf16 ? " bf16" : "");
  }
};

TrainConfig with_layout(TrainConfig c, const Layout& l) {
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.microbatches = l.microbatches;
  c.parallel.schedule = l.schedule;
  c.parallel.chunks = l.chunks;
  c.parallel.sequence_parallel = l.sequence_parallel;
  c.parallel.strategy = l.strategy;
  c.parallel.precision = l.precision;
  // One process with the whole batch accumulates the same micro-batches.
  if (!c.parallel.three_d()) c.train.grad_accum = l.microbatches;
  return c;
}

// ||a - b|| / ||a|| over the whole model. Not element-wise: the gradient of
// the attention's key bias is zero in exact arithmetic (softmax ignores a
// constant per query), so AdamW's first updates of those elements are float
// rounding scaled up to +-lr, and differ under any reordering of the sums.
double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(a[i]) * a[i];
  }
  return std::sqrt(diff / norm);
}

// The parameter of the whole model where a and b differ most (relative L2).
std::string worst_parameter(const ModelConfig& m, const std::vector<float>& a, const std::vector<float>& b) {
  std::unique_ptr<Task> whole = make_task(m);
  std::string worst;
  double worst_err = -1;
  std::size_t offset = 0;
  for (const auto& p : whole->module()->named_parameters()) {
    const auto n = static_cast<std::size_t>(p.value().numel());
    std::vector<float> pa(a.begin() + offset, a.begin() + offset + n), pb(b.begin() + offset, b.begin() + offset + n);
    const double err = relative_l2(pa, pb);
    if (err > worst_err) worst_err = err, worst = fmt::format("{} ({:.2e})", p.key(), err);
    offset += n;
  }
  return worst;
}

TEST(Trainer3d, EveryLayoutMatchesOneProcessWithTheWholeBatch) {
  GptFixture f;
  const TrainConfig base = f.config(8, 5);
  auto one = train_on(1, base, f.dir.path() + "/one");
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  auto shorter = train_on(1, f.config(8, 2), f.dir.path() + "/shorter");
  ASSERT_TRUE(shorter.is_ok()) << shorter.status().to_string();
  ASSERT_GT(max_relative_difference(one->parameters, shorter->parameters), 1e-3)
      << "training does not move the parameters: the comparison below would be vacuous";
  std::vector<Layout> layouts;
  for (int tp : {1, 2}) {
    for (int pp : {1, 2, 4}) {
      for (int dp : {1, 2}) {
        // tp = pp = 1, dp = 2 is kiln train's data-parallel loop on the GPT.
        if (tp * pp * dp == 1 || tp * pp * dp > 8) continue;
        layouts.push_back({tp, pp, dp, pp == 4 ? 4 : 2});
      }
    }
  }
  layouts.push_back({1, 2, 1, 4, "interleaved", 2});
  layouts.push_back({2, 4, 1, 4, "interleaved", 2});
  layouts.push_back({2, 2, 2, 2, "1f1b", 1, /*sequence_parallel=*/true});
  for (const Layout& l : layouts) {
    const int world = l.tp * l.pp * l.dp;
    auto r = train_on(world, with_layout(base, l), f.dir.path() + "/layout");
    ASSERT_TRUE(r.is_ok()) << l.name() << ": " << r.status().to_string();
    ASSERT_EQ(r->parameters.size(), one->parameters.size()) << l.name();
    EXPECT_LE(relative_l2(one->parameters, r->parameters), 1e-5)
        << l.name() << ": worst " << worst_parameter(base.model, one->parameters, r->parameters);
    EXPECT_NEAR(r->eval_loss, one->eval_loss, 1e-5 * one->eval_loss) << l.name();
  }
}

// Diagnosis of a pipeline of 2 stages × 2 replicas: every rank's step records
// (--trace-dir) carry its mesh coordinate, and each stage's data-parallel
// gradient sync overlaps its last backward: buckets are issued before that
// backward returns, not all after it.
TEST(Trainer3d, StepRecordsCarryTheMeshAndGradientSyncOverlapsTheLastBackward) {
  GptFixture f;
  TrainConfig c = with_layout(f.config(4, 3), {1, 2, 2, 2});
  // Several buckets per stage: DDP's first bucket holds up to 1 MiB (as
  // PyTorch's), so each stage needs more than that (two layers of width 128:
  // ~1.6 MB of gradients), and a small cap splits the rest.
  c.model.d_model = 128;
  c.ddp.bucket_cap_mib = 0.25;
  const std::string trace = f.dir.path() + "/trace";
  auto r = train_on(4, c, f.dir.path() + "/out", -1, {.trace_dir = trace, .sample_interval_s = 0});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  // MeshLayout's rank order (tensor innermost, then data, then pipeline):
  // with tp 1 and dp 2, rank = 2 · pp + dp.
  for (int rank = 0; rank < 4; ++rank) {
    const std::vector<nlohmann::json> steps = step_records(trace, rank);
    EXPECT_EQ(steps.size(), 3u) << "rank " << rank;
    for (const nlohmann::json& j : steps) {
      EXPECT_EQ(j["mesh"], (nlohmann::json{{"dp", rank % 2}, {"pp", rank / 2}, {"tp", 0}}))
          << "rank " << rank << ": " << j.dump();
      ASSERT_TRUE(j.contains("collectives")) << "rank " << rank << ": " << j.dump();
      const auto buckets = static_cast<int>(j["collectives"].size());
      EXPECT_GE(buckets, 2) << "rank " << rank << ": " << j.dump();
      // Each bucket is issued by the gradient hooks as its gradients are
      // ready, so the first ones travel while later layers' backward runs.
      EXPECT_EQ(j["collectives_in_backward"].get<int>(), buckets)
          << "rank " << rank << ": buckets issued after the last backward returned: " << j.dump();
    }
  }
}

// ZeRO-1 across the replicas, clipping by the global norm: a bound low enough
// to clip every step, so the norm over the tensor shards (replicated
// parameters once), the stages and the replicas' shares must be one
// process's for the runs to match.
TEST(Trainer3d, Zero1WithGradClipMatchesOneProcess) {
  GptFixture f;
  TrainConfig base = f.config(4, 4);
  base.optim.grad_clip = 0.05;
  auto one = train_on(1, base, f.dir.path() + "/one");
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  TrainConfig unclipped = base;
  unclipped.optim.grad_clip = 0;
  auto free = train_on(1, unclipped, f.dir.path() + "/free");
  ASSERT_TRUE(free.is_ok()) << free.status().to_string();
  ASSERT_GT(relative_l2(one->parameters, free->parameters), 1e-3) << "the bound does not clip: vacuous";
  for (const Layout& l : {Layout{2, 2, 2, 2, "1f1b", 1, false, Strategy::kZero1},
                          Layout{2, 2, 2, 4, "interleaved", 2, false, Strategy::kZero1},
                          Layout{2, 1, 2, 2, "1f1b", 1, false, Strategy::kZero1},
                          Layout{2, 2, 2, 2, "1f1b", 1, /*sequence_parallel=*/true, Strategy::kZero1}}) {
    auto r = train_on(l.tp * l.pp * l.dp, with_layout(base, l), f.dir.path() + "/z");
    ASSERT_TRUE(r.is_ok()) << l.name() << ": " << r.status().to_string();
    EXPECT_LE(relative_l2(one->parameters, r->parameters), 1e-5)
        << l.name() << ": worst " << worst_parameter(base.model, one->parameters, r->parameters);
    EXPECT_NEAR(r->eval_loss, one->eval_loss, 1e-5 * one->eval_loss) << l.name();
  }
}

// Saved by TP 2 x PP 2 x DP 2; continued by TP 1 x PP 1 x DP 2 (plain data
// parallelism) and by TP 2 x PP 1 x DP 1: both end where one uninterrupted
// process ends. And a 3D run killed mid-way resumes bit-identically.
TEST(Trainer3d, CheckpointsResumeOnAnotherLayout) {
  GptFixture f;
  auto config = [&](std::int64_t steps) {
    TrainConfig c = f.config(4, steps);
    c.optim.schedule = Schedule::kConstant;  // 3 steps then 3 follow 6 straight ones
    c.optim.warmup_steps = 0;
    return c;
  };
  auto want = train_on(1, config(6), f.dir.path() + "/want");
  ASSERT_TRUE(want.is_ok()) << want.status().to_string();
  TrainConfig first = with_layout(config(3), {2, 2, 2, 2});
  first.checkpoint = {.dir = f.dir.path() + "/ckpt", .every = 0};
  auto saved = train_on(8, first, f.dir.path() + "/saved");
  ASSERT_TRUE(saved.is_ok()) << saved.status().to_string();
  for (const Layout& l : {Layout{1, 1, 2, 2}, Layout{2, 1, 1, 2}}) {
    const std::string copy = f.dir.path() + fmt::format("/ckpt-{}{}{}", l.tp, l.pp, l.dp);
    std::filesystem::copy(first.checkpoint.dir, copy, std::filesystem::copy_options::recursive);
    TrainConfig then = with_layout(config(6), l);
    then.checkpoint = {.dir = copy, .every = 0};
    auto r = train_on(l.tp * l.pp * l.dp, then, f.dir.path() + "/then");
    ASSERT_TRUE(r.is_ok()) << l.name() << ": " << r.status().to_string();
    EXPECT_EQ(r->start_step, 3) << l.name();
    EXPECT_LE(relative_l2(want->parameters, r->parameters), 1e-5)
        << l.name() << ": worst " << worst_parameter(then.model, want->parameters, r->parameters);
  }
}

// Trains `l` for 6 steps straight, and again killed after step 5 and resumed:
// the two must end bit-identical.
void expect_bit_identical_resume(const GptFixture& f, const Layout& l) {
  const int world = l.tp * l.pp * l.dp;
  TrainConfig straight = with_layout(f.config(4, 6), l);
  const std::string tag = fmt::format("{}{}{}-{}-{}", l.tp, l.pp, l.dp, strategy_name(l.strategy),
                                      l.precision == Precision::kBf16 ? "bf16" : "fp32");
  straight.checkpoint = {.dir = f.dir.path() + "/ckpt-a-" + tag, .every = 2};
  auto a = train_on(world, straight, f.dir.path() + "/a");
  ASSERT_TRUE(a.is_ok()) << l.name() << ": " << a.status().to_string();
  TrainConfig crashed = straight;
  crashed.checkpoint.dir = f.dir.path() + "/ckpt-b-" + tag;
  ASSERT_FALSE(train_on(world, crashed, f.dir.path() + "/b1", /*crash_after_step=*/5).is_ok()) << l.name();
  auto resumed = train_on(world, crashed, f.dir.path() + "/b2");
  ASSERT_TRUE(resumed.is_ok()) << l.name() << ": " << resumed.status().to_string();
  // Saves every 2 steps, one in flight: the save at step 4 waits for step 2
  // to commit, so step 2 surely is before the crash after step 5; step 4 may
  // still be in flight (the kill can land before its commit).
  EXPECT_GE(resumed->start_step, 2) << l.name();
  EXPECT_LE(resumed->start_step, 4) << l.name();
  EXPECT_EQ(resumed->parameters, a->parameters) << l.name();
  EXPECT_EQ(resumed->parameter_digest, a->parameter_digest) << l.name();
}

TEST(Trainer3d, ResumeAfterSigkillIsBitIdentical) {
  GptFixture f;
  expect_bit_identical_resume(f, {2, 2, 1, 2});
}

// ZeRO-1 saves its optimizer shares gathered into the mesh/ form; the
// resumed run cuts its shares again. Clipping on (the fixture's bound): the
// replicated gradients kept for the norm must start each step afresh. And in
// bf16, whose fp32 master shares are what the checkpoint holds.
TEST(Trainer3d, Zero1ResumeAfterSigkillIsBitIdentical) {
  GptFixture f;
  expect_bit_identical_resume(f, {2, 1, 2, 2, "1f1b", 1, false, Strategy::kZero1});
  expect_bit_identical_resume(f, {2, 1, 2, 2, "1f1b", 1, false, Strategy::kZero1, Precision::kBf16});
}

// A 3D job restarted by its launcher recovers from the ranks' in-memory
// snapshots with storage gone: the ranks hold only their stages' canonical
// rows, gathered whole, and every rank cuts its shards again. Bit-identical
// to the uninterrupted run; a finished job leaves nothing in memory.
// `lose_snapshot_of`: that rank's own snapshot is deleted after the crash,
// so it must come from its buddy's replica over the communicator.
void expect_recovery_from_memory(const GptFixture& f, const Layout& l, int lose_snapshot_of = -1) {
  const int world = l.tp * l.pp * l.dp;
  TrainConfig straight = with_layout(f.config(4, 6), l);
  auto a = train_on(world, straight, f.dir.path() + "/a");
  ASSERT_TRUE(a.is_ok()) << l.name() << ": " << a.status().to_string();
  TrainConfig c = straight;
  const std::string tag = fmt::format("{}{}{}-{}", l.tp, l.pp, l.dp, strategy_name(l.strategy));
  c.checkpoint = {.dir = f.dir.path() + "/ckpt-m-" + tag, .every = 2, .memory_dir = f.dir.path() + "/shm-" + tag};
  ASSERT_FALSE(train_on(world, c, f.dir.path() + "/b1", /*crash_after_step=*/5).is_ok()) << l.name();
  std::filesystem::remove_all(c.checkpoint.dir);
  if (lose_snapshot_of >= 0) {
    const std::string own = fmt::format("{}/rank-{}", c.checkpoint.memory_dir, lose_snapshot_of);
    ASSERT_TRUE(std::filesystem::exists(own)) << own;
    std::filesystem::remove_all(own);
  }
  ::setenv("KILN_RESTART_COUNT", "1", 1);
  auto resumed = train_on(world, c, f.dir.path() + "/b2");
  ::unsetenv("KILN_RESTART_COUNT");
  ASSERT_TRUE(resumed.is_ok()) << l.name() << ": " << resumed.status().to_string();
  EXPECT_GE(resumed->start_step, 2) << l.name();
  EXPECT_LE(resumed->start_step, 4) << l.name();
  EXPECT_EQ(resumed->parameters, a->parameters) << l.name();
  EXPECT_FALSE(std::filesystem::exists(c.checkpoint.memory_dir)) << l.name();
}

TEST(Trainer3d, ARestartedJobRecoversFromMemoryWithoutStorage) {
  GptFixture f;
  expect_recovery_from_memory(f, {2, 2, 1, 2});
  expect_recovery_from_memory(f, {1, 2, 2, 2, "1f1b", 1, false, Strategy::kZero1}, /*lose_snapshot_of=*/1);
}

// Saved by ZeRO-1 on TP 2 x PP 2 x DP 2; continued by plain data parallelism
// (TP 1 x PP 1 x DP 2: ddp, ZeRO-3 and, on one rank, ZeRO-2), by ZeRO-1 on
// TP 2 x PP 1 x DP 2 and on the same layout: all end where one
// uninterrupted process ends.
TEST(Trainer3d, Zero1CheckpointsResumeOnAnotherLayout) {
  GptFixture f;
  auto config = [&](std::int64_t steps) {
    TrainConfig c = f.config(4, steps);
    c.optim.schedule = Schedule::kConstant;
    c.optim.warmup_steps = 0;
    return c;
  };
  auto want = train_on(1, config(6), f.dir.path() + "/want");
  ASSERT_TRUE(want.is_ok()) << want.status().to_string();
  TrainConfig first = with_layout(config(3), {2, 2, 2, 2, "1f1b", 1, false, Strategy::kZero1});
  first.checkpoint = {.dir = f.dir.path() + "/ckpt", .every = 0};
  auto saved = train_on(8, first, f.dir.path() + "/saved");
  ASSERT_TRUE(saved.is_ok()) << saved.status().to_string();
  for (const Layout& l : {Layout{1, 1, 2, 2}, Layout{1, 1, 2, 2, "1f1b", 1, false, Strategy::kZero3},
                          Layout{1, 1, 1, 2, "1f1b", 1, false, Strategy::kZero2},
                          Layout{2, 1, 2, 2, "1f1b", 1, false, Strategy::kZero1},
                          Layout{2, 2, 2, 2, "1f1b", 1, false, Strategy::kZero1}}) {
    const std::string copy = f.dir.path() + fmt::format("/ckpt-{}{}{}-{}", l.tp, l.pp, l.dp, strategy_name(l.strategy));
    std::filesystem::copy(first.checkpoint.dir, copy, std::filesystem::copy_options::recursive);
    TrainConfig then = with_layout(config(6), l);
    then.checkpoint = {.dir = copy, .every = 0};
    auto r = train_on(l.tp * l.pp * l.dp, then, f.dir.path() + "/then");
    ASSERT_TRUE(r.is_ok()) << l.name() << ": " << r.status().to_string();
    EXPECT_EQ(r->start_step, 3) << l.name();
    EXPECT_LE(relative_l2(want->parameters, r->parameters), 1e-5)
        << l.name() << ": worst " << worst_parameter(then.model, want->parameters, r->parameters);
  }
}

// bf16 compute and communication over fp32 master shares (ZeRO-1): the
// tolerance against fp32 on one process documented in docs/train.md, and no
// worse than bf16 on one process (ZeRO-1 over one rank) is itself. The lower
// bound shows the run computed in bf16 at all.
TEST(Trainer3d, Bf16StaysWithinItsToleranceOfFp32) {
  GptFixture f;
  const TrainConfig base = f.config(4, 5);
  auto one = train_on(1, base, f.dir.path() + "/one");
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  const Layout alone{1, 1, 1, 2, "1f1b", 1, false, Strategy::kZero1, Precision::kBf16};
  auto one_bf16 = train_on(1, with_layout(base, alone), f.dir.path() + "/one-bf16");
  ASSERT_TRUE(one_bf16.is_ok()) << one_bf16.status().to_string();
  const double alone_params = relative_l2(one->parameters, one_bf16->parameters);
  fmt::print("one process bf16: parameters {:.3e} relative L2, eval loss {:.3e} relative\n", alone_params,
             std::abs(one_bf16->eval_loss - one->eval_loss) / one->eval_loss);
  for (const Layout& l : {Layout{2, 2, 2, 2, "1f1b", 1, false, Strategy::kZero1, Precision::kBf16},
                          Layout{2, 2, 1, 4, "interleaved", 2, false, Strategy::kZero1, Precision::kBf16}}) {
    auto r = train_on(l.tp * l.pp * l.dp, with_layout(base, l), f.dir.path() + "/bf16");
    ASSERT_TRUE(r.is_ok()) << l.name() << ": " << r.status().to_string();
    const double params = relative_l2(one->parameters, r->parameters);
    const double loss = std::abs(r->eval_loss - one->eval_loss) / one->eval_loss;
    fmt::print("{}: parameters {:.3e} relative L2, eval loss {:.3e} relative (fp32 {:.6f}, bf16 {:.6f})\n", l.name(),
               params, loss, one->eval_loss, r->eval_loss);
    EXPECT_GT(params, 1e-4) << l.name() << ": as close as fp32 layouts are: not computed in bf16?";
    EXPECT_LE(params, kBf16ParameterTolerance) << l.name();
    EXPECT_LE(params, 2 * alone_params) << l.name() << ": bf16 on one process is " << alone_params;
    EXPECT_LE(loss, kBf16LossTolerance) << l.name();
  }
}

TEST(Trainer3d, ExplicitStageLayersAndTheirErrors) {
  GptFixture f;
  TrainConfig c = with_layout(f.config(6, 2), {1, 4, 1, 4});
  c.parallel.stage_layers = {1, 2, 2, 1};
  auto one = train_on(1, f.config(6, 2), f.dir.path() + "/one");
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  auto r = train_on(4, c, f.dir.path() + "/uneven");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_LE(relative_l2(one->parameters, r->parameters), 1e-5);
  c.parallel.stage_layers = {1, 2, 2};
  auto bad = train_on(4, c, f.dir.path() + "/bad");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().to_string().find("parallel.stage_layers has 3 entries summing to 5"), std::string::npos)
      << bad.status().to_string();
}

}  // namespace
}  // namespace kiln::train
