#include "kiln/train/task.h"

#include "kiln/train/batch_tensors.h"
#include "kiln/train/rotary.h"

#include "kiln/parallel/unit_hooks.h"

#include <cmath>

#include <fmt/format.h>

namespace kiln::train {
namespace {

using data::Batch;

// Checks a column's kind and dtype before a model reads it.
Result<torch::Tensor> typed_column(const Batch& batch, const std::string& name,
                                   torch::ScalarType type, std::size_t dims) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor t, column_view(batch, name));
  if (t.scalar_type() != type || t.dim() != static_cast<std::int64_t>(dims)) {
    return invalid_argument(fmt::format("column '{}' is {} with {} dimensions; this model reads {} "
                                        "with {}", name, c10::toString(t.scalar_type()), t.dim(),
                                        c10::toString(type), dims));
  }
  return t;
}

// A forward whose sharded units failed to gather (a dead peer) throws at the
// LibTorch boundary; it comes back here as the Status the launcher reads.
template <class Forward>
Result<torch::Tensor> guarded(Forward&& forward) {
  try {
    return std::forward<Forward>(forward)();
  } catch (const std::exception& e) {
    // The memory cap's allocator (parallel.memory_cap_mib) says so by name.
    const std::string what = e.what();
    if (what.find("out of memory") != std::string::npos) {
      return resource_exhausted("forward pass: " + what.substr(0, what.find('\n')));
    }
    return aborted(fmt::format("forward pass: {}", e.what()));
  }
}

// ---- Fashion-MNIST CNN --------------------------------------------------

// Note [Max pooling without autograd]: LibTorch's CPU max_pool2d computes
// the argmax indices its backward needs, one output element at a time: half
// of a served CNN's forward pass at batch 20 on the 2-core host (docs/perf.md,
// issue 20, session 9), and per image, so batching does not amortise it.
// Without autograd (inference, evaluation) the same 2x2 maximum is two
// elementwise maxima of strided views, and relu, which commutes with max,
// then runs on the pooled quarter. Same values; training keeps max_pool2d.
torch::Tensor relu_max_pool_2x2(const torch::Tensor& x) {
  if (torch::GradMode::is_enabled()) return torch::max_pool2d(torch::relu(x), 2);
  const std::int64_t h = x.size(2) / 2 * 2, w = x.size(3) / 2 * 2;  // floor, as max_pool2d
  const torch::Tensor rows = torch::maximum(x.slice(2, 0, h, 2), x.slice(2, 1, h, 2));
  return torch::maximum(rows.slice(3, 0, w, 2), rows.slice(3, 1, w, 2)).relu_();
}

// Note [Layers without random initial values]: LibTorch's layers
// initialise their parameters in their constructors (kaiming_uniform_: one
// Mersenne Twister draw per value, on one thread), and a served model
// overwrites every value with the checkpoint's right after: for the make
// demo CNN 421 K draws, ~3 ms of a replica's start on a node-cache hit
// (docs/perf.md, issue 20, session 10). With ParamInit::kNone a layer is
// built with one input (its initialisation then draws `out` rows of one
// input, not of all of them) and its weight is then given its full shape,
// unwritten. set_ changes the registered parameter in place, so the
// module's named_parameters() see the full shape; the options are corrected
// to match. The forward pass reads only the weight and the options that
// were given.
torch::nn::Conv2d conv3x3(std::int64_t in, std::int64_t out, ParamInit init) {
  if (init == ParamInit::kRandom) {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
  }
  torch::nn::Conv2d c(torch::nn::Conv2dOptions(1, out, 3).padding(1));
  torch::NoGradGuard no_grad;
  c->weight.set_(torch::empty({out, in, 3, 3}));
  c->options.in_channels(in);
  return c;
}

torch::nn::Linear linear(std::int64_t in, std::int64_t out, ParamInit init) {
  if (init == ParamInit::kRandom) return torch::nn::Linear(in, out);
  torch::nn::Linear l(1, out);
  torch::NoGradGuard no_grad;
  l->weight.set_(torch::empty({out, in}));
  l->options.in_features(in);
  return l;
}

struct CnnImpl : torch::nn::Module {
  CnnImpl(int channels, int hidden, int classes, ParamInit init)
      : conv1(register_module("conv1", conv3x3(1, channels, init))),
        conv2(register_module("conv2", conv3x3(channels, 2 * channels, init))),
        fc1(register_module("fc1", linear(2 * channels * 7 * 7, hidden, init))),
        fc2(register_module("fc2", linear(hidden, classes, init))) {}

