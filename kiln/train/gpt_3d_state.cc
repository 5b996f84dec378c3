#include "kiln/train/gpt_3d_state.h"

#include <cstring>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/base/xxh3.h"
#include "kiln/train/task.h"
#include "kiln/train/train_data.h"
#include "kiln/train/train_state.h"

namespace kiln::train {
namespace {

// Every rank's vector, back to back in rank order, with each rank's length.
template <class T>
Result<std::vector<T>> allgather_vectors(const std::vector<T>& mine, comm::DataType dtype, comm::Communicator& world,
                                         std::vector<std::size_t>* counts) {
  std::int64_t n = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> all(static_cast<std::size_t>(world.size()));
  KILN_RETURN_IF_ERROR(world.allgather(&n, all.data(), 1, comm::DataType::kInt64)->wait(kCollectiveTimeout));
  counts->assign(all.begin(), all.end());
  std::size_t total = 0;
  for (std::size_t c : *counts) total += c;
  std::vector<T> out(total);
  KILN_RETURN_IF_ERROR(world.allgatherv(mine.data(), out.data(), *counts, dtype)->wait(kCollectiveTimeout));
  return out;
}

}  // namespace

Result<std::uint64_t> layout_digest(Gpt3d& model, const parallel::MeshLayout& mesh, comm::Communicator& world) {
  std::vector<std::uint64_t> mine;
  if (mesh.coord(world.rank()).dp == 0) {
    ParameterDigest d;
    for (const Gpt3dParam& p : model.params()) d.add(p.value);
    mine.push_back(d.value());
  }
  std::vector<std::size_t> counts;
  KILN_ASSIGN_OR_RETURN(auto all, allgather_vectors(mine, comm::DataType::kInt64, world, &counts));
  return xxh3(all.data(), all.size() * sizeof(std::uint64_t));
}

Result<std::vector<float>> gather_whole_parameters(Gpt3d& model, const ModelConfig& config,
                                                   const parallel::MeshLayout& mesh, comm::Communicator& world) {
  std::vector<float> mine;
  if (mesh.coord(world.rank()).dp == 0) {
    for (const Gpt3dParam& p : model.params()) {
      torch::Tensor t = p.value.detach().to(torch::kFloat32).contiguous().view(-1);
      mine.insert(mine.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    }
  }
  std::vector<std::size_t> counts;
  KILN_ASSIGN_OR_RETURN(auto all, allgather_vectors(mine, comm::DataType::kFloat32, world, &counts));
  std::vector<std::size_t> cursor(counts.size(), 0);  // into each rank's part
  std::size_t base = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    cursor[r] = base;
    base += counts[r];
  }
  // The whole model's names and shapes, in its order.
  torch::NoGradGuard no_grad;
  std::unique_ptr<Task> whole = make_task(config);
  const int T = mesh.shape().tp, p = mesh.shape().pp;
  std::vector<float> out;
  for (const auto& item : whole->module()->named_parameters()) {
    const std::string& name = item.key();
    const ShardSpec spec = tensor_shard_spec(name);
    const int stage = model.global_stage_of(name) % p;
    const std::int64_t whole_numel = item.value().numel();
    std::vector<torch::Tensor> shards;
    for (int t = 0; t < (spec.replicated() ? 1 : T); ++t) {
      const auto r = static_cast<std::size_t>(mesh.rank_of({.tp = t, .pp = stage, .dp = 0}));
      std::vector<std::int64_t> shape = item.value().sizes().vec();
      if (!spec.replicated()) shape[static_cast<std::size_t>(spec.dim)] /= T;
      const std::int64_t n = spec.replicated() ? whole_numel : whole_numel / T;
      shards.push_back(torch::from_blob(all.data() + cursor[r], shape, torch::kFloat32));
      cursor[r] += static_cast<std::size_t>(n);
    }
    if (spec.replicated()) {
      // Replicated on every tensor rank: each holds its own copy.
      for (int t = 1; t < T; ++t) {
        cursor[static_cast<std::size_t>(mesh.rank_of({.tp = t, .pp = stage, .dp = 0}))] +=
            static_cast<std::size_t>(whole_numel);
      }
    }
    torch::Tensor joined = join_shards(shards, spec).contiguous();
    out.insert(out.end(), joined.data_ptr<float>(), joined.data_ptr<float>() + joined.numel());
  }
  return out;
}

// ---- checkpoints -------------------------------------------------------------

namespace {

// Note [Canonical rows]: [..., N, ...] split along `dim` in `blocks` ->
// [N / blocks, blocks, ...rest]; replicated tensors as they are.
torch::Tensor canonical(const torch::Tensor& t, ShardSpec spec) {
  if (spec.replicated()) return t.contiguous();
  torch::Tensor front = t.movedim(spec.dim, 0);
  std::vector<std::int64_t> shape = front.sizes().vec();
  shape[0] /= spec.blocks;
  shape.insert(shape.begin(), spec.blocks);
  return front.reshape(shape).transpose(0, 1).contiguous();
}

torch::Tensor from_canonical(const torch::Tensor& c, ShardSpec spec, const std::vector<std::int64_t>& whole_shape) {
  if (spec.replicated()) return c.reshape(whole_shape);
  torch::Tensor blocks_first = c.transpose(0, 1).contiguous();  // [b, N / b, rest]
  std::vector<std::int64_t> moved = whole_shape;
  moved.erase(moved.begin() + spec.dim);
  moved.insert(moved.begin(), whole_shape[static_cast<std::size_t>(spec.dim)]);
  return blocks_first.reshape(moved).movedim(0, spec.dim).contiguous();
}

struct Moments {
  torch::Tensor first, second;  // AdamW exp_avg, exp_avg_sq; SGD momentum in first
  std::int64_t step = 0;
};

Moments moments_of(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  Moments m;
  auto it = optimizer.state().find(c10::guts::to_string(p.unsafeGetTensorImpl()));
  if (it == optimizer.state().end()) return m;
  if (auto* a = dynamic_cast<torch::optim::AdamWParamState*>(it->second.get())) {
    m.first = a->exp_avg();
    m.second = a->exp_avg_sq();
    m.step = a->step();
  } else if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(it->second.get())) {
    m.first = s->momentum_buffer();
  }
  return m;
}

bool is_adamw(torch::optim::Optimizer& optimizer) {
  return dynamic_cast<torch::optim::AdamW*>(&optimizer) != nullptr;
}

// The whole tensor `prefix/<name>` of a whole-loaded checkpoint.
Result<torch::Tensor> whole_tensor(const ckpt::LoadedState& loaded, const std::string& entry, ShardSpec spec,
                                   const std::vector<std::int64_t>& whole_shape) {
  const ckpt::LoadedEntry* e = loaded.find(entry);
  std::int64_t numel = 1;
  for (std::int64_t d : whole_shape) numel *= d;
  if (e == nullptr || !e->is_tensor || e->spec.row_offset != 0 ||
      e->data.size() != static_cast<std::size_t>(numel) * sizeof(float)) {
    return data_loss(fmt::format("checkpoint {}: no whole float32 tensor '{}' of {} elements (saved by "
                                 "another model?)", loaded.dir, entry, numel));
  }
  torch::Tensor c = torch::from_blob(const_cast<std::byte*>(e->data.data()), e->spec.shape, torch::kFloat32);
  return from_canonical(c, spec, whole_shape).clone();
}

void set_moments(torch::optim::Optimizer& optimizer, const torch::Tensor& p, bool adam, std::int64_t step,
                 torch::Tensor first, torch::Tensor second) {
  const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
  if (adam) {
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(step);
    st->exp_avg(std::move(first));
    st->exp_avg_sq(std::move(second));
    optimizer.state()[key] = std::move(st);
  } else if (first.defined()) {
    auto st = std::make_unique<torch::optim::SGDParamState>();
    st->momentum_buffer(std::move(first));
    optimizer.state()[key] = std::move(st);
  }
}

Result<OptimizerRecord> saved_optimizer(const ckpt::LoadedState& loaded) {
  const ckpt::LoadedEntry* e = loaded.find("mesh/optim");
  auto j = e == nullptr ? nlohmann::json() : nlohmann::json::parse(e->data.begin(), e->data.end(), nullptr, false);
  if (j.is_discarded() || !j.contains("kind") || !j.contains("step")) {
    return data_loss(fmt::format("checkpoint {}: no valid optimizer record 'mesh/optim'", loaded.dir));
  }
  return OptimizerRecord{j["kind"] == "adamw", j.value("momentum", false), j["step"].get<std::int64_t>()};
}

// One parameter (and its moments) from the checkpoint, cut to this rank's
// shard of shape `shard_shape`.
Result<ShardState> load_shard(const ckpt::LoadedState& loaded, const OptimizerRecord& saved, const std::string& name,
                              ShardSpec spec, int tp_rank, int tp_ranks, const std::vector<std::int64_t>& whole_shape,
                              c10::IntArrayRef shard_shape) {
  auto shard = [&](const std::string& prefix) -> Result<torch::Tensor> {
    KILN_ASSIGN_OR_RETURN(torch::Tensor whole, whole_tensor(loaded, prefix + name, spec, whole_shape));
    return take_shard(whole, spec, tp_rank, tp_ranks);
  };
  ShardState s;
  KILN_ASSIGN_OR_RETURN(s.value, shard("mesh/param/"));
  if (s.value.sizes() != shard_shape) {
    return data_loss(fmt::format("checkpoint {}: parameter '{}' does not fit this model", loaded.dir, name));
  }
  if (saved.adam) {
    KILN_ASSIGN_OR_RETURN(s.first, shard("mesh/exp_avg/"));
    KILN_ASSIGN_OR_RETURN(s.second, shard("mesh/exp_avg_sq/"));
  } else if (saved.momentum) {
    KILN_ASSIGN_OR_RETURN(s.first, shard("mesh/momentum/"));
  }
  return s;
}

// A loaded shard into parameter `p` and the LibTorch optimizer over it.
Status set_shard(const ckpt::LoadedState& loaded, const OptimizerRecord& saved, const ShardState& s,
                 torch::optim::Optimizer& optimizer, torch::Tensor p) {
  if (saved.adam != is_adamw(optimizer)) {
    return failed_precondition(fmt::format("checkpoint {}: saved with optimizer {}, this run uses another",
                                           loaded.dir, saved.adam ? "adamw" : "sgd"));
  }
  torch::NoGradGuard no_grad;
  p.copy_(s.value);
  set_moments(optimizer, p, saved.adam, saved.step, s.first, s.second);
  return Status::ok();
}

}  // namespace

