#include "kiln/plan/config.h"

#include <toml++/toml.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "kiln/base/config/toml_reader.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

std::string_view recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kFull:
      return "full";
    case Recompute::kSaveQkv:
      return "save_qkv";
  }
  return "?";
}

Result<Recompute> parse_recompute(std::string_view text) {
  if (text == "none") return Recompute::kNone;
  if (text == "selective") return Recompute::kSelective;
  if (text == "full") return Recompute::kFull;
  if (text == "save_qkv") return Recompute::kSaveQkv;
  return invalid_argument("recompute must be none, selective, full or save_qkv (got '" +
                          std::string(text) + "')");
}

std::string_view attention_name(AttentionKernel a) {
  return a == AttentionKernel::kFlash ? "flash" : "unfused";
}

Result<AttentionKernel> parse_attention(std::string_view text) {
  if (text == "flash") return AttentionKernel::kFlash;
  if (text == "unfused") return AttentionKernel::kUnfused;
  return invalid_argument("attention must be flash or unfused (got '" + std::string(text) + "')");
}

std::string_view gather_unit_name(GatherUnit g) {
  return g == GatherUnit::kLayer ? "layer" : "tensor";
}

Result<GatherUnit> parse_gather_unit(std::string_view text) {
  if (text == "layer") return GatherUnit::kLayer;
  if (text == "tensor") return GatherUnit::kTensor;
  return invalid_argument("zero3_gather must be layer or tensor (got '" + std::string(text) + "')");
}

std::string_view mma_name(MmaIssue m) { return m == MmaIssue::kSync ? "sync" : "async"; }

Result<MmaIssue> parse_mma(std::string_view text) {
  if (text == "sync") return MmaIssue::kSync;
  if (text == "async") return MmaIssue::kAsync;
  return invalid_argument("mma must be sync or async (got '" + std::string(text) + "')");
}

MmaIssue default_mma(const GpuSpec& gpu) {
  return is_ampere(gpu) ? MmaIssue::kSync : MmaIssue::kAsync;
}

void ModelSpec::set_family_defaults() {
  bias = !glu;
  learned_positions = !glu;
  tied_embeddings = !glu;
  dropout = !glu;
}

namespace {

using config::TomlReader;

// [cluster] of a CPU host: the profile (a path relative to the plan file),
// hosts, ranks per host and threads per rank. gpus_per_node stays 0 when
// ranks_per_node is not given; from_table fills it from the layout.
void read_host_cluster(TomlReader& r, const std::string& source, ClusterSpec* cl) {
  if (r.has("cluster", "gpu")) {
    r.fail_field("cluster", "gpu", "and 'cluster.profile' are exclusive (a GPU or a measured CPU host)");
    return;
  }
  std::string path = r.get_string("cluster", "profile", true, "");
  if (!r.status().is_ok()) return;
  namespace fs = std::filesystem;
  if (fs::path(path).is_relative() && fs::path(source).has_parent_path()) {
    path = (fs::path(source).parent_path() / path).string();
  }
  auto profile = read_host_profile(path);
  if (!profile.is_ok()) {
    r.fail_field("cluster", "profile", "(" + path + "): " + profile.status().message());
    return;
  }
  cl->host = std::make_shared<const HostProfile>(std::move(*profile));
  cl->nodes = r.get_int("cluster", "nodes", false, 1);
  cl->gpus_per_node = r.get_int("cluster", "ranks_per_node", false, 0, 0);
  cl->threads_per_rank = static_cast<int>(r.get_int("cluster", "threads_per_rank", false, 0, 0));
}

Status apply_override(toml::table& root, const std::string& spec, const std::string& source) {
  const auto eq = spec.find('=');
  const auto dot = spec.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
    return invalid_argument("config " + source + ": override '" + spec +
                            "' must look like section.key=value (e.g. layout.tp=4)");
  }
  const std::string section = spec.substr(0, dot);
  const std::string key = spec.substr(dot + 1, eq - dot - 1);
  const std::string value = spec.substr(eq + 1);
  if (!root[section]) root.insert(section, toml::table{});
  auto* table = root[section].as_table();
  if (!table) return invalid_argument("config " + source + ": '" + section + "' is not a section");
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    table->insert_or_assign(key, value);  // a bare word: take it as a string
    return Status::ok();
  }
  auto v = parsed["v"];
  if (v.is_integer()) {
    table->insert_or_assign(key, *v.value_exact<std::int64_t>());
  } else if (v.is_floating_point()) {
    table->insert_or_assign(key, *v.value_exact<double>());
  } else if (v.is_boolean()) {
    table->insert_or_assign(key, *v.value_exact<bool>());
  } else if (v.is_string()) {
    table->insert_or_assign(key, *v.value_exact<std::string>());
  } else if (v.is_array()) {
    table->insert_or_assign(key, *v.as_array());  // e.g. layout.stage_layers=[7,8,8,7]
  } else {
    return invalid_argument("config " + source + ": override '" + spec +
                            "' must be a number, boolean, string or array");
  }
  return Status::ok();
}