  // Each layer runs as a unit (parallel::run_unit): sharded strategies
  // gather and free its parameters around it. Computes in the parameters'
  // dtype (bf16 under precision = "bf16"); the logits come back in float32.
  torch::Tensor forward(torch::Tensor x) {
    using parallel::run_unit;
    x = x.to(fc2->weight.scalar_type());
    x = run_unit(*conv1, [&] { return relu_max_pool_2x2(conv1->forward(x)); });  // 28 -> 14
    x = run_unit(*conv2, [&] { return relu_max_pool_2x2(conv2->forward(x)); });  // 14 -> 7
    x = run_unit(*fc1, [&] { return torch::relu(fc1->forward(x.flatten(1))); });
    return run_unit(*fc2, [&] { return fc2->forward(x); }).to(torch::kFloat32);
  }

  torch::nn::Conv2d conv1, conv2;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Cnn);

class ImageClassification : public Task {
 public:
  ImageClassification(const ModelConfig& c, ParamInit init) : net_(c.channels, c.hidden, 10, init) {}

  std::shared_ptr<torch::nn::Module> module() override { return net_.ptr(); }
  bool classification() const override { return true; }

  Result<torch::Tensor> loss(const Batch& batch) override {
    KILN_ASSIGN_OR_RETURN(auto xy, inputs(batch));
    KILN_ASSIGN_OR_RETURN(torch::Tensor logits, guarded([&] { return net_->forward(xy.first); }));
    return torch::nn::functional::cross_entropy(logits, xy.second);
  }

  torch::Tensor infer(const torch::Tensor& pixels) override {
    return net_->forward(normalize_pixels(pixels));
  }

  Status evaluate(const Batch& batch, EvalSums* sums) override {
    torch::NoGradGuard no_grad;
    KILN_ASSIGN_OR_RETURN(auto xy, inputs(batch));
    KILN_ASSIGN_OR_RETURN(torch::Tensor logits, guarded([&] { return net_->forward(xy.first); }));
    sums->loss_sum += torch::nn::functional::cross_entropy(
                          logits, xy.second,
                          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                          .item<double>();
    sums->correct += logits.argmax(1).eq(xy.second).sum().item<double>();
    sums->count += static_cast<double>(xy.second.size(0));
    return Status::ok();
  }

 private:
  Result<std::pair<torch::Tensor, torch::Tensor>> inputs(const Batch& batch) {
    KILN_ASSIGN_OR_RETURN(torch::Tensor image, typed_column(batch, "image", torch::kUInt8, 4));
    KILN_ASSIGN_OR_RETURN(torch::Tensor label, typed_column(batch, "label", torch::kInt64, 1));
    if (image.size(1) != 1 || image.size(2) != 28 || image.size(3) != 28) {
      return invalid_argument("column 'image' must be uint8 [B, 1, 28, 28] (Fashion-MNIST)");
    }
    torch::Tensor x = image.to(torch::kFloat32).div_(255.0).sub_(kPixelMean).div_(kPixelStd);
    torch::Tensor y = label.clone();
    return std::make_pair(x, y);
  }

  Cnn net_;
};

// ---- GPT-style decoder --------------------------------------------------

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int d_model, int heads, double dropout, bool rotary, int seq_len)
      : heads_(heads), head_dim_(d_model / heads), dropout_(dropout), rotary_(rotary),
        qkv(register_module("qkv", torch::nn::Linear(d_model, 3 * d_model))),
        proj(register_module("proj", torch::nn::Linear(d_model, d_model))) {
    // Not registered: constants, so neither broadcast nor checkpointed.
    if (rotary_) tables_ = rotary_tables(head_dim_, seq_len);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const auto B = x.size(0), T = x.size(1);
    auto qkv_out = qkv->forward(x).view({B, T, 3, heads_, head_dim_}).permute({2, 0, 3, 1, 4});
    torch::Tensor y = causal_attention(qkv_out[0], qkv_out[1], qkv_out[2], rotary_ ? &tables_ : nullptr,
                                       dropout_, is_training());
    return torch::dropout(proj->forward(y), dropout_, is_training());
  }

  int heads_, head_dim_;
  double dropout_;
  bool rotary_;
  torch::nn::Linear qkv, proj;
  RotaryTables tables_;
};
TORCH_MODULE(Attention);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const ModelConfig& c)
      : ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        attn(register_module("attn", Attention(c.d_model, c.heads, c.dropout, c.rotary, c.seq_len))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        fc(register_module("fc", torch::nn::Linear(c.d_model, 4 * c.d_model))),
        out(register_module("out", torch::nn::Linear(4 * c.d_model, c.d_model))),
        dropout_(c.dropout) {}

  torch::Tensor forward(torch::Tensor x) {
    x = x + attn->forward(ln1->forward(x));
    torch::Tensor h = out->forward(torch::gelu(fc->forward(ln2->forward(x))));
    return x + torch::dropout(h, dropout_, is_training());
  }

  torch::nn::LayerNorm ln1;
  Attention attn;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, out;
  double dropout_;
};
TORCH_MODULE(Block);

