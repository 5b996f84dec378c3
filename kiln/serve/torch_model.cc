#include "kiln/serve/torch_model.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cstring>

#include "kiln/base/blas_kernel.h"
#include "kiln/base/logging.h"
#include "kiln/serve/blocked_cnn.h"
#include "kiln/serve/onednn_cnn.h"
#include "kiln/train/task.h"
#include "kiln/train/train_config.h"

// Note [LibTorch's first use] (torch_model.h): the size caffe2's thread pool
// is created with, a c10 flag of LibTorch's (0: one thread per core).
C10_DECLARE_int(pthreadpool_size);

namespace kiln::serve {
namespace {

using train::ModelConfig;
using train::ModelKind;

const WeightTensor* tensor(const StepWeights& s, const std::string& name) { return s.find(name); }

// The model's config from its tensors where they determine it.
Result<ModelConfig> infer_config(const StepShapes& s) {
  ModelConfig c;
  if (const auto* conv1 = s.find("param/conv1.weight")) {
    const auto* fc1 = s.find("param/fc1.weight");
    if (fc1 == nullptr) return data_loss(fmt::format("checkpoint {}: a CNN without fc1", s.where));
    c.kind = ModelKind::kCnn;
    c.channels = static_cast<int>(conv1->front());
    c.hidden = static_cast<int>(fc1->front());
    return c;
  }
  if (s.find("param/tok.weight") != nullptr) {
    return failed_precondition(fmt::format(
        "checkpoint {} holds a GPT decoder, whose attention heads no tensor records: pass the "
        "training config (--config TRAIN.toml)",
        s.where));
  }
  return failed_precondition(fmt::format(
      "checkpoint {} holds neither the CNN (param/conv1.weight) nor the GPT (param/tok.weight) "
      "that kiln train saves",
      s.where));
}

// The module's parameters and buffers under their checkpoint names
// (param/<name>, buffer/<name>; no optimizer, no generator: inference needs
// the weights only), each with the entry of `s` it takes its values from.
// DataLoss: an entry missing or of another size.
Result<std::vector<std::pair<torch::Tensor, const WeightTensor*>>> matched_weights(
    const StepWeights& s, torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> all;
  for (auto& p : module.named_parameters()) all.emplace_back("param/" + p.key(), p.value());
  for (auto& b : module.named_buffers()) all.emplace_back("buffer/" + b.key(), b.value());
  std::vector<std::pair<torch::Tensor, const WeightTensor*>> out;
  for (auto& [name, t] : all) {
    const WeightTensor* e = tensor(s, name);
    if (e == nullptr) {
      return data_loss(
          fmt::format("checkpoint {}: no tensor '{}': saved by another model, or the "
                      "config does not match it",
                      s.dir(), name));
    }
    if (e->data.size() != t.nbytes()) {
      return data_loss(
          fmt::format("checkpoint {}: tensor '{}' has shape [{}], the model's is [{}] "
                      "(does the config match the checkpoint?)",
                      s.dir(), name, fmt::join(e->spec.shape, ", "), fmt::join(t.sizes(), ", ")));
    }
    out.emplace_back(t, e);
  }
  return out;
}

// The one copy of Note [One copy] (step_weights.h), from the mapped cache
// file into the parameter.
Status copy_weights(const StepWeights& s, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  KILN_ASSIGN_OR_RETURN(auto matched, matched_weights(s, module));
  for (auto& [t, e] : matched) std::memcpy(t.data_ptr(), e->data.data(), e->data.size());
  return Status::ok();
}

// Note [Weights served where they lie] (torch_model.h): `s` must outlive
// the module's use of its tensors.
Status view_weights(const StepWeights& s, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  KILN_ASSIGN_OR_RETURN(auto matched, matched_weights(s, module));
  for (auto& [t, e] : matched) {
    const auto at = reinterpret_cast<std::uintptr_t>(e->data.data());
    if (at % static_cast<std::uintptr_t>(t.element_size()) != 0) {
      std::memcpy(t.data_ptr(), e->data.data(), e->data.size());
      continue;
    }
    // set_data swaps the storage under the registered tensor, so the layer
    // that holds it reads the view; its own unwritten storage is freed.
    t.set_data(torch::from_blob(const_cast<std::byte*>(e->data.data()), t.sizes(),
                                torch::TensorOptions().dtype(t.dtype())));
  }
  return Status::ok();
}

// The CNN's forward other than the module's own, made from its filled
// parameters; both null: the module's.
struct CnnForwardPass {
  std::unique_ptr<BlockedCnn> blocked;  // views the module's fully connected weights
  std::unique_ptr<OnednnCnn> onednn;    // views the module's parameters
};

class TorchModel : public Model {
 public:
  // `weights`: what the parameters view, if they do (Note [Weights served
  // where they lie]); kept for the model's life.
  // `cnn`: the CNN's forward made from the task's parameters, or none for
  // the module's own.
  TorchModel(std::unique_ptr<train::Task> task, ModelInfo info, int threads, CnnForwardPass cnn,
             std::shared_ptr<const StepWeights> weights = nullptr)
      : weights_(std::move(weights)),
        task_(std::move(task)),
        cnn_(std::move(cnn)),
        info_(std::move(info)),
        threads_(threads) {
    task_->module()->eval();
  }
  const ModelInfo& info() const override { return info_; }

