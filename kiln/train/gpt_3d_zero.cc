#include "kiln/train/gpt_3d_zero.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "kiln/ckpt/state.h"

namespace kiln::train {

namespace zero = parallel::zero;

struct Gpt3dZero::Chunk {
  int index = 0;
  std::unique_ptr<zero::ShardedDataParallel> zero;
  struct Param {
    std::size_t index = 0;  // in model.params()
    std::int64_t offset = 0, numel = 0;
  };
  struct Unit {
    std::string name;
    std::int64_t total = 0;
    std::vector<Param> params;
  };
  std::vector<Unit> units;
  std::string layout_blob;  // the wrapper's own, for restore()
  double norm = 0;          // of the last clip_grad_norm: this chunk's shares over the replicas
};

namespace {

// What capture() names "zero/<unit>/<what>": the unit and the state.
std::pair<std::string, std::string> split_entry(const std::string& name) {
  const std::size_t slash = name.rfind('/');
  return {name.substr(5, slash - 5), name.substr(slash + 1)};
}

}  // namespace

Result<std::unique_ptr<Gpt3dZero>> Gpt3dZero::create(Gpt3d& model, comm::Communicator& data,
                                                     int tp_rank, zero::ZeroOptions options,
                                                     bool track_norm) {
  std::unique_ptr<Gpt3dZero> z(new Gpt3dZero(model, data));
  options.stage = 1;
  for (int c = 0; c < model.chunk_count(); ++c) {
    auto chunk = std::make_unique<Chunk>();
    chunk->index = c;
    KILN_ASSIGN_OR_RETURN(chunk->zero,
                          zero::ShardedDataParallel::create(model.chunk_module(c), data, options));
    KILN_RETURN_IF_ERROR(z->describe(*chunk));
    z->chunks_.push_back(std::move(chunk));
  }
  // Before the hooks below, which must see the sums.
  model.reduce_sequence_partial_grads_in_backward();
  if (track_norm && tp_rank == 0 && model.tensor_ranks() > 1) {
    std::int64_t n = 0;
    for (const Gpt3dParam& p : model.params()) n += p.spec.replicated() ? p.value.numel() : 0;
    z->replicated_grads_ = torch::zeros({n}, torch::kFloat32);
    std::int64_t offset = 0;
    for (const Gpt3dParam& p : model.params()) {
      if (!p.spec.replicated()) continue;
      torch::Tensor sum =
          z->replicated_grads_.narrow(0, offset, p.value.numel()).view(p.value.sizes());
      offset += p.value.numel();
      // Called with each backward's gradient before autograd stores it
      // (and the wrapper reduces it away).
      const unsigned h = p.value.register_hook([sum](const torch::Tensor& g) {
        torch::NoGradGuard no_grad;
        sum.add_(g.detach().to(torch::kFloat32));
      });
      z->hooks_.emplace_back(p.value, h);
    }
  }
  return z;
}

Gpt3dZero::Gpt3dZero(Gpt3d& model, comm::Communicator& data) : model_(model), data_(data) {}

Gpt3dZero::~Gpt3dZero() {
  for (auto& [p, h] : hooks_) p.remove_hook(h);
}

Status Gpt3dZero::describe(Chunk& c) {
  std::map<const c10::TensorImpl*, std::size_t> index_of;
  for (std::size_t i = 0; i < model_.params().size(); ++i)
    index_of[model_.params()[i].value.unsafeGetTensorImpl()] = i;
  std::map<std::string, std::size_t> by_name;
  for (const auto& p : model_.chunk_module(c.index)->named_parameters()) {
    auto it = index_of.find(p.value().unsafeGetTensorImpl());
    if (it != index_of.end()) by_name[p.key()] = it->second;
  }
  ckpt::StateView view;
  std::vector<torch::Tensor> keep_alive;
  std::string optim;
  KILN_RETURN_IF_ERROR(c.zero->capture(&view, &keep_alive, &c.layout_blob, &optim));
  auto j = nlohmann::json::parse(c.layout_blob, nullptr, false);
  if (j.is_discarded() || !j.contains("units")) {
    return internal_error(
        fmt::format("ZeRO-1 chunk {}: the wrapper's layout is not JSON with units", c.index));
  }
  for (const auto& ju : j["units"]) {
    Chunk::Unit u{ju.value("name", ""), ju.value("total", std::int64_t{0}), {}};
    std::int64_t offset = 0;
    for (const auto& jp : ju["params"]) {
      const std::string name = jp.value("name", "");
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return internal_error(
            fmt::format("ZeRO-1 chunk {}: unit '{}' holds '{}', not a parameter of the model",
                        c.index, u.name, name));
      }
      const std::int64_t numel = model_.params()[it->second].value.numel();
      u.params.push_back({it->second, offset, numel});
      offset += numel;
    }
    if (offset != u.total) {
      return internal_error(
          fmt::format("ZeRO-1 chunk {}: unit '{}' has {} elements, its parameters {}", c.index,
                      u.name, u.total, offset));
    }
    c.units.push_back(std::move(u));
  }
  return Status::ok();
}

