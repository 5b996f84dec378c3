#include "kiln/train/gpt_3d.h"

#include <fmt/format.h>

#include "kiln/parallel/tensor/collectives.h"
#include "kiln/train/rotary.h"

namespace kiln::train {

namespace tp_ops = parallel::tensor;

ShardSpec tensor_shard_spec(const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const std::string s(suffix);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (name == "tok.weight" || name == "head.weight") return {0, 1};  // by vocabulary
  if (ends_with("attn.qkv.weight") || ends_with("attn.qkv.bias")) return {0, 3};  // q, k, v by heads
  if (ends_with("fc.weight") || ends_with("fc.bias")) return {0, 1};     // column-parallel
  if (ends_with("attn.proj.weight") || ends_with("out.weight")) return {1, 1};  // row-parallel
  return {};
}

torch::Tensor take_shard(const torch::Tensor& whole, ShardSpec spec, int rank, int ranks) {
  if (spec.replicated() || ranks == 1) return whole.clone();
  std::vector<torch::Tensor> pieces;
  for (const torch::Tensor& block : whole.chunk(spec.blocks, spec.dim)) {
    const std::int64_t n = block.size(spec.dim) / ranks;
    pieces.push_back(block.narrow(spec.dim, rank * n, n));
  }
  return torch::cat(pieces, spec.dim).contiguous();
}

torch::Tensor join_shards(const std::vector<torch::Tensor>& shards, ShardSpec spec) {
  if (spec.replicated() || shards.size() == 1) return shards.at(0).clone();
  std::vector<std::vector<torch::Tensor>> per_block(static_cast<std::size_t>(spec.blocks));
  for (const torch::Tensor& shard : shards) {
    auto blocks = shard.chunk(spec.blocks, spec.dim);
    for (int b = 0; b < spec.blocks; ++b) per_block[static_cast<std::size_t>(b)].push_back(blocks[static_cast<std::size_t>(b)]);
  }
  std::vector<torch::Tensor> blocks;
  for (auto& pieces : per_block) blocks.push_back(torch::cat(pieces, spec.dim));
  return torch::cat(blocks, spec.dim).contiguous();
}

Result<std::vector<int>> stage_layer_counts(int layers, int global_stages,
                                            const std::vector<std::int64_t>& explicit_counts) {
  std::vector<int> counts;
  if (!explicit_counts.empty()) {
    std::int64_t sum = 0;
    for (std::int64_t n : explicit_counts) sum += n;
    if (static_cast<int>(explicit_counts.size()) != global_stages || sum != layers) {
      return invalid_argument(fmt::format(
          "parallel.stage_layers has {} entries summing to {}; it needs one per global stage (pp x "
          "chunks = {}) summing to model.layers ({})",
          explicit_counts.size(), sum, global_stages, layers));
    }
    for (std::int64_t n : explicit_counts) counts.push_back(static_cast<int>(n));
    return counts;
  }
  if (layers < global_stages) {
    return invalid_argument(fmt::format("model.layers ({}) is fewer than the pipeline's global stages "
                                        "(pp x chunks = {})", layers, global_stages));
  }
  for (int g = 0; g < global_stages; ++g) counts.push_back(layers / global_stages + (g < layers % global_stages ? 1 : 0));
  return counts;
}

// ---- one chunk -------------------------------------------------------------

struct BlockShard {
  int layer = 0;
  torch::Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b;
};

class GptChunkImpl : public torch::nn::Module {
 public:
  GptChunkImpl(const ModelConfig& c, comm::Communicator& tp, bool sequence_parallel, std::int64_t vocab_start)
      : c_(c), tp_(tp), sp_(sequence_parallel && tp.size() > 1), vocab_start_(vocab_start) {
    if (c.rotary) rotary_ = rotary_tables(c.d_model / c.heads, c.seq_len);
  }