  std::vector<Result<Output>> run(std::vector<Input>& batch) override {
    try {
      // OpenMP's thread count is per calling thread, and the batch worker
      // is not the thread that loaded the model: set it where the forward
      // pass runs, or oneDNN may spread a batch over every core and fight
      // the HTTP threads for them.
      thread_local int threads_set = 0;
      if (threads_set != threads_) {
        torch::set_num_threads(threads_);
        threads_set = threads_;
      }
      // Inference mode, not only no-grad: no version counters or view
      // tracking on the batch's tensors (a per-op cost batching does not
      // amortise).
      c10::InferenceMode inference;
      return info_.task == TaskKind::kClassify ? classify(batch) : next_tokens(batch);
    } catch (const std::exception& e) {
      // The LibTorch boundary: every request of the batch gets the error.
      std::vector<Result<Output>> out;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        out.emplace_back(internal_error(fmt::format("forward pass failed: {}", e.what())));
      }
      return out;
    }
  }

 private:
  std::vector<Result<Output>> classify(std::vector<Input>& batch) {
    const auto b = static_cast<std::int64_t>(batch.size());
    if (b == 0) return {};
    if (cnn_.onednn) {
      // The pixels go straight into the plan's input (no tensor).
      // Note [A oneDNN plan that fails]: a plan is built on a batch size's
      // first use; if oneDNN cannot build or run one, the replica serves
      // the module's forward from then on (this batch included), as a
      // model the oneDNN forward cannot take does from its load, and says
      // so once: no request of that size fails, and no later batch pays
      // for another failed build.
      try {
        const std::span<const float> logits = cnn_.onednn->forward(batch);
        return classified(logits.data(), b, static_cast<std::int64_t>(logits.size()) / b);
      } catch (const std::exception& e) {
        log()->warn("the CNN's oneDNN forward failed at batch {} ({}); serving with the module's "
                    "forward from now on",
                    b, e.what());
        cnn_.onednn.reset();
      }
    }
    torch::Tensor x = torch::empty({b, 1, 28, 28}, torch::kFloat32);
    float* p = x.data_ptr<float>();
    for (const auto& in : batch) p = std::copy(in.image.begin(), in.image.end(), p);
    torch::Tensor logits =
        (cnn_.blocked ? cnn_.blocked->forward(train::normalize_pixels(x)) : task_->infer(x))
            .contiguous();
    return classified(logits.data_ptr<float>(), b, logits.size(1));
  }