Status Gpt3dZero::backward(int chunk, const torch::Tensor& scalar) {
  return chunks_.at(static_cast<std::size_t>(chunk))->zero->backward(scalar);
}

Result<double> Gpt3dZero::clip_grad_norm(double max_norm, comm::Communicator& world) {
  const auto timeout = chunks_.front()->zero->options().timeout;
  // Note [The global norm under ZeRO-1 and tensor parallelism].
  double sq = 0;
  for (auto& c : chunks_) {
    KILN_ASSIGN_OR_RETURN(c->norm,
                          c->zero->clip_grad_norm(std::numeric_limits<double>::infinity()));
    sq += c->norm * c->norm;
  }
  if (replicated_grads_.defined()) {
    KILN_RETURN_IF_ERROR(
        data_
            .allreduce(replicated_grads_.data_ptr(),
                       static_cast<std::size_t>(replicated_grads_.numel()),
                       comm::DataType::kFloat32, comm::ReduceOp::kAvg)
            ->wait(timeout)
            .with_context("reducing the replicated parameters' gradients for the global norm"));
    const double replicated = replicated_grads_.to(torch::kFloat64).pow(2).sum().item<double>();
    sq -= (model_.tensor_ranks() - 1) * replicated;
    replicated_grads_.zero_();
  }
  // The chunks' norms are the same on every replica: the first one counts.
  double total = data_.rank() == 0 ? sq : 0;
  KILN_RETURN_IF_ERROR(world.allreduce(&total, 1, comm::DataType::kFloat64, comm::ReduceOp::kSum)
                           ->wait(timeout)
                           .with_context("the global gradient norm"));
  const double norm = std::sqrt(std::max(0.0, total));
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    // The wrapper scales by bound / (its norm + 1e-6): this bound makes that
    // the global coefficient.
    for (auto& c : chunks_)
      KILN_RETURN_IF_ERROR(c->zero->clip_grad_norm(coef * (c->norm + 1e-6)).status());
  }
  return norm;
}

Status Gpt3dZero::step(double lr) {
  for (auto& c : chunks_) KILN_RETURN_IF_ERROR(c->zero->step(lr));
  // The chunks do not run through parallel::run_unit(), so their forward
  // would not wait for the new parameters' allgather: wait here.
  for (auto& c : chunks_)
    KILN_RETURN_IF_ERROR(c->zero->visit_parameters([](const torch::Tensor&) {}));
  if (replicated_grads_.defined()) replicated_grads_.zero_();
  return Status::ok();
}

double Gpt3dZero::exposed_comm_s() const {
  double s = 0;
  for (const auto& c : chunks_) s += c->zero->last_sync().exposed_comm_s;
  return s;
}

