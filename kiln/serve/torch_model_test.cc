// load_torch_model on a CNN checkpoint written the way kiln train writes
// one: what a replica's forward pass costs the host.
#include "kiln/serve/torch_model.h"

#include <gtest/gtest.h>
#include <time.h>
#include <torch/torch.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/base/testing/log_capture.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/train/task.h"
#include "kiln/train/train_state.h"

// The size caffe2's thread pool is created with (warm_up_torch sets it).
C10_DECLARE_int(pthreadpool_size);

namespace kiln::serve {
namespace {

using ckpt::testing::TempDir;

// The make demo CNN with an optimizer's state beside its weights, committed
// under `root` as step 1.
void save_cnn(const std::string& root) {
  train::ModelConfig c;
  torch::manual_seed(1);
  auto task = train::make_task(c);
  torch::optim::AdamW opt(task->module()->parameters());
  train::Snapshot snap;
  ASSERT_TRUE(train::capture_state(*task->module(), opt, {1, 0, 0}, 0, 1, &snap).is_ok());
  auto ck = ckpt::Checkpointer::create({.root = root});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  const Status s = (*ck)->save(snap.view, 1, Deadline::after_seconds(60));
  ASSERT_TRUE(s.is_ok()) << s.to_string();
}

// The CNN save_cnn writes, loaded back as the weights a replica serves.
Result<StepWeights> saved_cnn_weights(const std::string& root) {
  save_cnn(root);
  KILN_ASSIGN_OR_RETURN(auto state, ckpt::load_latest(root, {}));
  return StepWeights::from_loaded(std::move(state));
}

std::unique_ptr<Model> load_cnn(const std::string& root, int threads) {
  auto state = ckpt::load_latest(root, {});
  EXPECT_TRUE(state.is_ok()) << state.status().to_string();
  if (!state.is_ok()) return nullptr;
  auto model = load_torch_model(StepWeights::from_loaded(std::move(*state)), {.threads = threads});
  EXPECT_TRUE(model.is_ok()) << model.status().to_string();
  return model.is_ok() ? std::move(model).value() : nullptr;
}

double cpu_seconds(clockid_t clock) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// A batch of `batch` copies of one 28x28 image (pixel i = i * step mod 256)
// gets bit-identical logits from both models.
template <typename ModelA, typename ModelB>
void expect_same_logits(ModelA& a, ModelB& b, int step, std::size_t batch) {
  Input image;
  for (int i = 0; i < 784; ++i) image.image.push_back(static_cast<float>((i * step) % 256));
  std::vector<Input> in_a(batch, image), in_b(batch, image);
  auto x = a.run(in_a);
  auto y = b.run(in_b);
  ASSERT_TRUE(x[0].is_ok() && y[0].is_ok());
  EXPECT_EQ(x[0]->logits, y[0]->logits);
}

// `b` 28x28 images, each unlike the others (pixel i of image j =
// (i * (7 + j) + 11 * j) mod 256).
std::vector<Input> distinct_images(int b) {
  std::vector<Input> batch(static_cast<std::size_t>(b));
  for (int j = 0; j < b; ++j) {
    for (int i = 0; i < 784; ++i) {
      batch[j].image.push_back(static_cast<float>((i * (7 + j) + 11 * j) % 256));
    }
  }
  return batch;
}

// Note [BLAS threads]: with threads = 1 a batch's forward pass, GEMMs
// included, runs on the calling thread alone; no BLAS helper thread works
// (or spins waiting for work) beside it. Compared as CPU time, so a busy
// host does not change the outcome: before the cap, the process used
// about 1.6x the calling thread's CPU at batch 32.
TEST(TorchModel, OneThreadRunsTheWholeForwardPassOnTheCallingThread) {
  TempDir dir;
  save_cnn(dir.path());
  auto model = load_cnn(dir.path(), 1);
  ASSERT_NE(model, nullptr);
  Input image;
  for (int i = 0; i < 784; ++i) image.image.push_back(static_cast<float>((i * 37) % 256));
  std::vector<Input> batch(32, image);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(model->run(batch)[0].is_ok());
  const double process0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  const double thread0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
  for (int i = 0; i < 40; ++i) model->run(batch);
  const double thread = cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - thread0;
  const double process = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process0;
  EXPECT_LT(process, 1.2 * thread) << "process CPU " << process << " s, the calling thread's "
                                   << thread << " s: another thread worked on the forward pass";
  const int blas = limit_blas_threads(1);  // 0: not OpenBLAS, nothing to cap
  EXPECT_TRUE(blas == 0 || blas == 1) << blas << " BLAS threads";
}

// Note [One copy]: the model built from views into the mapped shard file
// answers exactly as the one built from ckpt::load_step's verified copies.
// Note [Max pooling without autograd] (kiln/train/task.cc): the CNN's
// inference path pools without max_pool2d; its logits are the training
// path's, bit for bit.
TEST(TorchModel, TheCnnsInferencePoolingGivesTheTrainingPathsLogits) {
  train::ModelConfig c;
  torch::manual_seed(3);
  auto task = train::make_task(c);
  const auto images = torch::rand({5, 1, 28, 28}) * 255;
  const torch::Tensor with_autograd = task->infer(images);
  torch::Tensor without;
  {
    c10::InferenceMode inference;
    without = task->infer(images);
  }
  EXPECT_TRUE(torch::equal(with_autograd.detach(), without.clone()));
  EXPECT_FALSE(torch::equal(task->infer(torch::zeros({1, 1, 28, 28})).detach(),
                            task->infer(torch::ones({1, 1, 28, 28}) * 255).detach()));
}

TEST(TorchModel, MappedWeightsServeTheSameLogitsAsLoadedOnes) {
  TempDir dir;
  save_cnn(dir.path());
  const std::string step_dir = dir.path() + "/step-1";
  auto keep = [](std::string_view name) {
    return name.starts_with("param/") || name.starts_with("buffer/");
  };
  auto mapped = StepWeights::open(step_dir, keep);
  ASSERT_TRUE(mapped.is_ok()) << mapped.status().to_string();
  EXPECT_TRUE(mapped->mapped());
  EXPECT_EQ(mapped->find("optim"), nullptr);
  auto from_map = load_torch_model(*mapped, {.threads = 1});
  ASSERT_TRUE(from_map.is_ok()) << from_map.status().to_string();
  auto from_read = load_cnn(dir.path(), 1);
  ASSERT_NE(from_read, nullptr);
  expect_same_logits(**from_map, *from_read, 53, 3);
}

// Note [Weights served where they lie]: the parameters are views of the
// mapped cache file (no copy), the model keeps the mapping for its life, and
// it serves the logits of the model filled by copying.
TEST(TorchModel, WeightsServedInPlaceViewTheMappingForTheModelsLife) {
  TempDir dir;
  save_cnn(dir.path());
  const std::string step_dir = dir.path() + "/step-1";
  auto opened = StepWeights::open(step_dir, is_weight_entry);
  ASSERT_TRUE(opened.is_ok()) << opened.status().to_string();
  ASSERT_TRUE(opened->mapped());
  auto weights = std::make_shared<const StepWeights>(std::move(opened).value());
  std::weak_ptr<const StepWeights> alive = weights;
  auto built = build_torch_model(weights->shapes(), {.threads = 1});
  ASSERT_TRUE(built.is_ok()) << built.status().to_string();
  auto model = fill_torch_model_in_place(std::move(built).value(), std::move(weights));
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  EXPECT_FALSE(alive.expired()) << "the model must keep the mapping it views";
  auto copied = load_cnn(dir.path(), 1);
  ASSERT_NE(copied, nullptr);
  expect_same_logits(**model, *copied, 29, 4);
  model->reset();
  EXPECT_TRUE(alive.expired()) << "the mapping outlived the model";
}

// Note [The CNN's forward in oneDNN's layout] (blocked_cnn.h) and Note [The
// CNN's forward on oneDNN's own API] (onednn_cnn.h): the other forwards serve
// the module's logits within float rounding, for every image of a batch, at
// batch 1 (where the module's convolutions take im2col and the BLAS), 2, 20
// and 33, and again at 2 and 20 after 33 (oneDNN's plans are kept per batch
// size and re-pointed into an arena grown for 33).
TEST(TorchModel, TheOtherForwardsServeTheModulesLogitsWithinRounding) {
  TempDir dir;
  auto loaded = saved_cnn_weights(dir.path());
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const StepWeights& weights = *loaded;
  auto module = load_torch_model(weights, {.threads = 1, .cnn_forward = CnnForward::kModule});
  ASSERT_TRUE(module.is_ok()) << module.status().to_string();
  for (CnnForward kind :
       {CnnForward::kBlocked, CnnForward::kBlockedFcOnednn, CnnForward::kOnednn}) {
    auto blocked = load_torch_model(weights, {.threads = 1, .cnn_forward = kind});
    ASSERT_TRUE(blocked.is_ok()) << blocked.status().to_string();
    for (int b : {1, 2, 20, 33, 2, 20}) {
      std::vector<Input> batch = distinct_images(b);
      std::vector<Input> same = batch;
      auto want = (*module)->run(batch);
      auto got = (*blocked)->run(same);
      ASSERT_EQ(got.size(), want.size());
      for (int j = 0; j < b; ++j) {
        ASSERT_TRUE(want[j].is_ok() && got[j].is_ok()) << got[j].status().to_string();
        ASSERT_EQ(got[j]->logits.size(), 10u);
        for (int k = 0; k < 10; ++k) {
          EXPECT_NEAR(got[j]->logits[k], want[j]->logits[k], 1e-5)
              << cnn_forward_name(kind) << " batch " << b << " image " << j << " class " << k;
        }
      }
    }
  }
}

// Note [A oneDNN plan that fails] (torch_model.cc): oneDNN failing to build
// the plan of a new batch size (injected at 20, after batch 1's plan was
// built) switches the model to the module's forward: that batch, the same
// size again, a larger one and the sizes planned before all get the
// module's logits (bit for bit), no request fails, no plan is built after
// the failure, and the warning is logged once.
TEST(TorchModel, AOnednnPlanThatFailsServesTheModulesLogitsFromThenOnAndWarnsOnce) {
  TempDir dir;
  auto loaded = saved_cnn_weights(dir.path());
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const StepWeights& weights = *loaded;
  auto module = load_torch_model(weights, {.threads = 1, .cnn_forward = CnnForward::kModule});
  ASSERT_TRUE(module.is_ok()) << module.status().to_string();
  std::vector<int> plans;  // the batch sizes oneDNN was asked to plan
  auto onednn = load_torch_model(
      weights, {.threads = 1,
                .cnn_forward = CnnForward::kOnednn,
                .before_onednn_plan_for_test = [&plans](int b) {
                  plans.push_back(b);
                  if (b == 20) throw std::runtime_error("injected: no plan at batch 20");
                }});
  ASSERT_TRUE(onednn.is_ok()) << onednn.status().to_string();
  kiln::testing::LogCapture logs;

  // Before the failure batch 1 is oneDNN's (the module's within rounding).
  {
    std::vector<Input> batch = distinct_images(1), same = batch;
    auto want = (*module)->run(batch);
    auto got = (*onednn)->run(same);
    ASSERT_TRUE(want[0].is_ok() && got[0].is_ok()) << got[0].status().to_string();
    for (int k = 0; k < 10; ++k) EXPECT_NEAR(got[0]->logits[k], want[0]->logits[k], 1e-5);
  }
  for (int b : {20, 20, 33, 1, 2}) {
    std::vector<Input> batch = distinct_images(b), same = batch;
    auto want = (*module)->run(batch);
    auto got = (*onednn)->run(same);
    ASSERT_EQ(got.size(), want.size()) << "batch " << b;
    for (int j = 0; j < b; ++j) {
      ASSERT_TRUE(want[j].is_ok()) << want[j].status().to_string();
      ASSERT_TRUE(got[j].is_ok()) << "batch " << b << " image " << j << ": "
                                  << got[j].status().to_string();
      EXPECT_EQ(got[j]->logits, want[j]->logits) << "batch " << b << " image " << j;
    }
  }
  EXPECT_EQ(plans, (std::vector<int>{1, 20})) << "a plan was built after the failure";
  const std::string text = logs.text();
  const std::string warning = "the CNN's oneDNN forward failed at batch 20";
  const std::size_t at = text.find(warning);
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_EQ(text.find("oneDNN forward failed", at + warning.size()), std::string::npos)
      << "warned more than once:\n" << text;
  EXPECT_NE(text.find("injected: no plan at batch 20", at), std::string::npos) << text;
}

TEST(CnnForward, NamesRoundTripAndAnUnknownOneIsInvalidArgument) {
  for (CnnForward f : {CnnForward::kModule, CnnForward::kBlocked, CnnForward::kBlockedFcOnednn,
                       CnnForward::kOnednn}) {
    auto named = cnn_forward_named(cnn_forward_name(f));
    ASSERT_TRUE(named.is_ok()) << named.status().to_string();
    EXPECT_EQ(*named, f);
  }
  auto bad = cnn_forward_named("winograd");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("winograd"), std::string::npos);
}

// Note [Layers without random initial values]: the same parameters, names,
// shapes and layer options as the initialised model; only the values are
// left unwritten.
TEST(TorchModel, TheCnnBuiltWithoutInitialValuesHasTheInitialisedOnesParameters) {
  train::ModelConfig c;
  auto random = train::make_task(c, train::ParamInit::kRandom);
  auto bare = train::make_task(c, train::ParamInit::kNone);
  auto a = random->module()->named_parameters();
  auto b = bare->module()->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) {
    ASSERT_NE(b.find(p.key()), nullptr) << p.key();
    EXPECT_EQ(p.value().sizes(), b[p.key()].sizes()) << p.key();
    EXPECT_TRUE(b[p.key()].requires_grad()) << p.key();
  }
  for (const auto& child : random->module()->named_children()) {
    std::ostringstream x, y;
    child.value()->pretty_print(x);
    bare->module()->named_children()[child.key()]->pretty_print(y);
    EXPECT_EQ(x.str(), y.str()) << child.key();  // the options, in_features included
  }
}

