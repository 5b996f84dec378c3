// TrainConfig: what `kiln train CONFIG.toml` reads (schema: docs/train.md).
// Parsing is strict: unknown fields and out-of-range values are errors naming
// the field and line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::train {

enum class ModelKind { kCnn, kGpt };
enum class OptimizerKind { kAdamW, kSgd };
enum class Schedule { kCosine, kConstant };

struct ModelConfig {
  ModelKind kind = ModelKind::kCnn;
  // cnn
  int channels = 32;  // first conv; the second has twice as many
  int hidden = 128;
  // gpt
  int vocab = 256;
  int seq_len = 128;
  int d_model = 128;
  int layers = 4;
  int heads = 4;
  double dropout = 0.0;
  bool rotary = false;  // rotary positions instead of learned ones
};

struct DataConfig {
  std::string dir;                   // holds train/ and test/ (the converter's layout)
  std::string prepare;               // "fashion-mnist", "text" or "" (must exist)
  std::vector<std::string> sources;  // text files for prepare = "text"
  std::string cache_dir;             // default: <dir>/.cache
  std::uint64_t cache_bytes = 4ull << 30;
  std::uint64_t shuffle_window = 8192;
  int workers = 2;
  int queue_depth = 4;
};

struct OptimConfig {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double lr = 1e-3;
  double min_lr = 0.0;
  double weight_decay = 0.01;
  double momentum = 0.9;  // sgd
  double beta1 = 0.9, beta2 = 0.999;
  std::int64_t warmup_steps = 0;
  Schedule schedule = Schedule::kCosine;
  double grad_clip = 0.0;  // max global L2 norm; 0 = off
};

struct TrainLoopConfig {
  std::int64_t batch_size = 128;  // global samples per optimizer step
  std::int64_t grad_accum = 1;    // micro-batches per step (no_sync on all but the last)
  std::int64_t max_steps = 1000;
  std::uint64_t seed = 0;
  std::int64_t log_every = 20;
  int threads = 0;  // torch intra-op threads per rank; 0 = cores / local ranks
};

struct EvalConfig {
  std::int64_t every = 0;  // steps; 0 = only at the end
  std::int64_t batch_size = 500;
};

struct CheckpointConfig {
  std::string dir;         // empty: no checkpoints
  std::int64_t every = 0;  // steps; 0 = only at the end
  int keep = 3;
  bool resume = true;  // start from the newest valid checkpoint in dir
  // The in-memory tier (kiln/ckpt/memory_tier.h): each save also goes to
  // memory_dir with a replica on the ring successor, and a restart under
  // `kiln run` recovers from there without reading dir.
  bool memory = true;
  std::string memory_dir;  // empty: /dev/shm/kiln-ckpt-<hash of dir>
  // The remote tier (kiln/ckpt/remote.h): s3://BUCKET/PREFIX or file://DIR.
  // Each committed step is also uploaded there; a run whose dir holds no
  // loadable checkpoint (a new machine, a lost disk) resumes from it.
  std::string remote;
  // With an s3:// or file:// dir: each shard as part-sized chunk objects
  // ("chunks", plain PUTs listed in the manifest) or one multipart upload
  // ("multipart"). Note [Shards as chunk objects] in kiln/ckpt/remote.h.
  std::string object_layout = "chunks";
};

struct DdpConfig {
  std::optional<double> bucket_cap_mib = 25;  // nullopt = auto
  bool bf16 = false;
};

// How the model is spread over the ranks (docs/train.md "[parallel]").
enum class Strategy { kDdp, kZero1, kZero2, kZero3 };
enum class Precision { kFp32, kBf16 };

struct ParallelConfig {
  Strategy strategy = Strategy::kDdp;
  Precision precision = Precision::kFp32;
  // Sharded strategies: child modules smaller than this many parameters are
  // merged into one unit with their neighbours (0: one unit per module).
  std::int64_t min_unit_params = 0;
  // zero3: units whose gather is started ahead of the one computing, in
  // forward, in backward and during the optimizer step (ZeroOptions::prefetch;
  // each is one more unit of parameters in memory).
  int prefetch = 1;
  // A per-rank cap on tensor memory (MiB; 0 = none), enforced by the CPU
  // allocator (kiln/parallel/counting_allocator.h): an allocation past it
  // fails as a device out of memory would. The run first checks that the
  // strategy's training state fits and otherwise fails at once, naming the
  // strategies that would.
  double memory_cap_mib = 0;
  // The cap from the rank's memory cgroup (kiln/base/cgroup_memory.h), which
  // the kernel enforces: its limit, less what the process holds before the
  // model is built, less memory_cgroup_reserve_mib for what is not a tensor
  // (freed blocks the C allocator keeps, buffers, stacks, the communicator's
  // staging; < 0: 10% of the headroom, at least 32 MiB). With memory_cap_mib
  // also set, the lower of the two applies (kiln/train/memory_cap.h).
  bool memory_cap_from_cgroup = false;
  double memory_cgroup_reserve_mib = -1;

  // 3D parallelism (docs/train.md "Tensor and pipeline parallelism"): the
  // GPT split over tp ranks (Megatron-LM layers) and pp pipeline stages;
  // dp = world / (tp x pp) replicas, with `strategy` ddp or zero1 across them.
  int tp = 1;
  int pp = 1;
  int microbatches = 1;                  // per step, through the pipeline
  std::string schedule = "1f1b";         // or "interleaved"
  int chunks = 1;                        // model chunks per rank (interleaved)
  std::vector<std::int64_t> stage_layers;  // per global stage; empty = even split
  bool sequence_parallel = false;
  bool three_d() const { return tp > 1 || pp > 1; }
};

const char* strategy_name(Strategy s);

struct TrainConfig {
  std::string source;  // the file it came from
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  TrainLoopConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DdpConfig ddp;
  ParallelConfig parallel;
};

Result<TrainConfig> parse_train_config_file(const std::string& path);
Result<TrainConfig> parse_train_config_string(const std::string& text, const std::string& source);

// The learning rate at `step` (0-based): linear warmup from lr/warmup to lr
// over warmup_steps, then cosine decay to min_lr at total_steps (or constant).
double learning_rate(const OptimConfig& optim, std::int64_t step, std::int64_t total_steps);

}  // namespace kiln::train
