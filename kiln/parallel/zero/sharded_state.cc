// ShardedDataParallel's memory accounting (what it holds against the ZeRO
// paper's formula) and its checkpoints (each rank's shares, any world size).
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/parallel/zero/sharded_unit.h"

namespace kiln::parallel::zero {

// ---- memory ------------------------------------------------------------------

StateBytes ShardedDataParallel::state_bytes() const {
  StateBytes b;
  // Gathered parameters (stage 3) and staging (stages 2, 3) are pooled
  // blocks, in use or idle.
  b.in_flight = pool_.held_bytes() + optimizer_.scratch_bytes();
  for (const auto& up : units_) {
    const Unit& u = *up;
    const bool sharded = options_.stage == 3 && !u.modules.empty();
    if (u.allocated && !sharded) b.params += u.flat_bytes;
    b.in_flight += u.grad_bytes_alive;
    if (u.staging.defined() && options_.stage == 1) b.grads += u.staging.nbytes();
    if (u.partial.defined()) b.in_flight += u.partial.nbytes();
    if (!u.master_is_view) b.shards += u.master.nbytes();
    if (sharded && u.send.data_ptr() != u.master.data_ptr()) b.shards += u.send.nbytes();
    if (options_.stage != 1) b.shards += u.grad_share.nbytes();
  }
  b.optimizer = optimizer_.state_bytes();
  return b;
}

std::size_t state_bytes_formula(int stage, Precision precision, const OptimizerOptions& optimizer,
                                std::int64_t parameters, int world) {
  const double psi = static_cast<double>(parameters), n = world;
  const bool bf16 = precision == Precision::kBf16 && stage > 0;
  const double p = bf16 ? 2 : 4, g = p;
  double k = 0;
  if (optimizer.kind == OptimizerKind::kAdamW) k = 8;
  else if (optimizer.momentum != 0) k = 4;
  if (bf16) k += 4;  // the fp32 master
  double bytes = 0;
  switch (stage) {
    case 0: bytes = (p + g + k) * psi; break;
    case 1: bytes = p * psi + g * psi + k * psi / n; break;
    case 2: bytes = p * psi + (g + k) * psi / n; break;
    default: bytes = (p + g + k) * psi / n; break;
  }
  return static_cast<std::size_t>(bytes);
}

std::size_t ShardedDataParallel::formula_state_bytes() const {
  return state_bytes_formula(options_.stage, options_.precision, options_.optimizer, parameter_count_,
                             comm_.size());
}

// ---- checkpoints ---------------------------------------------------------------

std::string ShardedDataParallel::layout_json() const {
  nlohmann::json units = nlohmann::json::array();
  for (const auto& up : units_) {
    const Unit& u = *up;
    nlohmann::json params = nlohmann::json::array();
    for (std::size_t i = 0; i < u.params.size(); ++i) {
      params.push_back({{"name", u.names[i]}, {"shape", u.params[i].sizes().vec()}});
    }
    units.push_back({{"name", u.name}, {"total", u.layout->total()}, {"params", params}});
  }
  return nlohmann::json{{"version", 1}, {"stage", options_.stage},
                        {"precision", compute_dtype_ == torch::kFloat32 ? "fp32" : "bf16"},
                        {"units", units}}.dump();
}

Status ShardedDataParallel::capture(ckpt::StateView* view, std::vector<torch::Tensor>* keep_alive,
                                    std::string* layout_blob, std::string* optim_blob) {
  KILN_RETURN_IF_ERROR(failure_);
  for (auto& up : units_) {
    Unit& u = *up;
    const std::vector<std::int64_t> shape{u.layout->total()};
    torch::Tensor m = u.master.contiguous();
    keep_alive->push_back(m);
    KILN_RETURN_IF_ERROR(view->add_tensor("zero/" + u.name + "/param", comm::DataType::kFloat32, shape,
                                          u.mine.offset, u.mine.count, m.data_ptr()));
    for (auto& [name, t] : optimizer_.state(u.opt_index)) {
      keep_alive->push_back(*t);
      KILN_RETURN_IF_ERROR(view->add_tensor(fmt::format("zero/{}/{}", u.name, name), comm::DataType::kFloat32,
                                            shape, u.mine.offset, u.mine.count, t->data_ptr()));
    }
  }
  *layout_blob = layout_json();
  const bool adam = options_.optimizer.kind == OptimizerKind::kAdamW;
  *optim_blob = nlohmann::json{{"kind", adam ? "adamw" : "sgd"}, {"step", optimizer_.steps()}}.dump();
  KILN_RETURN_IF_ERROR(view->add_blob("zero/layout", layout_blob->data(), layout_blob->size()));
  return view->add_blob("zero/optim", optim_blob->data(), optim_blob->size());
}

Status ShardedDataParallel::restore_impl(const ckpt::LoadedState& loaded) {
  torch::NoGradGuard no_grad;
  const std::string& where = loaded.dir;
  const ckpt::LoadedEntry* layout = loaded.find("zero/layout");
  if (layout == nullptr) {
    return data_loss(fmt::format("checkpoint {}: no sharded layout ('zero/layout'): it was saved "
                                 "by another strategy", where));
  }
  auto j = nlohmann::json::parse(layout->data.begin(), layout->data.end(), nullptr, false);
  if (j.is_discarded() || !j.contains("units") || j["units"].size() != units_.size()) {
    return data_loss(fmt::format("checkpoint {}: its sharded layout has {} units, this model {}",
                                 where, j.is_discarded() ? 0 : j["units"].size(), units_.size()));
  }
  // Copies this rank's share of entry `name` (a flat fp32 tensor of the
  // unit's total) into `dst`.
  auto take = [&](const Unit& u, const std::string& name, torch::Tensor& dst) -> Status {
    const ckpt::LoadedEntry* e = loaded.find(name);
    if (e == nullptr || !e->is_tensor || e->spec.shape != std::vector<std::int64_t>{u.layout->total()}) {
      return data_loss(fmt::format("checkpoint {}: no flat tensor '{}' of {} elements", where, name,
                                   u.layout->total()));
    }
    const std::int64_t lo = e->spec.row_offset, hi = lo + e->spec.rows;
    if (u.mine.offset < lo || u.mine.offset + u.mine.count > hi) {
      return data_loss(fmt::format("checkpoint {}: '{}' was loaded as rows [{}, {}), this rank needs "
                                   "[{}, {})", where, name, lo, hi, u.mine.offset, u.mine.offset + u.mine.count));
    }
    std::memcpy(dst.data_ptr(), e->data.data() + (u.mine.offset - lo) * sizeof(float),
                static_cast<std::size_t>(u.mine.count) * sizeof(float));
    return Status::ok();
  };
  for (std::size_t i = 0; i < units_.size(); ++i) {
    Unit& u = *units_[i];
    const auto& ju = j["units"][i];
    if (ju.value("name", "") != u.name || ju.value("total", std::int64_t{-1}) != u.layout->total()) {
      return data_loss(fmt::format("checkpoint {}: unit {} is '{}' of {} parameters there, '{}' of {} "
                                   "here (another model or wrap policy)", where, i, ju.value("name", ""),
                                   ju.value("total", std::int64_t{-1}), u.name, u.layout->total()));
    }
    torch::Tensor master = u.master_is_view ? torch::empty({u.mine.count}, torch::kFloat32) : u.master;
    KILN_RETURN_IF_ERROR(take(u, "zero/" + u.name + "/param", master));
    if (u.master_is_view) u.master.copy_(master);
    for (auto& [name, t] : optimizer_.state(u.opt_index)) {
      KILN_RETURN_IF_ERROR(take(u, fmt::format("zero/{}/{}", u.name, name), *t));
      if (std::string(name) == "momentum") optimizer_.set_momentum_ready(u.opt_index);
    }
  }
  if (const ckpt::LoadedEntry* o = loaded.find("zero/optim")) {
    auto jo = nlohmann::json::parse(o->data.begin(), o->data.end(), nullptr, false);
    if (jo.is_discarded() || !jo.contains("step")) {
      return data_loss(fmt::format("checkpoint {}: 'zero/optim' is not JSON with a step", where));
    }
    optimizer_.set_steps(jo["step"].get<std::int64_t>());
  } else {
    return data_loss(fmt::format("checkpoint {}: no 'zero/optim' record", where));
  }
  // Whole parameters from the restored shares, as after a step.
  for (auto& up : units_) {
    Unit& u = *up;
    if (u.gather_work) KILN_RETURN_IF_ERROR(wait_gathered(u));
    const bool sharded = options_.stage == 3 && !u.modules.empty();
    if (sharded) {
      if (u.send.data_ptr() != u.master.data_ptr()) u.send.copy_(u.master);
    } else if (!u.master_is_view) {
      u.flat.narrow(0, u.mine.offset, u.mine.count).copy_(u.master);
    }
    u.state = Unit::Params::kFreed;
    if (!sharded) KILN_RETURN_IF_ERROR(wait_gathered(u));
  }
  account();
  return Status::ok();
}

}  // namespace kiln::parallel::zero