  // Registers `value` under the whole model's `name`; returns the parameter.
  torch::Tensor add(const std::string& name, torch::Tensor value) {
    std::string key = name;
    for (char& ch : key) ch = ch == '.' ? '_' : ch;
    torch::Tensor p = register_parameter(key, std::move(value));
    const std::string layer_prefix = "blocks.";
    if (name.rfind(layer_prefix, 0) == 0) {
      const int layer = std::stoi(name.substr(layer_prefix.size()));
      if (blocks_.empty() || blocks_.back().layer != layer) blocks_.push_back({.layer = layer});
      BlockShard& b = blocks_.back();
      const std::string field = name.substr(name.find('.', layer_prefix.size()) + 1);
      torch::Tensor* slot = field == "ln1.weight" ? &b.ln1_w : field == "ln1.bias" ? &b.ln1_b
                          : field == "attn.qkv.weight" ? &b.qkv_w : field == "attn.qkv.bias" ? &b.qkv_b
                          : field == "attn.proj.weight" ? &b.proj_w : field == "attn.proj.bias" ? &b.proj_b
                          : field == "ln2.weight" ? &b.ln2_w : field == "ln2.bias" ? &b.ln2_b
                          : field == "fc.weight" ? &b.fc_w : field == "fc.bias" ? &b.fc_b
                          : field == "out.weight" ? &b.out_w : &b.out_b;
      *slot = p;
    } else if (name == "tok.weight") {
      tok_ = p;
    } else if (name == "pos.weight") {
      pos_ = p;
    } else if (name == "ln.weight") {
      ln_w_ = p;
    } else if (name == "ln.bias") {
      ln_b_ = p;
    } else if (name == "head.weight") {
      head_ = p;
    }
    return p;
  }

  bool embeds() const { return tok_.defined(); }
  bool has_head() const { return head_.defined(); }

  torch::Tensor forward(const torch::Tensor& input) {
    torch::Tensor x = embeds() ? embed(input) : input;
    for (const BlockShard& b : blocks_) x = block(b, x);
    if (!has_head()) return x;
    x = torch::layer_norm(x, {c_.d_model}, ln_w_, ln_b_, 1e-5);
    return torch::linear(enter(x), head_);
  }

 private:
  // Into a tensor-parallel region: the whole sequence, replicated.
  torch::Tensor enter(const torch::Tensor& x) {
    return sp_ ? tp_ops::gather_from_sequence(x, 1, tp_) : tp_ops::copy_to_group(x, tp_);
  }
  // Out of one through a row-parallel linear layer (bias after the sum).
  torch::Tensor leave(const torch::Tensor& y, const torch::Tensor& w, const torch::Tensor& b) {
    if (tp_.size() == 1) return torch::linear(y, w, b);
    torch::Tensor partial = torch::linear(y, w);
    return (sp_ ? tp_ops::reduce_scatter_to_sequence(partial, 1, tp_) : tp_ops::reduce_from_group(partial, tp_)) + b;
  }

  torch::Tensor embed(const torch::Tensor& tokens) {
    torch::Tensor x;
    if (sp_) {
      x = tp_ops::reduce_scatter_to_sequence(tp_ops::vocab_embedding_partial(tokens, tok_, vocab_start_), 1, tp_);
    } else {
      x = tp_ops::vocab_parallel_embedding(tokens, tok_, vocab_start_, tp_);
    }
    if (pos_.defined()) {
      const std::int64_t t = x.size(1);
      const std::int64_t first = sp_ ? tp_.rank() * t : 0;
      x = x + torch::embedding(pos_, torch::arange(first, first + t, torch::kLong));
    }
    return torch::dropout(x, c_.dropout, is_training());
  }

  torch::Tensor block(const BlockShard& b, torch::Tensor x) {
    const int heads = c_.heads / tp_.size(), head_dim = c_.d_model / c_.heads;
    torch::Tensor h = enter(torch::layer_norm(x, {c_.d_model}, b.ln1_w, b.ln1_b, 1e-5));
    const auto B = h.size(0), T = h.size(1);
    auto qkv = torch::linear(h, b.qkv_w, b.qkv_b).view({B, T, 3, heads, head_dim}).permute({2, 0, 3, 1, 4});
    torch::Tensor y = causal_attention(qkv[0], qkv[1], qkv[2], c_.rotary ? &rotary_ : nullptr, c_.dropout, is_training());
    x = x + torch::dropout(leave(y, b.proj_w, b.proj_b), c_.dropout, is_training());
    h = enter(torch::layer_norm(x, {c_.d_model}, b.ln2_w, b.ln2_b, 1e-5));
    torch::Tensor o = leave(torch::gelu(torch::linear(h, b.fc_w, b.fc_b)), b.out_w, b.out_b);
    return x + torch::dropout(o, c_.dropout, is_training());
  }