struct GptImpl : torch::nn::Module {
  explicit GptImpl(const ModelConfig& c)
      : tok(register_module("tok", torch::nn::Embedding(c.vocab, c.d_model))),
        blocks(register_module("blocks", torch::nn::ModuleList())),
        ln(register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        head(register_module("head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)))),
        rotary_(c.rotary), dropout_(c.dropout) {
    if (!rotary_) pos = register_module("pos", torch::nn::Embedding(c.seq_len, c.d_model));
    for (int i = 0; i < c.layers; ++i) blocks->push_back(Block(c));
    // GPT-2's initialisation: N(0, 0.02) everywhere keeps early logits small.
    for (auto& p : named_parameters()) {
      if (p.key().find("weight") != std::string::npos && p.value().dim() == 2) {
        torch::NoGradGuard g;
        p.value().normal_(0, 0.02);
      }
    }
  }

  // Every child runs as a unit (parallel::run_unit): sharded strategies
  // gather and free its parameters around it. The logits come back in float32.
  torch::Tensor forward(const torch::Tensor& idx) {
    using parallel::run_unit;
    torch::Tensor x = run_unit(*tok, [&] { return tok->forward(idx); });
    if (!rotary_) {
      x = x + run_unit(*pos, [&] { return pos->forward(torch::arange(idx.size(1), torch::kLong)); });
    }
    x = torch::dropout(x, dropout_, is_training());
    for (const auto& b : *blocks) x = run_unit(*b, [&] { return b->as<Block>()->forward(x); });
    x = run_unit(*ln, [&] { return ln->forward(x); });
    return run_unit(*head, [&] { return head->forward(x); }).to(torch::kFloat32);
  }

  torch::nn::Embedding tok;
  torch::nn::Embedding pos{nullptr};
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln;
  torch::nn::Linear head;
  bool rotary_;
  double dropout_;
};
TORCH_MODULE(Gpt);

class NextToken : public Task {
 public:
  explicit NextToken(const ModelConfig& c) : config_(c), net_(c) {}

  std::shared_ptr<torch::nn::Module> module() override { return net_.ptr(); }
  bool classification() const override { return false; }

  Result<torch::Tensor> loss(const Batch& batch) override {
    KILN_ASSIGN_OR_RETURN(auto xy, inputs(batch));
    KILN_ASSIGN_OR_RETURN(torch::Tensor logits, guarded([&] { return net_->forward(xy.first); }));
    return torch::nn::functional::cross_entropy(logits.flatten(0, 1), xy.second.flatten());
  }

  torch::Tensor infer(const torch::Tensor& tokens) override { return net_->forward(tokens); }

  Status evaluate(const Batch& batch, EvalSums* sums) override {
    torch::NoGradGuard no_grad;
    KILN_ASSIGN_OR_RETURN(auto xy, inputs(batch));
    KILN_ASSIGN_OR_RETURN(torch::Tensor out, guarded([&] { return net_->forward(xy.first); }));
    torch::Tensor logits = out.flatten(0, 1);
    torch::Tensor target = xy.second.flatten();
    sums->loss_sum += torch::nn::functional::cross_entropy(
                          logits, target,
                          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                          .item<double>();
    sums->correct += logits.argmax(1).eq(target).sum().item<double>();
    sums->count += static_cast<double>(target.numel());
    return Status::ok();
  }

 private:
  Result<std::pair<torch::Tensor, torch::Tensor>> inputs(const Batch& batch) {
    KILN_ASSIGN_OR_RETURN(torch::Tensor tokens, typed_column(batch, "tokens", torch::kInt32, 2));
    if (tokens.size(1) != config_.seq_len + 1) {
      return invalid_argument(fmt::format("column 'tokens' must be int32 [B, {}] (model.seq_len + 1); "
                                          "convert with --seq-len {}", config_.seq_len + 1, config_.seq_len));
    }
    torch::Tensor t = tokens.to(torch::kLong);
    if (t.max().item<std::int64_t>() >= config_.vocab || t.min().item<std::int64_t>() < 0) {
      return invalid_argument(fmt::format("a token is outside the vocabulary 0..{}", config_.vocab - 1));
    }
    return std::make_pair(t.narrow(1, 0, config_.seq_len), t.narrow(1, 1, config_.seq_len));
  }

  ModelConfig config_;
  Gpt net_;
};

}  // namespace

torch::Tensor normalize_pixels(const torch::Tensor& pixels) {
  return pixels.div(255.0).sub_(kPixelMean).div_(kPixelStd);
}

std::unique_ptr<Task> make_task(const ModelConfig& config, ParamInit init) {
  if (config.kind == ModelKind::kCnn) return std::make_unique<ImageClassification>(config, init);
  return std::make_unique<NextToken>(config);
}

}  // namespace kiln::train
