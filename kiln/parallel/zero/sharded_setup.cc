// ShardedDataParallel's setup: units from the module's children, the same
// parameters checked on every rank, and each unit flattened and sharded.
#include <map>

#include <fmt/format.h>

#include "kiln/parallel/after_accumulate.h"
#include "kiln/parallel/zero/sharded_unit.h"
#include <torch/csrc/autograd/variable.h>

namespace kiln::parallel::zero {
namespace {

using parallel::AfterAccumulate;

bool is_container(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::ModuleListImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::SequentialImpl*>(&m) != nullptr;
}

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

Result<std::unique_ptr<ShardedDataParallel>> ShardedDataParallel::create(
    std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm, ZeroOptions options) {
  if (options.stage < 1 || options.stage > 3) {
    return invalid_argument(fmt::format("sharded data parallel: stage {} (1, 2 or 3)", options.stage));
  }
  std::unique_ptr<ShardedDataParallel> z(new ShardedDataParallel(std::move(module), comm, options));
  try {
    KILN_RETURN_IF_ERROR(z->build_units());
    KILN_RETURN_IF_ERROR(z->check_and_broadcast());
    KILN_RETURN_IF_ERROR(z->shard_units());
  } catch (const std::exception& e) {
    return internal_error(fmt::format("sharded data parallel: setting up: {}", e.what()));
  }
  z->reset_peak();
  return z;
}

std::string ShardedDataParallel::unit_name(std::size_t u) const { return units_[u]->name; }

Status ShardedDataParallel::build_units() {
  std::map<const c10::TensorImpl*, std::string> name_of;
  for (auto& p : module_->named_parameters()) name_of[p.value().unsafeGetTensorImpl()] = p.key();

  struct Candidate {
    std::string name;
    const torch::nn::Module* module;
    std::vector<torch::Tensor> params;
  };
  std::vector<Candidate> candidates;
  auto add = [&](const std::string& name, const torch::nn::Module& m) {
    Candidate c{name, &m, {}};
    for (auto& p : m.parameters()) {
      if (p.requires_grad()) c.params.push_back(p);
    }
    if (!c.params.empty()) candidates.push_back(std::move(c));
  };
  for (auto& child : module_->named_children()) {
    if (is_container(*child.value())) {
      for (auto& e : child.value()->named_children()) add(child.key() + "." + e.key(), *e.value());
    } else {
      add(child.key(), *child.value());
    }
  }
  // Consecutive candidates smaller than min_unit_params merge into one unit.
  auto count = [](const Candidate& x) {
    std::int64_t n = 0;
    for (auto& p : x.params) n += p.numel();
    return n;
  };
  std::int64_t open_count = 0;
  for (auto& c : candidates) {
    if (units_.empty() || open_count >= options_.min_unit_params) {
      units_.push_back(std::make_unique<Unit>());
      units_.back()->name = c.name;
      open_count = 0;
    } else {
      units_.back()->name += "+" + c.name;
    }
    Unit& u = *units_.back();
    u.modules.push_back(c.module);
    u.params.insert(u.params.end(), c.params.begin(), c.params.end());
    open_count += count(c);
  }
  // Parameters on the root itself: a unit that stays gathered.
  auto root = std::make_unique<Unit>();
  root->name = "(root)";
  for (auto& p : module_->named_parameters(/*recurse=*/false)) {
    if (p.value().requires_grad()) root->params.push_back(p.value());
  }
  if (!root->params.empty()) {
    root_ = root.get();
    units_.push_back(std::move(root));
  }

  for (std::size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    std::vector<std::int64_t> numels;
    for (auto& p : u.params) {
      if (p.scalar_type() != torch::kFloat32) {
        return invalid_argument(fmt::format("sharded data parallel: parameter {} is {}; the module "
                                            "must be float32 (precision = bf16 casts it)",
                                            name_of[p.unsafeGetTensorImpl()], c10::toString(p.scalar_type())));
      }
      u.names.push_back(name_of[p.unsafeGetTensorImpl()]);
      numels.push_back(p.numel());
      parameter_count_ += p.numel();
    }
    u.layout = std::make_unique<FlatLayout>(std::move(numels), comm_.size());
    u.mine = u.layout->shard(comm_.rank());
    u.pending = u.params.size();
    for (const auto* m : u.modules) set_unit_hooks(m, this, ui);
    for (auto& p : u.params) {
      if (!unit_of_.emplace(p.unsafeGetTensorImpl(), ui).second) {
        return invalid_argument(fmt::format("sharded data parallel: parameter {} is shared by two "
                                            "units (tied weights must live in one child module)",
                                            name_of[p.unsafeGetTensorImpl()]));
      }
    }
  }
  return Status::ok();
}

Status ShardedDataParallel::check_and_broadcast() {
  // Same parameters everywhere: a digest of names and shapes, compared.
  std::string desc;
  for (auto& u : units_) {
    desc += u->name + ";";
    for (std::size_t i = 0; i < u->params.size(); ++i) {
      desc += u->names[i] + fmt::format("{}", fmt::join(u->params[i].sizes(), "x")) + ",";
    }
  }
  std::vector<std::int64_t> all(static_cast<std::size_t>(comm_.size()));
  std::int64_t mine = static_cast<std::int64_t>(fnv1a(desc));
  KILN_RETURN_IF_ERROR(comm_.allgather(&mine, all.data(), 1, comm::DataType::kInt64)->wait(options_.timeout));
  for (int r = 0; r < comm_.size(); ++r) {
    if (all[static_cast<std::size_t>(r)] != mine) {
      return failed_precondition(fmt::format(
          "sharded data parallel: rank {} has other parameters (names or shapes) than rank {}: "
          "every rank must build the same model",
          r, comm_.rank()));
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& b : module_->buffers()) {
    if (!b.is_contiguous() || b.scalar_type() != torch::kFloat32) continue;
    KILN_RETURN_IF_ERROR(comm_.broadcast(b.data_ptr(), static_cast<std::size_t>(b.numel()),
                                         comm::DataType::kFloat32, 0)->wait(options_.timeout));
  }
  return Status::ok();
}

Status ShardedDataParallel::shard_units() {
  torch::NoGradGuard no_grad;
  const bool fp32 = compute_dtype_ == torch::kFloat32;
  for (auto& up : units_) {
    Unit& u = *up;
    const bool root = u.modules.empty();
    // The whole unit, fp32, from rank 0; then the parameters become views of
    // the compute-dtype flat and their own storage is released.
    torch::Tensor whole = torch::empty({u.layout->total()}, torch::kFloat32);
    for (std::size_t i = 0; i < u.params.size(); ++i) {
      whole.narrow(0, u.layout->offset(i), u.layout->numel(i)).copy_(u.params[i].reshape({-1}));
    }
    KILN_RETURN_IF_ERROR(comm_.broadcast(whole.data_ptr(), static_cast<std::size_t>(whole.numel()),
                                         comm::DataType::kFloat32, 0)->wait(options_.timeout));
    u.flat = fp32 ? whole : whole.to(compute_dtype_);
    u.flat_bytes = u.flat.nbytes();
    u.padded_bytes = static_cast<std::size_t>(u.layout->block() * comm_.size()) * u.flat.element_size();
    for (std::size_t i = 0; i < u.params.size(); ++i) {
      u.params[i].set_data(u.flat.narrow(0, u.layout->offset(i), u.layout->numel(i)).view(u.params[i].sizes()));
    }
    if (fp32 && (options_.stage < 3 || root)) {
      u.master = u.flat.narrow(0, u.mine.offset, u.mine.count);
      u.master_is_view = true;
    } else {
      u.master = whole.narrow(0, u.mine.offset, u.mine.count).clone();
    }
    // What this rank sends when the unit is gathered: its share, in place in
    // the flat where the flat stays allocated.
    u.send = u.flat.narrow(0, u.mine.offset, u.mine.count);
    if (options_.stage == 3 && !root) {
      u.send = fp32 ? u.master : u.master.to(compute_dtype_);
      release_storage(u.flat);
      u.allocated = false;
      u.state = Unit::Params::kFreed;
    }
    if (options_.stage == 1) {
      u.staging = torch::zeros({u.layout->block() * comm_.size()}, compute_dtype_);
      u.grad_share = u.staging.narrow(0, comm_.rank() * u.layout->block(), u.layout->block());
    } else {
      u.grad_share = torch::zeros({u.layout->block()}, compute_dtype_);
    }
    u.opt_index = optimizer_.add_shard(u.mine.count);
  }
  pool_.set_max_idle(pooled_blocks());
  for (std::size_t ui = 0; ui < units_.size(); ++ui) {
    for (auto& p : units_[ui]->params) {
      grad_accumulators_.push_back(torch::autograd::impl::grad_accumulator(p));
      post_hook_keys_.push_back(grad_accumulators_.back()->add_post_hook(
          std::make_unique<AfterAccumulate>([this, ui] { on_grad_ready(ui); })));
    }
  }
  return Status::ok();
}

}  // namespace kiln::parallel::zero