// Note [Building the model while the weights come]: built from the
// manifest's shapes alone, then filled from the mapped step, the model gives
// the logits of the model that was trained and saved.
TEST(TorchModel, AModelBuiltFromTheManifestServesTheSavedModelsLogits) {
  TempDir dir;
  save_cnn(dir.path());  // seed 1
  train::ModelConfig c;
  torch::manual_seed(1);
  auto trained = train::make_task(c);
  const std::string step_dir = dir.path() + "/step-1";
  std::ifstream f(step_dir + "/manifest.json");
  const std::string manifest((std::istreambuf_iterator<char>(f)), {});
  auto shapes = StepShapes::from_manifest(manifest, step_dir, is_weight_entry);
  ASSERT_TRUE(shapes.is_ok()) << shapes.status().to_string();
  EXPECT_EQ(shapes->find("optim/0/exp_avg"), nullptr);
  ASSERT_NE(shapes->find("param/fc1.weight"), nullptr);
  EXPECT_EQ(*shapes->find("param/fc1.weight"), (std::vector<std::int64_t>{128, 64 * 7 * 7}));
  auto built = build_torch_model(*shapes, {.threads = 1});
  ASSERT_TRUE(built.is_ok()) << built.status().to_string();
  auto weights = StepWeights::open(step_dir, is_weight_entry);
  ASSERT_TRUE(weights.is_ok()) << weights.status().to_string();
  EXPECT_EQ(shapes->bytes, weights->bytes());
  auto model = fill_torch_model(std::move(built).value(), *weights);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  EXPECT_EQ((*model)->info().step, 1);

  Input image;
  for (int i = 0; i < 784; ++i) image.image.push_back(static_cast<float>((i * 31) % 256));
  std::vector<Input> batch(2, image);
  auto served = (*model)->run(batch);
  ASSERT_TRUE(served[0].is_ok());
  torch::Tensor expected;
  {
    c10::InferenceMode inference;
    trained->module()->eval();
    expected = trained->infer(torch::tensor(image.image).view({1, 1, 28, 28})).contiguous();
  }
  // Within rounding: the two forward passes may take different GEMM paths.
  ASSERT_EQ(served[0]->logits.size(), 10u);
  for (int k = 0; k < 10; ++k) {
    EXPECT_NEAR(served[0]->logits[k], expected.data_ptr<float>()[k], 1e-5) << "class " << k;
  }
}