Status capture_3d_states(Gpt3d& model, const std::vector<ShardState>& states, const OptimizerRecord& record,
                         const parallel::MeshLayout& mesh, int rank, const Progress& progress, Snapshot* out) {
  const parallel::MeshCoord at = mesh.coord(rank);
  const int T = mesh.shape().tp, D = mesh.shape().dp;
  if (states.size() != model.params().size()) {
    return internal_error(fmt::format("capture_3d_states: {} states for {} parameters", states.size(),
                                      model.params().size()));
  }
  auto add = [&](const std::string& entry, const torch::Tensor& shard, const Gpt3dParam& p) -> Status {
    torch::Tensor c = canonical(shard.detach().to(torch::kFloat32), p.spec);
    out->keep_alive.push_back(c);
    std::vector<std::int64_t> shape = c.sizes().vec();
    // Rows of the whole canonical tensor this tensor rank holds, then this
    // replica's even share of them (or of the whole, when replicated).
    std::int64_t first_row = 0;
    ckpt::RowRange mine;
    if (p.spec.replicated()) {
      mine = ckpt::even_rows(shape[0], at.tp * D + at.dp, T * D);
    } else {
      first_row = at.tp * shape[0];
      shape[0] *= T;
      mine = ckpt::even_rows(c.size(0), at.dp, D);
    }
    if (mine.count == 0) return Status::ok();
    const std::size_t row_bytes = static_cast<std::size_t>(c.numel() / c.size(0)) * sizeof(float);
    return out->view.add_tensor(entry, comm::DataType::kFloat32, shape, first_row + mine.offset, mine.count,
                                static_cast<const std::byte*>(c.data_ptr()) + mine.offset * row_bytes);
  };
  for (std::size_t i = 0; i < states.size(); ++i) {
    const Gpt3dParam& p = model.params()[i];
    const ShardState& s = states[i];
    KILN_RETURN_IF_ERROR(add("mesh/param/" + p.name, s.value, p));
    if (record.adam && s.first.defined()) {
      KILN_RETURN_IF_ERROR(add("mesh/exp_avg/" + p.name, s.first, p));
      KILN_RETURN_IF_ERROR(add("mesh/exp_avg_sq/" + p.name, s.second, p));
    } else if (!record.adam && record.momentum && s.first.defined()) {
      KILN_RETURN_IF_ERROR(add("mesh/momentum/" + p.name, s.first, p));
    }
  }
  out->optim_blob = nlohmann::json{{"kind", record.adam ? "adamw" : "sgd"}, {"step", record.step},
                                   {"momentum", record.momentum}}.dump();
  KILN_RETURN_IF_ERROR(out->view.add_blob("mesh/optim", out->optim_blob.data(), out->optim_blob.size()));
  out->layout_blob = nlohmann::json{{"tp", T}, {"pp", mesh.shape().pp}, {"dp", D}}.dump();
  KILN_RETURN_IF_ERROR(out->view.add_blob("mesh/layout", out->layout_blob.data(), out->layout_blob.size()));
  return add_rng_and_progress(progress, rank, mesh.world(), out);
}