// layout.stage_layers: an array of positive integers. Read here (the shared
// TomlReader has no integer arrays) and removed from `root` so the reader's
// unknown-key check does not see it.
Result<std::vector<std::int64_t>> take_stage_layers(toml::table& root, const std::string& source) {
  auto* layout = root["layout"].as_table();
  if (!layout || !layout->contains("stage_layers")) return std::vector<std::int64_t>{};
  const toml::node& node = *layout->get("stage_layers");
  std::vector<std::int64_t> out;
  const toml::array* array = node.as_array();
  if (array) {
    for (const toml::node& item : *array) {
      auto v = item.value_exact<std::int64_t>();
      if (!v || *v < 1) {
        array = nullptr;
        break;
      }
      out.push_back(*v);
    }
  }
  if (!array || out.empty()) {
    return invalid_argument("config " + source + ":" + std::to_string(node.source().begin.line) +
                            ": field 'layout.stage_layers' must be a non-empty array of positive "
                            "integers (layers per pipeline stage, e.g. [7, 8, 8, 7])");
  }
  layout->erase("stage_layers");
  return out;
}

Result<PlanConfig> from_table(toml::table root, const std::string& source) {
  KILN_ASSIGN_OR_RETURN(std::vector<std::int64_t> stages, take_stage_layers(root, source));
  TomlReader r(root, source);
  PlanConfig c;
  c.source = "config " + source;
  c.layout.stage_layers = std::move(stages);

  auto& m = c.model;
  m.name = r.get_string("model", "name", false, "model");
  m.layers = r.get_int("model", "layers", true, 1);
  m.hidden = r.get_int("model", "hidden", true, 1);
  m.heads = r.get_int("model", "heads", true, 1);
  m.kv_heads = r.get_int("model", "kv_heads", false, m.heads);
  m.glu = r.get_bool("model", "glu", false);
  m.ffn_hidden = r.get_int("model", "ffn_hidden", m.glu, 4 * m.hidden);
  m.seq_len = r.get_int("model", "seq_len", true, 1);
  m.vocab = r.get_int("model", "vocab", true, 1);
  m.set_family_defaults();
  m.bias = r.get_bool("model", "bias", m.bias);
  m.learned_positions = r.get_bool("model", "learned_positions", m.learned_positions);
  m.tied_embeddings = r.get_bool("model", "tied_embeddings", m.tied_embeddings);
  m.dropout = r.get_bool("model", "dropout", m.dropout);

  auto& cl = c.cluster;
  const bool cpu_host = r.has("cluster", "profile");
  if (cpu_host) {
    read_host_cluster(r, source, &cl);
  } else {
    const std::string gpu_id = r.get_string("cluster", "gpu", true, "");
    if (r.status().is_ok()) {
      auto gpu = find_gpu(gpu_id);
      if (!gpu.is_ok()) {
        r.fail_field("cluster", "gpu", gpu.status().message());
      } else {
        cl.gpu = *gpu;
      }
    }
    cl.nodes = r.get_int("cluster", "nodes", true, 1);
    cl.gpus_per_node = r.get_int("cluster", "gpus_per_node", false, 8);
    cl.nvlink_bytes_per_s =
        r.get_double("cluster", "nvlink_gbytes_per_s", false, cl.gpu.nvlink_bytes_per_s / 1e9) * 1e9;
    cl.nic_bits_per_s =
        r.get_double("cluster", "nic_gbits_per_s", false, cl.gpu.nic_bits_per_s / 1e9) * 1e9;
  }
  cl.storage_write_bytes_per_s = r.get_double("storage", "write_gbytes_per_s", false, 20.0) * 1e9;

  auto& rel = c.reliability;
  if (r.has("reliability", "job_mtbf_hours") && r.has("reliability", "gpu_mtbf_hours")) {
    r.fail_field("reliability", "job_mtbf_hours", "and 'reliability.gpu_mtbf_hours' are exclusive");
  }
  if (r.has("reliability", "job_mtbf_hours")) {
    rel.job_mtbf_s = r.get_double("reliability", "job_mtbf_hours", false, 1) * 3600;
  } else {
    // Default per-GPU MTBF: Llama 3 (Dubey et al. 2024) saw 419 unexpected
    // interruptions in 54 days on 16,384 H100s, about 50,000 GPU-hours each.
    const double gpu_h = r.get_double("reliability", "gpu_mtbf_hours", false, 50000);
    rel.job_mtbf_s = gpu_h * 3600 / static_cast<double>(std::max<std::int64_t>(1, cl.gpus()));
  }
  rel.restart_s = r.get_double("reliability", "restart_minutes", false, 10) * 60;
  rel.checkpoint_every_steps = r.get_int("reliability", "checkpoint_every_steps", false, 0, 0);
  rel.async_checkpoint = r.get_bool("reliability", "async_checkpoint", false);

  auto& l = c.layout;
  l.tp = r.get_int("layout", "tp", false, 1);
  l.pp = r.get_int("layout", "pp", false, 1);
  const std::int64_t rest = cl.gpus() / std::max<std::int64_t>(1, l.tp * l.pp);
  l.dp = r.get_int("layout", "dp", false, std::max<std::int64_t>(1, rest));
  if (cpu_host && cl.gpus_per_node == 0) {
    // One rank per tp·pp·dp position, spread evenly over the hosts.
    cl.gpus_per_node = std::max<std::int64_t>(1, l.tp * l.pp * l.dp / cl.nodes);
  }
  l.vpp = r.get_int("layout", "vpp", false, 1);
  l.micro_batch = r.get_int("layout", "micro_batch", false, 1);
  l.global_batch = r.get_int("layout", "global_batch", true, 1);
  if (r.has("layout", "microbatches")) {
    // The runtime's spelling (kiln train --microbatches): micro-batches per
    // step per pipeline, instead of sequences per micro-batch.
    if (r.has("layout", "micro_batch")) {
      r.fail_field("layout", "microbatches", "and 'layout.micro_batch' are exclusive");
    }
    const std::int64_t m = r.get_int("layout", "microbatches", false, 1);
    if (r.status().is_ok() && l.global_batch % (l.dp * m) != 0) {
      r.fail_field("layout", "microbatches",
                   "(" + std::to_string(m) + ") times layout.dp (" + std::to_string(l.dp) +
                       ") does not divide layout.global_batch (" +
                       std::to_string(l.global_batch) + ")");
    } else if (r.status().is_ok()) {
      l.micro_batch = l.global_batch / (l.dp * m);
    }
  }
  const std::string rc = r.get_string("layout", "recompute", false, "none");
  if (auto v = parse_recompute(rc); v.is_ok()) {
    l.recompute = *v;
  } else {
    r.fail_field("layout", "recompute",
                 "must be none, selective, full or save_qkv (got \"" + rc + "\")");
  }
  l.sequence_parallel = r.get_bool("layout", "sequence_parallel", l.tp > 1);
  l.zero = static_cast<int>(r.get_int("layout", "zero", false, 0, 0));
  if (l.zero > 3)
    r.fail_field("layout", "zero", "must be 0, 1, 2 or 3 (got " + std::to_string(l.zero) + ")");
  const std::string attn =
      r.get_string("layout", "attention", false, is_ampere(cl.gpu) ? "unfused" : "flash");
  if (auto v = parse_attention(attn); v.is_ok()) {
    l.attention = *v;
  } else {
    r.fail_field("layout", "attention", "must be flash or unfused (got \"" + attn + "\")");
  }
  const std::string mma =
      r.get_string("layout", "mma", false, std::string(mma_name(default_mma(cl.gpu))));
  if (auto v = parse_mma(mma); v.is_ok()) {
    l.mma = *v;
  } else {
    r.fail_field("layout", "mma", "must be sync or async (got \"" + mma + "\")");
  }
  l.overlap_grad_reduce = r.get_bool("layout", "overlap_grad_reduce", true);
  l.tp_comm_overlap = r.get_bool("layout", "tp_comm_overlap", false);
  l.pp_scatter_gather = r.get_bool("layout", "pp_scatter_gather", true);
  l.zero3_param_bytes = static_cast<int>(r.get_int("layout", "zero3_param_bytes", false, 2));
  if (l.zero3_param_bytes != 2 && l.zero3_param_bytes != 4) {
    r.fail_field("layout", "zero3_param_bytes", "must be 2 (bf16) or 4 (fp32)");
  }
  l.zero3_shard_group = r.get_int("layout", "zero3_shard_group", false, 0, 0);
  const std::string gather = r.get_string("layout", "zero3_gather", false, "layer");
  if (auto v = parse_gather_unit(gather); v.is_ok()) {
    l.zero3_gather = *v;
  } else {
    r.fail_field("layout", "zero3_gather", "must be layer or tensor (got \"" + gather + "\")");
  }

  r.check_unknown("[model], [cluster], [storage], [reliability] or [layout]", "docs/plan.md");
  KILN_RETURN_IF_ERROR(r.status());
  KILN_RETURN_IF_ERROR(check_layout(c));
  return c;
}

