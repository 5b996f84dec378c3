#include "kiln/train/train_config.h"

#include <cmath>
#include <numbers>

#include <fmt/format.h>

#include "kiln/base/config/toml_reader.h"

namespace kiln::train {
namespace {

// [parallel] prefetch: each unit gathered ahead is one more unit in memory;
// past a handful the link, not the depth, limits what is hidden.
constexpr std::int64_t kMaxPrefetch = 8;

constexpr char kSections[] =
    "[model], [data], [optim], [train], [eval], [checkpoint], [ddp] or [parallel]";

Result<TrainConfig> from_table(const toml::table& root, const std::string& source) {
  config::TomlReader r(root, source);
  TrainConfig c;
  c.source = source;

  std::string kind = r.get_string("model", "kind", true, "cnn");
  if (kind == "cnn") {
    c.model.kind = ModelKind::kCnn;
  } else if (kind == "gpt") {
    c.model.kind = ModelKind::kGpt;
  } else {
    r.fail_field("model", "kind", "must be \"cnn\" or \"gpt\" (got \"" + kind + "\")");
  }
  c.model.channels = static_cast<int>(r.get_int("model", "channels", false, c.model.channels));
  c.model.hidden = static_cast<int>(r.get_int("model", "hidden", false, c.model.hidden));
  c.model.vocab = static_cast<int>(r.get_int("model", "vocab", false, c.model.vocab, 2));
  c.model.seq_len = static_cast<int>(r.get_int("model", "seq_len", false, c.model.seq_len));
  c.model.d_model = static_cast<int>(r.get_int("model", "d_model", false, c.model.d_model));
  c.model.layers = static_cast<int>(r.get_int("model", "layers", false, c.model.layers));
  c.model.heads = static_cast<int>(r.get_int("model", "heads", false, c.model.heads));
  c.model.dropout = r.get_nonnegative("model", "dropout", c.model.dropout);
  std::string positions = r.get_string("model", "positions", false, "learned");
  if (positions == "rotary") {
    c.model.rotary = true;
  } else if (positions != "learned") {
    r.fail_field("model", "positions", "must be \"learned\" or \"rotary\" (got \"" + positions + "\")");
  }
  if (c.model.d_model % c.model.heads != 0) {
    r.fail_field("model", "heads", fmt::format("must divide model.d_model ({} % {} != 0)",
                                               c.model.d_model, c.model.heads));
  }
  if (c.model.dropout >= 1) r.fail_field("model", "dropout", "must be < 1");

  c.data.dir = r.get_string("data", "dir", true, "");
  c.data.prepare = r.get_string("data", "prepare", false, "");
  if (!c.data.prepare.empty() && c.data.prepare != "fashion-mnist" && c.data.prepare != "text") {
    r.fail_field("data", "prepare",
                 "must be \"fashion-mnist\" or \"text\" (got \"" + c.data.prepare + "\")");
  }
  c.data.sources = r.get_strings("data", "sources", {});
  if (c.data.prepare == "text" && c.data.sources.empty()) {
    r.fail_field("data", "sources", "is required when data.prepare = \"text\"");
  }
  c.data.cache_dir = r.get_string("data", "cache_dir", false, c.data.dir + "/.cache");
  c.data.cache_bytes = static_cast<std::uint64_t>(
      r.get_double("data", "cache_gib", false, static_cast<double>(c.data.cache_bytes) / (1 << 30)) *
      (1 << 30));
  c.data.shuffle_window = static_cast<std::uint64_t>(
      r.get_int("data", "shuffle_window", false, static_cast<std::int64_t>(c.data.shuffle_window)));
  c.data.workers = static_cast<int>(r.get_int("data", "workers", false, c.data.workers));
  c.data.queue_depth = static_cast<int>(r.get_int("data", "queue_depth", false, c.data.queue_depth));

  std::string opt = r.get_string("optim", "kind", false, "adamw");
  if (opt == "adamw") {
    c.optim.kind = OptimizerKind::kAdamW;
  } else if (opt == "sgd") {
    c.optim.kind = OptimizerKind::kSgd;
  } else {
    r.fail_field("optim", "kind", "must be \"adamw\" or \"sgd\" (got \"" + opt + "\")");
  }
  c.optim.lr = r.get_double("optim", "lr", false, c.optim.lr);
  c.optim.min_lr = r.get_nonnegative("optim", "min_lr", c.optim.min_lr);
  c.optim.weight_decay = r.get_nonnegative("optim", "weight_decay", c.optim.weight_decay);
  c.optim.momentum = r.get_nonnegative("optim", "momentum", c.optim.momentum);
  c.optim.beta1 = r.get_nonnegative("optim", "beta1", c.optim.beta1);
  c.optim.beta2 = r.get_nonnegative("optim", "beta2", c.optim.beta2);
  c.optim.warmup_steps = r.get_int("optim", "warmup_steps", false, c.optim.warmup_steps, 0);
  std::string schedule = r.get_string("optim", "schedule", false, "cosine");
  if (schedule == "cosine") {
    c.optim.schedule = Schedule::kCosine;
  } else if (schedule == "constant") {
    c.optim.schedule = Schedule::kConstant;
  } else {
    r.fail_field("optim", "schedule", "must be \"cosine\" or \"constant\" (got \"" + schedule + "\")");
  }
  c.optim.grad_clip = r.get_nonnegative("optim", "grad_clip", c.optim.grad_clip);
  if (c.optim.beta1 >= 1) r.fail_field("optim", "beta1", "must be < 1");
  if (c.optim.beta2 >= 1) r.fail_field("optim", "beta2", "must be < 1");
  if (c.optim.min_lr > c.optim.lr) r.fail_field("optim", "min_lr", "must not exceed optim.lr");

  c.train.batch_size = r.get_int("train", "batch_size", false, c.train.batch_size);
  c.train.grad_accum = r.get_int("train", "grad_accum", false, c.train.grad_accum);
  c.train.max_steps = r.get_int("train", "max_steps", false, c.train.max_steps);
  c.train.seed = static_cast<std::uint64_t>(r.get_int("train", "seed", false, 0, 0));
  c.train.log_every = r.get_int("train", "log_every", false, c.train.log_every);
  c.train.threads = static_cast<int>(r.get_int("train", "threads", false, 0, 0));

  c.eval.every = r.get_int("eval", "every", false, c.eval.every, 0);
  c.eval.batch_size = r.get_int("eval", "batch_size", false, c.eval.batch_size);

  c.checkpoint.dir = r.get_string("checkpoint", "dir", false, "");
  c.checkpoint.every = r.get_int("checkpoint", "every", false, c.checkpoint.every, 0);
  c.checkpoint.keep = static_cast<int>(r.get_int("checkpoint", "keep", false, c.checkpoint.keep));
  c.checkpoint.resume = r.get_bool("checkpoint", "resume", c.checkpoint.resume);
  c.checkpoint.memory = r.get_bool("checkpoint", "memory", c.checkpoint.memory);
  c.checkpoint.memory_dir = r.get_string("checkpoint", "memory_dir", false, "");
  c.checkpoint.remote = r.get_string("checkpoint", "remote", false, "");
  c.checkpoint.object_layout =
      r.get_string("checkpoint", "object_layout", false, c.checkpoint.object_layout);
  if (c.checkpoint.object_layout != "chunks" && c.checkpoint.object_layout != "multipart") {
    r.fail_field("checkpoint", "object_layout",
                 "must be \"chunks\" or \"multipart\" (got \"" + c.checkpoint.object_layout + "\")");
  }

  if (r.has("ddp", "bucket_cap_mib") &&
      root["ddp"]["bucket_cap_mib"].value_exact<std::string>() == std::optional<std::string>("auto")) {
    r.get_string("ddp", "bucket_cap_mib", false, "auto");
    c.ddp.bucket_cap_mib.reset();
  } else {
    c.ddp.bucket_cap_mib = r.get_double("ddp", "bucket_cap_mib", false, 25);
  }
  c.ddp.bf16 = r.get_bool("ddp", "bf16", false);

  const std::string strategy = r.get_string("parallel", "strategy", false, "ddp");
  if (strategy == "ddp") {
    c.parallel.strategy = Strategy::kDdp;
  } else if (strategy == "zero1") {
    c.parallel.strategy = Strategy::kZero1;
  } else if (strategy == "zero2") {
    c.parallel.strategy = Strategy::kZero2;
  } else if (strategy == "zero3") {
    c.parallel.strategy = Strategy::kZero3;
  } else {
    r.fail_field("parallel", "strategy",
                 "must be \"ddp\", \"zero1\", \"zero2\" or \"zero3\" (got \"" + strategy + "\")");
  }
  const std::string precision = r.get_string("parallel", "precision", false, "fp32");
  if (precision == "fp32") {
    c.parallel.precision = Precision::kFp32;
  } else if (precision == "bf16") {
    c.parallel.precision = Precision::kBf16;
  } else {
    r.fail_field("parallel", "precision", "must be \"fp32\" or \"bf16\" (got \"" + precision + "\")");
  }
  c.parallel.min_unit_params = r.get_int("parallel", "min_unit_params", false, 0, 0);
  c.parallel.prefetch = static_cast<int>(r.get_int("parallel", "prefetch", false, 1, 1));
  if (c.parallel.prefetch > kMaxPrefetch) {
    r.fail_field("parallel", "prefetch", fmt::format("must be 1 to {} units", kMaxPrefetch));
  }
  if (r.has("parallel", "prefetch") && c.parallel.strategy != Strategy::kZero3) {
    r.fail_field("parallel", "prefetch", "gathers parameters ahead: only strategy = \"zero3\" gathers them");
  }
  c.parallel.memory_cap_mib = r.get_double("parallel", "memory_cap_mib", false, 0);
  if (c.parallel.memory_cap_mib < 0) r.fail_field("parallel", "memory_cap_mib", "must be >= 0 (0 = no cap)");
  c.parallel.memory_cap_from_cgroup = r.get_bool("parallel", "memory_cap_from_cgroup", false);
  c.parallel.memory_cgroup_reserve_mib = r.get_double("parallel", "memory_cgroup_reserve_mib", false, -1);
  if (r.has("parallel", "memory_cgroup_reserve_mib") && c.parallel.memory_cgroup_reserve_mib < 0) {
    r.fail_field("parallel", "memory_cgroup_reserve_mib", "must be >= 0");
  }
  if (r.has("parallel", "memory_cgroup_reserve_mib") && !c.parallel.memory_cap_from_cgroup) {
    r.fail_field("parallel", "memory_cgroup_reserve_mib", "applies with memory_cap_from_cgroup = true");
  }
  if (c.parallel.precision == Precision::kBf16 && c.parallel.strategy == Strategy::kDdp) {
    r.fail_field("parallel", "precision",
                 "bf16 compute needs a sharded strategy (zero1/2/3); with ddp use [ddp] bf16 = true "
                 "to communicate gradients in bf16");
  }
  c.parallel.tp = static_cast<int>(r.get_int("parallel", "tp", false, 1));
  c.parallel.pp = static_cast<int>(r.get_int("parallel", "pp", false, 1));
  c.parallel.microbatches = static_cast<int>(r.get_int("parallel", "microbatches", false, 1));
  c.parallel.schedule = r.get_string("parallel", "schedule", false, "1f1b");
  if (c.parallel.schedule != "1f1b" && c.parallel.schedule != "interleaved") {
    r.fail_field("parallel", "schedule",
                 "must be \"1f1b\" or \"interleaved\" (got \"" + c.parallel.schedule + "\")");
  }
  c.parallel.chunks = static_cast<int>(
      r.get_int("parallel", "chunks", false, c.parallel.schedule == "interleaved" ? 2 : 1));
  if (c.parallel.schedule == "1f1b" && c.parallel.chunks != 1) {
    r.fail_field("parallel", "chunks", "needs schedule = \"interleaved\" (1f1b runs one chunk per rank)");
  }
  c.parallel.stage_layers = r.get_ints("parallel", "stage_layers", {}, 0);
  c.parallel.sequence_parallel = r.get_bool("parallel", "sequence_parallel", false);
  if (c.parallel.three_d()) {
    if (c.model.kind != ModelKind::kGpt) {
      r.fail_field("parallel", c.parallel.tp > 1 ? "tp" : "pp", "tensor and pipeline parallelism split the GPT (model.kind = \"gpt\")");
    }
    if (c.parallel.strategy != Strategy::kDdp && c.parallel.strategy != Strategy::kZero1) {
      r.fail_field("parallel", "strategy", "with tp or pp > 1, data parallelism across replicas is \"ddp\" or \"zero1\"");
    }
    for (const char* key : {"memory_cap_mib", "memory_cap_from_cgroup"}) {
      if (r.has("parallel", key)) {
        r.fail_field("parallel", key, "the per-rank memory cap applies without tp and pp (tp = pp = 1)");
      }
    }
  }

  r.check_unknown(kSections, "docs/train.md");
  KILN_RETURN_IF_ERROR(r.status());
  return c;
}

}  // namespace

Result<TrainConfig> parse_train_config_file(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(toml::table root, config::parse_toml(path, true));
  return from_table(root, path);
}

Result<TrainConfig> parse_train_config_string(const std::string& text, const std::string& source) {
  KILN_ASSIGN_OR_RETURN(toml::table root, config::parse_toml(source, false, text));
  return from_table(root, source);
}

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kDdp: return "ddp";
    case Strategy::kZero1: return "zero1";
    case Strategy::kZero2: return "zero2";
    case Strategy::kZero3: return "zero3";
  }
  return "?";
}

double learning_rate(const OptimConfig& optim, std::int64_t step, std::int64_t total_steps) {
  if (step < optim.warmup_steps) {
    return optim.lr * static_cast<double>(step + 1) / static_cast<double>(optim.warmup_steps);
  }
  if (optim.schedule == Schedule::kConstant) return optim.lr;
  std::int64_t span = std::max<std::int64_t>(1, total_steps - optim.warmup_steps);
  double progress = std::min(1.0, static_cast<double>(step - optim.warmup_steps) / span);
  return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + std::cos(std::numbers::pi * progress));
}

}  // namespace kiln::train