// A model built for one step's shapes cannot take another model's weights:
// DataLoss naming the tensor, not a silent partial copy.
TEST(TorchModel, WeightsOfAnotherShapeAreDataLossNamingTheTensor) {
  TempDir dir;
  save_cnn(dir.path());  // channels 32
  auto weights = StepWeights::open(dir.path() + "/step-1", is_weight_entry);
  ASSERT_TRUE(weights.is_ok()) << weights.status().to_string();
  StepShapes other = weights->shapes();
  other.tensors["param/conv1.weight"] = {16, 1, 3, 3};
  other.tensors["param/fc1.weight"] = {100, 32 * 7 * 7};
  auto built = build_torch_model(other, {.threads = 1});
  ASSERT_TRUE(built.is_ok()) << built.status().to_string();
  auto model = fill_torch_model(std::move(built).value(), *weights);
  ASSERT_FALSE(model.is_ok());
  EXPECT_EQ(model.status().code(), Code::kDataLoss);
  EXPECT_NE(model.status().message().find("conv1"), std::string::npos)
      << model.status().to_string();
}

// Note [LibTorch's first use]: the pool is created at the size asked for,
// not one thread per core and then rebuilt. The pool is created once per
// process, so each case runs in a fresh one (the threadsafe death-test
// style re-executes the test binary). Exit codes name what failed.
TEST(WarmUpTorch, CreatesLibTorchsThreadPoolAtTheThreadsAsked) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (FLAGS_pthreadpool_size != 0) std::exit(2);  // something set it before
        warm_up_torch(1);
        if (FLAGS_pthreadpool_size != 1) std::exit(3);
        if (at::get_num_threads() != 1) std::exit(4);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(WarmUpTorch, KeepsAPoolSizeTheProcessChoseBefore) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        FLAGS_pthreadpool_size = 3;
        warm_up_torch(1);
        if (FLAGS_pthreadpool_size != 3) std::exit(3);
        if (at::get_num_threads() != 1) std::exit(4);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace kiln::serve