  // One output per image of logits [b, classes].
  static std::vector<Result<Output>> classified(const float* l, std::int64_t b,
                                                std::int64_t classes) {
    std::vector<Result<Output>> out;
    for (std::int64_t i = 0; i < b; ++i) {
      Output o;
      o.logits.assign(l + i * classes, l + (i + 1) * classes);
      out.emplace_back(std::move(o));
    }
    return out;
  }

  // Right-padded batch of every sequence's last `context` tokens: causal
  // attention keeps the padding from reaching real positions, so row i's
  // logits at its last real position are exactly those of the lone sequence.
  std::vector<std::vector<float>> last_logits(const std::vector<std::vector<std::int64_t>>& seqs) {
    const auto context = static_cast<std::size_t>(info_.context);
    std::size_t longest = 0;
    for (const auto& s : seqs) longest = std::max(longest, std::min(s.size(), context));
    torch::Tensor x = torch::zeros(
        {static_cast<std::int64_t>(seqs.size()), static_cast<std::int64_t>(longest)}, torch::kLong);
    std::vector<std::int64_t> last(seqs.size());
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const std::size_t n = std::min(seqs[i].size(), context);
      std::copy(seqs[i].end() - static_cast<std::ptrdiff_t>(n), seqs[i].end(),
                x[static_cast<std::int64_t>(i)].data_ptr<std::int64_t>());
      last[i] = static_cast<std::int64_t>(n) - 1;
    }
    torch::Tensor logits = task_->infer(x);  // [B, T, V]
    torch::Tensor idx = torch::tensor(last, torch::kLong)
                            .view({-1, 1, 1})
                            .expand({logits.size(0), 1, logits.size(2)});
    torch::Tensor picked = logits.gather(1, idx).squeeze(1).contiguous();  // [B, V]
    std::vector<std::vector<float>> out(seqs.size());
    const float* l = picked.data_ptr<float>();
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      out[i].assign(l + i * static_cast<std::size_t>(info_.vocab),
                    l + (i + 1) * static_cast<std::size_t>(info_.vocab));
    }
    return out;
  }

  std::vector<Result<Output>> next_tokens(std::vector<Input>& batch) {
    std::vector<std::vector<std::int64_t>> seqs;
    int steps = 1;
    for (const auto& in : batch) {
      seqs.push_back(in.tokens);
      steps = std::max(steps, in.max_new_tokens);
    }
    std::vector<Output> outs(batch.size());
    for (int t = 0; t < steps; ++t) {
      auto logits = last_logits(seqs);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (t == 0 && batch[i].max_new_tokens == 0) outs[i].logits = logits[i];
        if (t >= batch[i].max_new_tokens) continue;
        const auto next = static_cast<std::int64_t>(
            std::max_element(logits[i].begin(), logits[i].end()) - logits[i].begin());
        outs[i].generated.push_back(next);
        seqs[i].push_back(next);
      }
    }
    std::vector<Result<Output>> out;
    for (auto& o : outs) out.emplace_back(std::move(o));
    return out;
  }

  // Declared first, so destroyed after the task whose parameters view it.
  std::shared_ptr<const StepWeights> weights_;
  std::unique_ptr<train::Task> task_;
  CnnForwardPass cnn_;  // may view task_'s parameters
  ModelInfo info_;
  int threads_;
};

}  // namespace

int limit_blas_threads(int threads) {
  // The BLAS is whichever libblas.so.3 the system's alternatives point at,
  // and only OpenBLAS has these calls (kiln/base/blas_kernel.h).
  if (!set_openblas_threads(std::max(1, threads))) return 0;
  return openblas_threads();
}

void warm_up_torch(int threads) {
  threads = std::max(1, threads);
  // The pool is created by the first set_num_threads: at this size, not one
  // thread per core torn down again at once.
  if (FLAGS_pthreadpool_size == 0) FLAGS_pthreadpool_size = threads;
  torch::set_num_threads(threads);
  limit_blas_threads(threads);  // Note [BLAS threads]
}

