// What the planner is asked about: model shape, cluster, layout, reliability.
//
// A PlanConfig comes from a TOML file (parse_config_file), from one row of a
// validation CSV (validate.h), or from code. check_layout() says whether the
// layout can run at all (divisibility); it does not say whether it fits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/efficiency.h"
#include "kiln/plan/gpu_catalog.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan {

// kSaveQkv: the whole layer is recomputed except the Q, K and V projections,
// whose outputs are kept (MaxText's remat_policy save_qkv_proj).
enum class Recompute { kNone, kSelective, kFull, kSaveQkv };
// True when the backward reruns the layer's forward GEMMs (full or save_qkv).
inline bool recomputes_forward(Recompute r) {
  return r == Recompute::kFull || r == Recompute::kSaveQkv;
}
enum class AttentionKernel { kFlash, kUnfused };
// What ZeRO-3 gathers in one collective: a transformer layer's parameters as
// one flat buffer (PyTorch FSDP, Megatron's distributed optimizer, DeepSpeed
// since coalesced gathers), or each parameter tensor on its own (DeepSpeed
// ZeRO-3 as of 2021): the latter pays a collective's latency per tensor.
enum class GatherUnit { kLayer, kTensor };

std::string_view recompute_name(Recompute r);
Result<Recompute> parse_recompute(std::string_view text);
std::string_view attention_name(AttentionKernel a);
Result<AttentionKernel> parse_attention(std::string_view text);
std::string_view gather_unit_name(GatherUnit g);
Result<GatherUnit> parse_gather_unit(std::string_view text);
std::string_view mma_name(MmaIssue m);
Result<MmaIssue> parse_mma(std::string_view text);
// The MMA instructions a stack uses by default on `gpu`: asynchronous where
// the GPU has them (Hopper and later), else synchronous.
MmaIssue default_mma(const GpuSpec& gpu);

struct ModelSpec {
  std::string name = "model";
  std::int64_t layers = 0;
  std::int64_t hidden = 0;
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;  // == heads for multi-head attention
  std::int64_t ffn_hidden = 0;
  bool glu = false;  // gated FFN (SwiGLU): three FFN matrices instead of two
  std::int64_t seq_len = 0;
  std::int64_t vocab = 0;
  // Family details. Defaults follow `glu`: GPT-style (glu = false) has biases,
  // learned positions, tied embeddings and dropout; Llama-style has none.
  bool bias = true;
  bool learned_positions = true;
  bool tied_embeddings = true;
  bool dropout = true;

  std::int64_t head_dim() const { return hidden / heads; }
  std::int64_t kv_dim() const { return kv_heads * head_dim(); }
  // Sets bias/positions/tying/dropout from `glu`.
  void set_family_defaults();
};

struct ClusterSpec {
  GpuSpec gpu;
  std::int64_t nodes = 1;
  std::int64_t gpus_per_node = 8;
  double nvlink_bytes_per_s = 0;         // per GPU, bidirectional aggregate
  double nic_bits_per_s = 0;             // per GPU, one direction
  double storage_write_bytes_per_s = 0;  // aggregate, to the checkpoint store
  // A CPU host measured by `kiln plan calibrate` instead of a catalog GPU
  // (cluster.profile): then gpus_per_node counts ranks per host and the step
  // is predicted by host_step_time.h. Shared: a search copies configs.
  std::shared_ptr<const HostProfile> host;
  int threads_per_rank = 0;  // intra-op threads per rank on a CPU host; 0 = kiln train's default

  std::int64_t gpus() const { return nodes * gpus_per_node; }
};

struct LayoutSpec {
  std::int64_t tp = 1;
  std::int64_t pp = 1;
  std::int64_t dp = 1;
  std::int64_t vpp = 1;           // virtual pipeline stages (interleaved 1F1B) per device
  std::int64_t micro_batch = 1;   // sequences
  std::int64_t global_batch = 1;  // sequences per step
  Recompute recompute = Recompute::kNone;
  bool sequence_parallel = false;
  int zero = 0;  // 0..3
  AttentionKernel attention = AttentionKernel::kFlash;
  // The tensor-core instructions the kernels were built for (efficiency.h):
  // asynchronous wgmma on Hopper with CUDA >= 12.0, synchronous mma.sync on
  // Ampere and on Hopper under older stacks.
  MmaIssue mma = MmaIssue::kSync;
  bool overlap_grad_reduce = true;  // DP reduction overlapped with the last backward
  // TP collectives overlapped with the layer's GEMMs (Megatron-Core's
  // userbuffers / tp_comm_overlap, MegaScale): only what the GEMMs cannot
  // cover stays on the critical path.
  bool tp_comm_overlap = false;
  GatherUnit zero3_gather = GatherUnit::kLayer;
  // Bytes per parameter ZeRO-3 gathers and reduce-scatters: 2 when the
  // sharded parameters are bf16, 4 when fp32 masters are gathered and cast
  // per use under autocast (PyTorch FSDP's default mixed precision).
  int zero3_param_bytes = 2;
  // Hybrid sharding (FSDP's HYBRID_SHARD, MaxText's fsdp × data mesh axes):
  // ZeRO-3 shards the model states over groups of this many consecutive DP
  // ranks, and the dp / zero3_shard_group groups hold replicas that
  // all-reduce each rank's gradient shard. 0 = one group of all dp ranks.
  std::int64_t zero3_shard_group = 0;
  // Megatron's pipeline scatter/gather (Narayanan et al. 2021 §4.1): each TP
  // rank sends only its 1/t slice of the activation between stages and the
  // slices are all-gathered over NVLink. Without it (DeepSpeed's pipeline
  // engine) every TP rank sends the whole activation on its NIC.
  bool pp_scatter_gather = true;
  // Layers of each pipeline stage; empty = automatic (stages.h).
  std::vector<std::int64_t> stage_layers;

  std::int64_t micro_batches() const { return global_batch / (dp * micro_batch); }
  // DP ranks the ZeRO-3 model states are sharded over, and the replicas of each shard.
  std::int64_t zero3_shards() const { return zero3_shard_group > 0 ? zero3_shard_group : dp; }
  std::int64_t zero3_replicas() const { return dp / zero3_shards(); }
};

struct ReliabilitySpec {
  double job_mtbf_s = 0;                    // mean time between failures of the whole job
  double restart_s = 600;                   // detect, replace, reload: lost wall time per failure
  std::int64_t checkpoint_every_steps = 0;  // the interval being judged; 0 = none given
  bool async_checkpoint = false;            // if true the step pays only the device-to-host copy
};

struct PlanConfig {
  std::string source =
      "config";  // where it came from, for messages: "config x.toml", "csv f.csv:3 (name)"
  ModelSpec model;
  ClusterSpec cluster;
  LayoutSpec layout;
  ReliabilitySpec reliability;
};

// Reads a TOML plan (see docs/plan.md for the schema). `overrides` are
// "section.key=value" strings applied on top (value in TOML syntax, bare words
// taken as strings). Errors name the file and the field:
//   "config x.toml: field 'layout.tp' must be a positive integer (got "eight")".
Result<PlanConfig> parse_config_file(const std::string& path,
                                     const std::vector<std::string>& overrides = {});
Result<PlanConfig> parse_config_string(std::string_view toml_text, const std::string& source,
                                       const std::vector<std::string>& overrides = {});

// InvalidArgument unless tp*pp*dp == gpus, heads and kv heads divide by tp,
// the stages hold the layers (stages.h: uneven splits are fine), global batch
// divides by dp*micro_batch, and the values are in range.
Status check_layout(const PlanConfig& config);

}  // namespace kiln::plan
