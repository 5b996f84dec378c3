// The GPT of task.cc split for tensor and pipeline parallelism (Megatron-LM;
// Shoeybi et al. 2019, Narayanan et al. 2021).
//
// Tensor parallelism over the tensor group of T ranks, per layer: the
// attention's qkv projection is column-parallel by heads (each rank holds
// H / T heads of q, k and v), its output projection row-parallel; the MLP's
// first linear column-parallel, its second row-parallel; so each layer needs
// two allreduces forward and two backward. The token embedding and the output
// head are split by vocabulary, and the loss is the vocabulary-parallel
// cross-entropy: no rank holds whole logits. Layer norms, biases of
// row-parallel layers and learned positions are replicated.
// With sequence_parallel, the activations between those regions are split
// along the sequence instead of replicated (Korthikanti et al. 2022):
// allgather / reduce-scatter replace the allreduces, and the replicated
// parameters' gradients are partial sums that the trainer reduces over the
// tensor group (Gpt3dParam::sequence_partial).
//
// Pipeline parallelism: the layers are spread over p x v global stages
// (evenly, or by explicit counts); global stage g = c * p + s runs on
// pipeline rank s as its chunk c. The embedding sits on the first global
// stage, the final norm and head on the last.
//
// Built from the whole model with the same seed as one process would use, so
// every layout starts from the same parameters as one-process training.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/mesh/mesh_layout.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// How a parameter of the whole model is split over the tensor group: along
// dimension `dim` (< 0: replicated), after cutting it into `blocks` equal
// parts that are each split (qkv: q, k and v each split by heads).
struct ShardSpec {
  int dim = -1;
  int blocks = 1;
  bool replicated() const { return dim < 0; }
};
ShardSpec tensor_shard_spec(const std::string& whole_model_name);
torch::Tensor take_shard(const torch::Tensor& whole, ShardSpec spec, int rank, int ranks);
// The inverse: shards[r] is rank r's.
torch::Tensor join_shards(const std::vector<torch::Tensor>& shards, ShardSpec spec);

// Layers per global stage: `explicit_counts` (must sum to `layers`, one per
// global stage) or an even split (the first stages take the remainder).
Result<std::vector<int>> stage_layer_counts(int layers, int global_stages,
                                            const std::vector<std::int64_t>& explicit_counts);

struct Gpt3dParam {
  std::string name;                      // in the whole model ("blocks.3.fc.weight")
  torch::Tensor value;                   // this rank's shard (a registered parameter)
  ShardSpec spec;
  std::vector<std::int64_t> whole_shape;
  bool sequence_partial = false;  // sequence parallel: gradient is a partial sum over the group
};

class GptChunkImpl;

struct Gpt3dOptions {
  int chunks = 1;  // model chunks per pipeline rank (v)
  std::vector<std::int64_t> stage_layers;
  bool sequence_parallel = false;
};

class Gpt3d {
 public:
  // `whole` is task.cc's GPT for `config`, built with the run's seed.
  static Result<std::unique_ptr<Gpt3d>> create(const ModelConfig& config, torch::nn::Module& whole,
                                               const parallel::MeshLayout& mesh, int rank,
                                               comm::Communicator& tensor_group, Gpt3dOptions options);

  int chunk_count() const { return static_cast<int>(chunks_.size()); }
  // A module holding chunk c's parameters (for optimizers and data-parallel
  // wrappers).
  std::shared_ptr<torch::nn::Module> chunk_module(int c) const;
  // Chunk c's forward: tokens [B, T] (int64) on the first global stage, else
  // the previous stage's activations; returns activations, or on the last
  // global stage this rank's vocabulary columns of the logits [B, T, V / T].
  torch::Tensor forward(int c, const torch::Tensor& input);
  // The per-token losses' mean over the batch, from the last stage's logits.
  torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets);
  // Sum of per-token losses (evaluation) and the number of correct argmax
  // predictions (requires the group's max: collective over the tensor group).
  std::pair<double, double> loss_sum_and_correct(const torch::Tensor& logits, const torch::Tensor& targets);

  // Shape of the activations chunk c receives for a micro-batch of `batch`.
  std::vector<std::int64_t> activation_shape(std::int64_t batch) const;
  bool holds_embedding(int c) const;
  bool holds_head(int c) const;

  // Every parameter this rank holds, in the whole model's order.
  const std::vector<Gpt3dParam>& params() const { return params_; }
  // Sequence parallel: sums the partial gradients over the tensor group
  // (after the step's backward; nothing once the sums run in backward).
  Status reduce_sequence_partial_grads();
  // Sequence parallel, for data-parallel wrappers that take the gradients
  // during backward (ZeRO-1): sums each backward's partial gradients over
  // the tensor group as autograd produces them, before they are stored.
  void reduce_sequence_partial_grads_in_backward();

  // The global stage holding a parameter of the whole model, and the
  // layout's sizes (for reassembling the whole model from every rank's part).
  int global_stage_of(const std::string& whole_model_name) const;
  int tensor_ranks() const { return tp_.size(); }

 private:
  Gpt3d(const ModelConfig& c, comm::Communicator& tensor_group) : config_(c), tp_(tensor_group) {}
  ModelConfig config_;
  comm::Communicator& tp_;
  bool sequence_parallel_ = false;
  bool partial_in_backward_ = false;
  std::int64_t vocab_start_ = 0;
  std::vector<std::shared_ptr<GptChunkImpl>> chunks_;
  std::vector<Gpt3dParam> params_;
  std::vector<int> stage_of_layer_;
  int global_stages_ = 1;
};

}  // namespace kiln::train