namespace {

class UnfilledTorchModel : public UnfilledModel {
 public:
  UnfilledTorchModel(std::unique_ptr<train::Task> task, ModelInfo info, int threads,
                     CnnForward cnn_forward, OnednnCnn::BeforePlanForTest before_onednn_plan)
      : task(std::move(task)),
        info(std::move(info)),
        threads(threads),
        cnn_forward(cnn_forward),
        before_onednn_plan(std::move(before_onednn_plan)) {}
  std::unique_ptr<train::Task> task;
  ModelInfo info;  // all but the step and source, known once filled
  int threads;
  CnnForward cnn_forward;
  OnednnCnn::BeforePlanForTest before_onednn_plan;  // TorchModelOptions' test hook
};

// A float32 parameter of the module as a span of its values (contiguous:
// the module's own tensors or views of the mapped checkpoint).
Result<std::span<const float>> float_values(torch::nn::Module& cnn, const std::string& name,
                                            std::int64_t dims) {
  const torch::Tensor* t = cnn.named_parameters().find(name);
  if (t == nullptr) return failed_precondition(fmt::format("the CNN has no parameter '{}'", name));
  if (t->scalar_type() != torch::kFloat32 || !t->is_contiguous() || t->dim() != dims) {
    return failed_precondition(
        fmt::format("the CNN's '{}' is {} [{}]{}, not contiguous float32 of "
                    "{} dimensions",
                    name, c10::toString(t->scalar_type()), fmt::join(t->sizes(), ", "),
                    t->is_contiguous() ? "" : " strided", dims));
  }
  return std::span<const float>(t->data_ptr<float>(), static_cast<std::size_t>(t->numel()));
}

// Note [The CNN's forward on oneDNN's own API] (onednn_cnn.h).
Result<std::unique_ptr<OnednnCnn>> onednn_cnn(torch::nn::Module& cnn,
                                              OnednnCnn::BeforePlanForTest before_plan) {
  CnnParameters p;
  KILN_ASSIGN_OR_RETURN(p.conv1_w, float_values(cnn, "conv1.weight", 4));
  KILN_ASSIGN_OR_RETURN(p.conv1_b, float_values(cnn, "conv1.bias", 1));
  KILN_ASSIGN_OR_RETURN(p.conv2_w, float_values(cnn, "conv2.weight", 4));
  KILN_ASSIGN_OR_RETURN(p.conv2_b, float_values(cnn, "conv2.bias", 1));
  KILN_ASSIGN_OR_RETURN(p.fc1_w, float_values(cnn, "fc1.weight", 2));
  KILN_ASSIGN_OR_RETURN(p.fc1_b, float_values(cnn, "fc1.bias", 1));
  KILN_ASSIGN_OR_RETURN(p.fc2_w, float_values(cnn, "fc2.weight", 2));
  KILN_ASSIGN_OR_RETURN(p.fc2_b, float_values(cnn, "fc2.bias", 1));
  const auto& params = cnn.named_parameters();
  const torch::Tensor &w1 = params["conv1.weight"], &w2 = params["conv2.weight"];
  if (w1.size(1) != 1 || w1.size(2) != 3 || w1.size(3) != 3 || w2.size(2) != 3 || w2.size(3) != 3) {
    return failed_precondition(
        fmt::format("the CNN's convolutions are [{}] and [{}], not 3x3 "
                    "from one input channel",
                    fmt::join(w1.sizes(), ", "), fmt::join(w2.sizes(), ", ")));
  }
  p.conv1_channels = w1.size(0);
  p.conv2_channels = w2.size(0);
  p.hidden = params["fc1.weight"].size(0);
  p.classes = params["fc2.weight"].size(0);
  p.pixel_mean = static_cast<float>(train::kPixelMean);
  p.pixel_std = static_cast<float>(train::kPixelStd);
  return OnednnCnn::create(p, std::move(before_plan));
}

// The CNN's forward from the filled parameters, if one other than the
// module's is asked for; none (the module's forward) otherwise, or if the
// weights do not suit it (logged).
CnnForwardPass cnn_forward_pass(UnfilledTorchModel& m) {
  CnnForwardPass pass;
  if (m.info.task != TaskKind::kClassify || m.cnn_forward == CnnForward::kModule) return pass;
  Status status;
  if (m.cnn_forward == CnnForward::kOnednn) {
    auto onednn = onednn_cnn(*m.task->module(), m.before_onednn_plan);
    if (onednn.is_ok()) pass.onednn = std::move(onednn).value();
    status = onednn.status();
  } else {
    auto blocked = BlockedCnn::from_module(*m.task->module(), m.cnn_forward);
    if (blocked.is_ok()) pass.blocked = std::move(blocked).value();
    status = blocked.status();
  }
  if (!status.is_ok()) {
    log()->warn("serve: {}: the {} forward does not apply ({}); serving with the module's",
                m.info.source, cnn_forward_name(m.cnn_forward), status.to_string());
  }
  return pass;
}

}  // namespace