Result<PlanConfig> parse_table(std::string_view text, const std::string& source, bool is_path,
                               const std::vector<std::string>& overrides) {
  KILN_ASSIGN_OR_RETURN(toml::table root, config::parse_toml(source, is_path, std::string(text)));
  for (const auto& o : overrides) KILN_RETURN_IF_ERROR(apply_override(root, o, source));
  return from_table(std::move(root), source);
}

}  // namespace

Result<PlanConfig> parse_config_file(const std::string& path,
                                     const std::vector<std::string>& overrides) {
  return parse_table({}, path, true, overrides);
}

Result<PlanConfig> parse_config_string(std::string_view toml_text, const std::string& source,
                                       const std::vector<std::string>& overrides) {
  return parse_table(toml_text, source, false, overrides);
}

Status check_layout(const PlanConfig& c) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const std::string where = c.source + ": ";
  auto bad = [&](const std::string& why) { return invalid_argument(where + why); };
  if (m.hidden % m.heads != 0) {
    return bad("model.hidden (" + std::to_string(m.hidden) + ") is not divisible by model.heads (" +
               std::to_string(m.heads) + ")");
  }
  if (m.kv_heads > m.heads || m.heads % m.kv_heads != 0) {
    return bad("model.heads (" + std::to_string(m.heads) +
               ") is not a multiple of model.kv_heads (" + std::to_string(m.kv_heads) + ")");
  }
  const std::int64_t gpus = c.cluster.gpus();
  if (l.tp * l.pp * l.dp != gpus) {
    return bad("layout tp*pp*dp = " + std::to_string(l.tp) + "*" + std::to_string(l.pp) + "*" +
               std::to_string(l.dp) + " = " + std::to_string(l.tp * l.pp * l.dp) +
               " but the cluster has " + std::to_string(gpus) + " GPUs");
  }
  if (m.heads % l.tp != 0) {
    return bad("model.heads (" + std::to_string(m.heads) + ") is not divisible by layout.tp (" +
               std::to_string(l.tp) + ")");
  }
  if (m.kv_heads % l.tp != 0 && l.tp % m.kv_heads != 0) {
    return bad("model.kv_heads (" + std::to_string(m.kv_heads) + ") and layout.tp (" +
               std::to_string(l.tp) + ") do not divide each other");
  }
  if (m.ffn_hidden % l.tp != 0) {
    return bad("model.ffn_hidden (" + std::to_string(m.ffn_hidden) +
               ") is not divisible by layout.tp (" + std::to_string(l.tp) + ")");
  }
  if (l.vpp > 1 && l.pp == 1) return bad("layout.vpp > 1 needs layout.pp > 1");
  KILN_RETURN_IF_ERROR(check_stage_layers(c, where));
  if (l.global_batch % (l.dp * l.micro_batch) != 0) {
    return bad("layout.global_batch (" + std::to_string(l.global_batch) +
               ") is not divisible by dp*micro_batch (" + std::to_string(l.dp * l.micro_batch) +
               ")");
  }
  if (l.zero < 0 || l.zero > 3) return bad("layout.zero must be 0..3");
  if (l.zero3_shard_group > 0) {
    if (l.zero < 3) return bad("layout.zero3_shard_group needs layout.zero = 3");
    if (l.dp % l.zero3_shard_group != 0) {
      return bad("layout.zero3_shard_group (" + std::to_string(l.zero3_shard_group) +
                 ") does not divide layout.dp (" + std::to_string(l.dp) + ")");
    }
  }
  if (l.mma == MmaIssue::kAsync && is_ampere(c.cluster.gpu)) {
    return bad("layout.mma = async needs Hopper or later (" + c.cluster.gpu.id +
               " has only synchronous mma.sync)");
  }
  return Status::ok();
}

}  // namespace kiln::plan