Result<std::vector<ShardState>> Gpt3dZero::gather_states(OptimizerRecord* record) {
  const zero::OptimizerOptions& o = chunks_.front()->zero->options().optimizer;
  *record = {.adam = o.kind == zero::OptimizerKind::kAdamW,
             .momentum = o.kind == zero::OptimizerKind::kSgd && o.momentum != 0};
  std::vector<ShardState> states(model_.params().size());
  const int D = data_.size();
  for (auto& c : chunks_) {
    ckpt::StateView view;
    std::vector<torch::Tensor> keep_alive;
    std::string layout, optim;
    KILN_RETURN_IF_ERROR(c->zero->capture(&view, &keep_alive, &layout, &optim));
    auto jo = nlohmann::json::parse(optim, nullptr, false);
    if (jo.is_discarded() || !jo.contains("step"))
      return internal_error("ZeRO-1: the optimizer record has no step");
    record->step = jo["step"].get<std::int64_t>();
    for (const ckpt::EntryView& e : view.entries()) {
      if (!e.is_tensor) continue;
      const auto [unit_name, what] = split_entry(e.name);
      const Chunk::Unit* unit = nullptr;
      for (const Chunk::Unit& u : c->units) unit = u.name == unit_name ? &u : unit;
      if (unit == nullptr || e.spec.shape.at(0) != unit->total) {
        return internal_error(
            fmt::format("ZeRO-1 chunk {}: entry '{}' is no unit's flat", c->index, e.name));
      }
      // Every replica's share, in the loader's even split (flat_layout.h).
      std::vector<std::size_t> counts;
      for (int r = 0; r < D; ++r)
        counts.push_back(static_cast<std::size_t>(ckpt::even_rows(unit->total, r, D).count));
      torch::Tensor whole = torch::empty({unit->total}, torch::kFloat32);
      KILN_RETURN_IF_ERROR(
          data_.allgatherv(e.data, whole.data_ptr(), counts, comm::DataType::kFloat32)
              ->wait(c->zero->options().timeout)
              .with_context(fmt::format("gathering '{}' for a checkpoint", e.name)));
      for (const Chunk::Param& p : unit->params) {
        torch::Tensor t =
            whole.narrow(0, p.offset, p.numel).view(model_.params()[p.index].value.sizes());
        ShardState& s = states[p.index];
        (what == "param" ? s.value : what == "exp_avg_sq" ? s.second : s.first) = t;
      }
    }
  }
  for (std::size_t i = 0; i < states.size(); ++i) {
    if (!states[i].value.defined()) {
      return internal_error(
          fmt::format("ZeRO-1: no wrapper holds parameter '{}'", model_.params()[i].name));
    }
  }
  return states;
}

Status Gpt3dZero::restore_states(const std::vector<ShardState>& states,
                                 const OptimizerRecord& record, const std::string& where) {
  const zero::OptimizerOptions& o = chunks_.front()->zero->options().optimizer;
  const bool adam = o.kind == zero::OptimizerKind::kAdamW;
  if (record.adam != adam) {
    return failed_precondition(
        fmt::format("checkpoint {}: saved with optimizer {}, this run uses {}", where,
                    record.adam ? "adamw" : "sgd", adam ? "adamw" : "sgd"));
  }
  std::vector<std::string> kinds{"param"};
  if (adam) kinds.insert(kinds.end(), {"exp_avg", "exp_avg_sq"});
  if (!adam && o.momentum != 0) kinds.push_back("momentum");
  for (auto& c : chunks_) {
    // The wrapper's own checkpoint form, whole (rank 0 of 1): it keeps its share.
    ckpt::LoadedState loaded;
    loaded.dir = where;
    loaded.step = record.step;
    loaded.saved_world_size = 1;
    auto blob = [&](const std::string& name, const std::string& bytes) {
      ckpt::LoadedEntry e{.name = name};
      const auto* b = reinterpret_cast<const std::byte*>(bytes.data());
      e.data.assign(b, b + bytes.size());
      loaded.entries.push_back(std::move(e));
    };
    blob("zero/layout", c->layout_blob);
    blob("zero/optim",
         nlohmann::json{{"kind", adam ? "adamw" : "sgd"}, {"step", record.step}}.dump());
    for (const Chunk::Unit& u : c->units) {
      for (const std::string& what : kinds) {
        ckpt::LoadedEntry e{.name = fmt::format("zero/{}/{}", u.name, what), .is_tensor = true};
        e.spec = {.dtype = comm::DataType::kFloat32,
                  .shape = {u.total},
                  .row_offset = 0,
                  .rows = u.total};
        e.data.resize(static_cast<std::size_t>(u.total) * sizeof(float));
        for (const Chunk::Param& p : u.params) {
          const ShardState& s = states.at(p.index);
          const torch::Tensor& t = what == "param"        ? s.value
                                   : what == "exp_avg_sq" ? s.second
                                                          : s.first;
          if (!t.defined()) {
            return data_loss(fmt::format("checkpoint {}: no {} state for parameter '{}' (saved {})",
                                         where, what, model_.params()[p.index].name,
                                         record.adam       ? "by adamw"
                                         : record.momentum ? "by sgd"
                                                           : "by sgd without momentum"));
          }
          torch::Tensor f = t.to(torch::kFloat32).contiguous();
          std::memcpy(e.data.data() + p.offset * static_cast<std::int64_t>(sizeof(float)),
                      f.data_ptr(), static_cast<std::size_t>(p.numel) * sizeof(float));
        }
        loaded.entries.push_back(std::move(e));
      }
    }
    // Also gathers the whole parameters from the restored shares.
    KILN_RETURN_IF_ERROR(c->zero->restore(loaded));
  }
  return Status::ok();
}

}  // namespace kiln::train