Result<std::unique_ptr<UnfilledModel>> build_torch_model(const StepShapes& shapes,
                                                         const TorchModelOptions& options) {
  ModelConfig config;
  if (!options.config_path.empty()) {
    KILN_ASSIGN_OR_RETURN(auto train_config, train::parse_train_config_file(options.config_path));
    config = train_config.model;
  } else {
    KILN_ASSIGN_OR_RETURN(config, infer_config(shapes));
  }
  const int threads = std::max(1, options.threads);
  if (!options.threads_capped_by_caller) warm_up_torch(threads);
  config.dropout = 0;
  std::unique_ptr<train::Task> task;
  try {
    // Every parameter is copied in next: no random values to overwrite.
    task = train::make_task(config, train::ParamInit::kNone);
  } catch (const std::exception& e) {
    return invalid_argument(fmt::format("building the model from its config: {}", e.what()));
  }
  ModelInfo info;
  if (config.kind == ModelKind::kCnn) {
    info.task = TaskKind::kClassify;
    info.name = "cnn";
    info.classes = 10;
  } else {
    info.task = TaskKind::kNextToken;
    info.name = "gpt";
    info.vocab = config.vocab;
    info.context = config.seq_len;
  }
  return std::unique_ptr<UnfilledModel>(
      new UnfilledTorchModel(std::move(task), std::move(info), threads, options.cnn_forward,
                             options.before_onednn_plan_for_test));
}

Result<std::unique_ptr<Model>> fill_torch_model(std::unique_ptr<UnfilledModel> model,
                                                const StepWeights& weights) {
  auto& m = static_cast<UnfilledTorchModel&>(*model);
  KILN_RETURN_IF_ERROR(copy_weights(weights, *m.task->module()));
  m.info.step = weights.step();
  m.info.source = weights.dir();
  return std::unique_ptr<Model>(
      new TorchModel(std::move(m.task), std::move(m.info), m.threads, cnn_forward_pass(m)));
}

Result<std::unique_ptr<Model>> fill_torch_model_in_place(std::unique_ptr<UnfilledModel> model,
                                                         std::shared_ptr<const StepWeights> weights) {
  auto& m = static_cast<UnfilledTorchModel&>(*model);
  KILN_RETURN_IF_ERROR(view_weights(*weights, *m.task->module()));
  m.info.step = weights->step();
  m.info.source = weights->dir();
  return std::unique_ptr<Model>(new TorchModel(std::move(m.task), std::move(m.info), m.threads,
                                               cnn_forward_pass(m), std::move(weights)));
}

Result<std::unique_ptr<Model>> load_torch_model(const StepWeights& weights,
                                                const TorchModelOptions& options) {
  KILN_ASSIGN_OR_RETURN(auto model, build_torch_model(weights.shapes(), options));
  return fill_torch_model(std::move(model), weights);
}

}  // namespace kiln::serve