Status capture_3d_state(Gpt3d& model, torch::optim::Optimizer& optimizer, const parallel::MeshLayout& mesh,
                        int rank, const Progress& progress, Snapshot* out) {
  OptimizerRecord record{.adam = is_adamw(optimizer)};
  std::vector<ShardState> states;
  for (const Gpt3dParam& p : model.params()) {
    Moments m = moments_of(optimizer, p.value);
    record.step = std::max(record.step, m.step);
    if (!record.adam && m.first.defined()) record.momentum = true;
    states.push_back({p.value, m.first, m.second});
  }
  return capture_3d_states(model, states, record, mesh, rank, progress, out);
}

Result<std::vector<ShardState>> load_3d_states(const ckpt::LoadedState& loaded, Gpt3d& model, int rank,
                                               OptimizerRecord* record) {
  if (loaded.find("mesh/layout") == nullptr) {
    return failed_precondition(fmt::format("checkpoint {}: not saved by a tensor/pipeline-parallel run "
                                           "(no mesh/layout); a 3D run resumes only from one", loaded.dir));
  }
  KILN_ASSIGN_OR_RETURN(*record, saved_optimizer(loaded));
  const int T = model.tensor_ranks();
  const int tp_rank = T == 1 ? 0 : rank % T;  // tensor innermost (mesh_layout.h)
  std::vector<ShardState> states;
  for (const Gpt3dParam& p : model.params()) {
    KILN_ASSIGN_OR_RETURN(ShardState s,
                          load_shard(loaded, *record, p.name, p.spec, tp_rank, T, p.whole_shape, p.value.sizes()));
    states.push_back(std::move(s));
  }
  return states;
}