  ModelConfig c_;
  comm::Communicator& tp_;
  bool sp_;
  std::int64_t vocab_start_;
  RotaryTables rotary_;
  torch::Tensor tok_, pos_, ln_w_, ln_b_, head_;
  std::vector<BlockShard> blocks_;
};

// ---- the rank's model ---------------------------------------------------------

Result<std::unique_ptr<Gpt3d>> Gpt3d::create(const ModelConfig& c, torch::nn::Module& whole,
                                             const parallel::MeshLayout& mesh, int rank,
                                             comm::Communicator& tensor_group, Gpt3dOptions options) {
  const parallel::MeshCoord at = mesh.coord(rank);
  const int T = mesh.shape().tp, p = mesh.shape().pp, v = options.chunks;
  auto must_divide = [&](int n, const char* what) -> Status {
    if (n % T == 0) return Status::ok();
    return invalid_argument(fmt::format("parallel.tp = {} must divide {} ({})", T, what, n));
  };
  KILN_RETURN_IF_ERROR(must_divide(c.heads, "model.heads"));
  KILN_RETURN_IF_ERROR(must_divide(c.vocab, "model.vocab"));
  if (options.sequence_parallel) KILN_RETURN_IF_ERROR(must_divide(c.seq_len, "model.seq_len"));
  KILN_ASSIGN_OR_RETURN(std::vector<int> counts, stage_layer_counts(c.layers, p * v, options.stage_layers));
  // Global stage of each layer.
  std::vector<int> stage_of_layer;
  for (int g = 0; g < p * v; ++g) stage_of_layer.insert(stage_of_layer.end(), static_cast<std::size_t>(counts[static_cast<std::size_t>(g)]), g);

  std::unique_ptr<Gpt3d> m(new Gpt3d(c, tensor_group));
  m->sequence_parallel_ = options.sequence_parallel && T > 1;
  m->vocab_start_ = static_cast<std::int64_t>(at.tp) * (c.vocab / T);
  for (int chunk = 0; chunk < v; ++chunk) {
    m->chunks_.push_back(std::make_shared<GptChunkImpl>(c, tensor_group, m->sequence_parallel_, m->vocab_start_));
  }
  m->stage_of_layer_ = stage_of_layer;
  m->global_stages_ = p * v;
  for (const auto& item : whole.named_parameters()) {
    const std::string& name = item.key();
    const int g = m->global_stage_of(name);
    if (g % p != at.pp) continue;
    const ShardSpec spec = tensor_shard_spec(name);
    torch::Tensor shard = take_shard(item.value().detach(), spec, at.tp, T);
    torch::Tensor param = m->chunks_[static_cast<std::size_t>(g / p)]->add(name, shard);
    const bool partial = m->sequence_parallel_ && spec.replicated() && name.rfind("head", 0) != 0;
    m->params_.push_back({name, param, spec, item.value().sizes().vec(), partial});
  }
  return m;
}

int Gpt3d::global_stage_of(const std::string& name) const {
  if (name == "tok.weight" || name == "pos.weight") return 0;
  if (name.rfind("blocks.", 0) == 0) return stage_of_layer_.at(static_cast<std::size_t>(std::stoi(name.substr(7))));
  return global_stages_ - 1;  // final norm and head
}

std::shared_ptr<torch::nn::Module> Gpt3d::chunk_module(int c) const { return chunks_.at(static_cast<std::size_t>(c)); }

torch::Tensor Gpt3d::forward(int c, const torch::Tensor& input) { return chunks_.at(static_cast<std::size_t>(c))->forward(input); }

bool Gpt3d::holds_embedding(int c) const { return chunks_.at(static_cast<std::size_t>(c))->embeds(); }
bool Gpt3d::holds_head(int c) const { return chunks_.at(static_cast<std::size_t>(c))->has_head(); }

std::vector<std::int64_t> Gpt3d::activation_shape(std::int64_t batch) const {
  const std::int64_t t = sequence_parallel_ ? config_.seq_len / tp_.size() : config_.seq_len;
  return {batch, t, config_.d_model};
}

// The loss in float32 whatever the compute dtype (bf16: its gradient
// returns to the logits' dtype).
torch::Tensor Gpt3d::loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  torch::Tensor z = logits.flatten(0, 1).to(torch::kFloat32);
  return tp_ops::vocab_parallel_cross_entropy(z, targets.flatten(), vocab_start_, tp_).mean();
}