Result<Progress> restore_3d_state(const ckpt::LoadedState& loaded, Gpt3d& model, torch::optim::Optimizer& optimizer,
                                  int rank) {
  OptimizerRecord saved;
  KILN_ASSIGN_OR_RETURN(std::vector<ShardState> states, load_3d_states(loaded, model, rank, &saved));
  for (std::size_t i = 0; i < states.size(); ++i) {
    KILN_RETURN_IF_ERROR(set_shard(loaded, saved, states[i], optimizer, model.params()[i].value));
  }
  KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));
  return restore_progress(loaded);
}

Status restore_whole_from_3d(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                             torch::optim::Optimizer& optimizer) {
  KILN_ASSIGN_OR_RETURN(OptimizerRecord saved, saved_optimizer(loaded));
  for (auto& p : module.named_parameters()) {
    KILN_ASSIGN_OR_RETURN(ShardState s, load_shard(loaded, saved, p.key(), tensor_shard_spec(p.key()), 0, 1,
                                                   p.value().sizes().vec(), p.value().sizes()));
    KILN_RETURN_IF_ERROR(set_shard(loaded, saved, s, optimizer, p.value()));
  }
  return Status::ok();
}

namespace {

Result<ckpt::LoadedState> sharded_from_3d(const ckpt::LoadedState& loaded, const nlohmann::json& layout) {
  KILN_ASSIGN_OR_RETURN(OptimizerRecord saved, saved_optimizer(loaded));
  ckpt::LoadedState out;
  out.step = loaded.step;
  out.dir = loaded.dir;
  out.saved_world_size = loaded.saved_world_size;
  auto flat_entry = [](std::string name, const std::vector<torch::Tensor>& parts) {
    torch::Tensor flat = torch::cat(parts);
    const std::int64_t total = flat.numel();
    ckpt::LoadedEntry e{std::move(name), true, {comm::DataType::kFloat32, {total}, 0, total}, {}};
    e.data.resize(static_cast<std::size_t>(total) * sizeof(float));
    std::memcpy(e.data.data(), flat.data_ptr(), e.data.size());
    return e;
  };
  for (const auto& ju : layout.at("units")) {
    const std::string unit = ju.at("name").get<std::string>();
    std::vector<torch::Tensor> values, firsts, seconds;
    for (const auto& jp : ju.at("params")) {
      const std::string name = jp.at("name").get<std::string>();
      const auto shape = jp.at("shape").get<std::vector<std::int64_t>>();
      KILN_ASSIGN_OR_RETURN(ShardState s,
                            load_shard(loaded, saved, name, tensor_shard_spec(name), 0, 1, shape, shape));
      values.push_back(s.value.reshape(-1));
      if (s.first.defined()) firsts.push_back(s.first.reshape(-1));
      if (s.second.defined()) seconds.push_back(s.second.reshape(-1));
    }
    if (values.empty()) return invalid_argument(fmt::format("the zero/layout's unit '{}' has no parameters", unit));
    const std::string prefix = "zero/" + unit + "/";
    out.entries.push_back(flat_entry(prefix + "param", values));
    if (out.entries.back().spec.shape[0] != ju.value("total", std::int64_t{-1})) {
      return data_loss(fmt::format("checkpoint {}: unit '{}' has {} elements here, its layout says {}", loaded.dir,
                                   unit, out.entries.back().spec.shape[0], ju.value("total", std::int64_t{-1})));
    }
    if (saved.adam) {
      out.entries.push_back(flat_entry(prefix + "exp_avg", firsts));
      out.entries.push_back(flat_entry(prefix + "exp_avg_sq", seconds));
    } else if (saved.momentum) {
      out.entries.push_back(flat_entry(prefix + "momentum", firsts));
    }
  }
  auto blob = [&](std::string name, const std::string& text) {
    ckpt::LoadedEntry e{std::move(name), false, {}, {}};
    e.data.resize(text.size());
    std::memcpy(e.data.data(), text.data(), text.size());
    out.entries.push_back(std::move(e));
  };
  blob("zero/layout", layout.dump());
  blob("zero/optim", nlohmann::json{{"kind", saved.adam ? "adamw" : "sgd"}, {"step", saved.step}}.dump());
  for (const ckpt::LoadedEntry& e : loaded.entries) {
    if (!e.name.starts_with("mesh/") && !e.name.starts_with("zero/")) out.entries.push_back(e);
  }
  return out;
}

}  // namespace

Result<ckpt::LoadedState> sharded_state_from_3d(const ckpt::LoadedState& loaded, const std::string& zero_layout) {
  auto layout = nlohmann::json::parse(zero_layout, nullptr, false);
  if (layout.is_discarded()) return invalid_argument("sharded_state_from_3d: the zero/layout given is not JSON");
  try {
    return sharded_from_3d(loaded, layout);
  } catch (const nlohmann::json::exception& e) {
    return invalid_argument(fmt::format("sharded_state_from_3d: the zero/layout given is not a layout: {}", e.what()));
  }
}

}  // namespace kiln::train