std::pair<double, double> Gpt3d::loss_sum_and_correct(const torch::Tensor& logits, const torch::Tensor& targets) {
  torch::Tensor z = logits.flatten(0, 1).to(torch::kFloat32);
  torch::Tensor t = targets.flatten();
  const double loss_sum = tp_ops::vocab_parallel_cross_entropy(z, t, vocab_start_, tp_).sum().item<double>();
  auto [best, index] = z.max(1);
  torch::Tensor ids = index + vocab_start_;
  if (tp_.size() > 1) {
    // Every rank's best column: the first rank holding the maximum wins, as
    // argmax over the whole row would pick the lowest id.
    const auto n = static_cast<std::size_t>(best.numel());
    torch::Tensor all_best = torch::empty({tp_.size(), best.numel()}, best.options());
    torch::Tensor all_ids = torch::empty({tp_.size(), ids.numel()}, ids.options());
    torch::Tensor b = best.contiguous(), i = ids.contiguous();
    Status s = tp_.allgather(b.data_ptr(), all_best.data_ptr(), n, comm::DataType::kFloat32)->wait();
    if (s.is_ok()) s = tp_.allgather(i.data_ptr(), all_ids.data_ptr(), n, comm::DataType::kInt64)->wait();
    if (!s.is_ok()) throw std::runtime_error("evaluation argmax over the tensor group: " + s.to_string());
    torch::Tensor winner = all_best.argmax(0);
    ids = all_ids.gather(0, winner.unsqueeze(0)).squeeze(0);
  }
  return {loss_sum, ids.eq(t).sum().item<double>()};
}

Status Gpt3d::reduce_sequence_partial_grads() {
  if (!sequence_parallel_ || partial_in_backward_) return Status::ok();
  for (const Gpt3dParam& p : params_) {
    if (!p.sequence_partial || !p.value.grad().defined()) continue;
    torch::Tensor g = p.value.mutable_grad();
    KILN_RETURN_IF_ERROR(tp_.allreduce(g.data_ptr(), static_cast<std::size_t>(g.numel()), comm::DataType::kFloat32,
                                       comm::ReduceOp::kSum)->wait().with_context("sequence-parallel gradient of " + p.name));
  }
  return Status::ok();
}

// Every tensor rank runs the same graph, so autograd reaches these hooks in
// the same order on each: the allreduces pair up as the forward's do.
void Gpt3d::reduce_sequence_partial_grads_in_backward() {
  if (!sequence_parallel_ || partial_in_backward_) return;
  partial_in_backward_ = true;
  for (const Gpt3dParam& p : params_) {
    if (!p.sequence_partial) continue;
    comm::Communicator* tp = &tp_;
    const std::string name = p.name;
    p.value.register_hook([tp, name](const torch::Tensor& g) {
      torch::Tensor sum = g.contiguous().clone();
      const comm::DataType dtype = sum.scalar_type() == torch::kBFloat16 ? comm::DataType::kBFloat16
                                                                          : comm::DataType::kFloat32;
      Status s = tp->allreduce(sum.data_ptr(), static_cast<std::size_t>(sum.numel()), dtype, comm::ReduceOp::kSum)
                     ->wait()
                     .with_context("sequence-parallel gradient of " + name);
      if (!s.is_ok()) throw std::runtime_error(s.to_string());
      return sum;
    });
  }
}

}  // namespace kiln::train
