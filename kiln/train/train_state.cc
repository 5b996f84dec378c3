#include "kiln/train/train_state.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/ckpt/gather.h"
#include "kiln/train/gpt_3d_state.h"
#include "kiln/train/train_data.h"

namespace kiln::train {
namespace {

Result<comm::DataType> to_ckpt_dtype(torch::ScalarType t, const std::string& name) {
  switch (t) {
    case torch::kFloat32: return comm::DataType::kFloat32;
    case torch::kFloat64: return comm::DataType::kFloat64;
    case torch::kInt64: return comm::DataType::kInt64;
    case torch::kInt32: return comm::DataType::kInt32;
    case torch::kUInt8: return comm::DataType::kUInt8;
    default:
      return failed_precondition(fmt::format("checkpoint: tensor {} has dtype {}, which checkpoints do not "
                                       "hold yet", name, c10::toString(t)));
  }
}

// Module tensors in a fixed order, named as in the checkpoint.
std::vector<std::pair<std::string, torch::Tensor>> module_tensors(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& p : module.named_parameters()) out.emplace_back("param/" + p.key(), p.value());
  for (auto& b : module.named_buffers()) out.emplace_back("buffer/" + b.key(), b.value());
  return out;
}

std::vector<std::int64_t> checkpoint_shape(const torch::Tensor& t) {
  if (t.dim() == 0) return {1};
  return t.sizes().vec();
}




// A sharded checkpoint (zero/layout, loaded whole) into a replicated module
// and LibTorch optimizer: each unit's flat is cut back into its parameters,
// its moments into per-parameter optimizer state.
Status restore_from_sharded(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                            torch::optim::Optimizer& optimizer) {
  const std::string& where = loaded.dir;
  const ckpt::LoadedEntry* layout = loaded.find("zero/layout");
  const ckpt::LoadedEntry* zopt = loaded.find("zero/optim");
  auto j = nlohmann::json::parse(layout->data.begin(), layout->data.end(), nullptr, false);
  auto jo = zopt == nullptr ? nlohmann::json() : nlohmann::json::parse(zopt->data.begin(), zopt->data.end(), nullptr, false);
  if (j.is_discarded() || !j.contains("units") || jo.is_discarded() || !jo.contains("step")) {
    return data_loss(fmt::format("checkpoint {}: the sharded layout or optimizer record is not valid", where));
  }
  std::map<std::string, torch::Tensor> params;
  for (auto& p : module.named_parameters()) params[p.key()] = p.value();
  const std::int64_t step = jo["step"].get<std::int64_t>();
  const bool adam = jo.value("kind", "") == "adamw";
  auto flat = [&](const std::string& name, std::int64_t total) -> Result<const float*> {
    const ckpt::LoadedEntry* e = loaded.find(name);
    if (e == nullptr || !e->is_tensor || e->spec.shape != std::vector<std::int64_t>{total} ||
        e->spec.row_offset != 0 || e->spec.rows != total) {
      return data_loss(fmt::format("checkpoint {}: no whole flat tensor '{}' of {} elements", where, name, total));
    }
    return reinterpret_cast<const float*>(e->data.data());
  };
  torch::NoGradGuard no_grad;
  std::size_t restored = 0;
  for (const auto& ju : j["units"]) {
    const std::string unit = ju.value("name", "");
    const std::int64_t total = ju.value("total", std::int64_t{0});
    KILN_ASSIGN_OR_RETURN(const float* values, flat("zero/" + unit + "/param", total));
    const float* m1 = nullptr;
    const float* m2 = nullptr;
    if (adam) {
      KILN_ASSIGN_OR_RETURN(m1, flat("zero/" + unit + "/exp_avg", total));
      KILN_ASSIGN_OR_RETURN(m2, flat("zero/" + unit + "/exp_avg_sq", total));
    } else if (loaded.find("zero/" + unit + "/momentum") != nullptr) {
      KILN_ASSIGN_OR_RETURN(m1, flat("zero/" + unit + "/momentum", total));
    }
    std::int64_t offset = 0;
    for (const auto& jp : ju["params"]) {
      const std::string name = jp.value("name", "");
      auto it = params.find(name);
      if (it == params.end() || it->second.sizes().vec() != jp["shape"].get<std::vector<std::int64_t>>()) {
        return data_loss(fmt::format("checkpoint {}: parameter '{}' of unit '{}' is not in this model "
                                     "with that shape", where, name, unit));
      }
      torch::Tensor& p = it->second;
      const std::int64_t n = p.numel();
      if (offset + n > total) return data_loss(fmt::format("checkpoint {}: unit '{}' is shorter than its parameters", where, unit));
      auto slice = [&](const float* base) {
        return torch::from_blob(const_cast<float*>(base + offset), p.sizes(), torch::kFloat32).clone();
      };
      p.copy_(slice(values));
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      if (adam) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(step);
        st->exp_avg(slice(m1));
        st->exp_avg_sq(slice(m2));
        optimizer.state()[key] = std::move(st);
      } else if (m1 != nullptr) {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(slice(m1));
        optimizer.state()[key] = std::move(st);
      }
      offset += n;
      ++restored;
    }
  }
  if (restored != params.size()) {
    return data_loss(fmt::format("checkpoint {}: the sharded layout covers {} of the model's {} "
                                 "parameters", where, restored, params.size()));
  }
  for (auto& b : module.named_buffers()) {
    const ckpt::LoadedEntry* e = loaded.find("buffer/" + b.key());
    if (e == nullptr || e->data.size() != b.value().nbytes()) {
      return data_loss(fmt::format("checkpoint {}: no buffer '{}' of {} bytes", where, b.key(), b.value().nbytes()));
    }
    std::memcpy(b.value().data_ptr(), e->data.data(), e->data.size());
  }
  return Status::ok();
}

}  // namespace

Status add_rng_and_progress(const Progress& progress, int rank, int world, Snapshot* out) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    out->rng = gen.get_state().contiguous();
  }
  KILN_RETURN_IF_ERROR(out->view.add_tensor("rng", comm::DataType::kUInt8,
                                            {world, out->rng.numel()}, rank, 1,
                                            out->rng.data_ptr()));
  out->progress_blob = nlohmann::json{{"step", progress.step},
                                      {"epoch", progress.epoch},
                                      {"consumed", progress.consumed}}.dump();
  return out->view.add_blob("progress", out->progress_blob.data(), out->progress_blob.size());
}

Status restore_rng(const ckpt::LoadedState& loaded, int rank) {
  const ckpt::LoadedEntry* rng = loaded.find("rng");
  if (rng == nullptr || !rng->is_tensor || rng->spec.shape.size() != 2 || rng->spec.shape[0] < 1) {
    return data_loss(fmt::format("checkpoint {}: no generator states ('rng')", loaded.dir));
  }
  std::int64_t rows = rng->spec.shape[0], bytes = rng->spec.shape[1];
  // Loaded whole (every row) or for this rank (its even share of the rows).
  std::int64_t row = rank % rows;
  if (row < rng->spec.row_offset || row >= rng->spec.row_offset + rng->spec.rows) {
    row = rng->spec.row_offset;
    if (rng->spec.rows < 1) return data_loss(fmt::format("checkpoint {}: no generator row for rank {}", loaded.dir, rank));
  }
  torch::Tensor state = torch::empty({bytes}, torch::kUInt8);
  std::memcpy(state.data_ptr(), rng->data.data() + (row - rng->spec.row_offset) * bytes,
              static_cast<std::size_t>(bytes));
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
  return Status::ok();
}

Result<Progress> restore_progress(const ckpt::LoadedState& loaded) {
  const std::string& where = loaded.dir;
  const ckpt::LoadedEntry* prog = loaded.find("progress");
  if (prog == nullptr) return data_loss(fmt::format("checkpoint {}: no progress record", where));
  auto j = nlohmann::json::parse(prog->data.begin(), prog->data.end(), nullptr, false);
  if (j.is_discarded() || !j.contains("step") || !j.contains("epoch") || !j.contains("consumed")) {
    return data_loss(fmt::format("checkpoint {}: the progress record is not valid JSON with step, "
                                 "epoch and consumed", where));
  }
  return Progress{j["step"].get<std::int64_t>(), j["epoch"].get<std::uint64_t>(),
                  j["consumed"].get<std::uint64_t>()};
}

Status capture_state(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                     const Progress& progress, int rank, int world, Snapshot* out) {
  for (auto& [name, tensor] : module_tensors(module)) {
    torch::Tensor t = tensor.detach().contiguous();
    out->keep_alive.push_back(t);
    KILN_ASSIGN_OR_RETURN(comm::DataType dtype, to_ckpt_dtype(t.scalar_type(), name));
    std::vector<std::int64_t> shape = checkpoint_shape(t);
    ckpt::RowRange mine = ckpt::even_rows(shape[0], rank, world);
    std::size_t row_bytes = t.numel() == 0 ? 0 : t.nbytes() / static_cast<std::size_t>(shape[0]);
    const auto* base = static_cast<const std::byte*>(t.data_ptr());
    KILN_RETURN_IF_ERROR(out->view.add_tensor(name, dtype, shape, mine.offset, mine.count,
                                              base + mine.offset * row_bytes));
  }

  std::ostringstream optim_bytes;
  try {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(optim_bytes);
  } catch (const std::exception& e) {
    return internal_error(fmt::format("checkpoint: serializing the optimizer state: {}", e.what()));
  }
  out->optim_blob = optim_bytes.str();
  KILN_RETURN_IF_ERROR(out->view.add_blob("optim", out->optim_blob.data(), out->optim_blob.size()));
  return add_rng_and_progress(progress, rank, world, out);
}

Status capture_sharded_state(parallel::zero::ShardedDataParallel& sharded, const Progress& progress,
                             int rank, int world, Snapshot* out) {
  KILN_RETURN_IF_ERROR(sharded.capture(&out->view, &out->keep_alive, &out->layout_blob, &out->optim_blob));
  for (auto& b : sharded.module().named_buffers()) {
    torch::Tensor t = b.value().detach().contiguous();
    out->keep_alive.push_back(t);
    KILN_ASSIGN_OR_RETURN(comm::DataType dtype, to_ckpt_dtype(t.scalar_type(), b.key()));
    std::vector<std::int64_t> shape = checkpoint_shape(t);
    ckpt::RowRange mine = ckpt::even_rows(shape[0], rank, world);
    std::size_t row_bytes = t.numel() == 0 ? 0 : t.nbytes() / static_cast<std::size_t>(shape[0]);
    KILN_RETURN_IF_ERROR(out->view.add_tensor("buffer/" + b.key(), dtype, shape, mine.offset, mine.count,
                                              static_cast<const std::byte*>(t.data_ptr()) + mine.offset * row_bytes));
  }
  return add_rng_and_progress(progress, rank, world, out);
}

std::vector<ckpt::WholeTarget> whole_targets(torch::nn::Module& module) {
  std::vector<ckpt::WholeTarget> out;
  for (auto& [name, tensor] : module_tensors(module)) {
    if (!tensor.is_contiguous() || !to_ckpt_dtype(tensor.scalar_type(), name).is_ok()) continue;
    out.push_back({name, static_cast<std::byte*>(tensor.data_ptr()), tensor.nbytes(),
                   checkpoint_shape(tensor)[0]});
  }
  return out;
}

Result<Progress> restore_state(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                               torch::optim::Optimizer& optimizer, int rank) {
  const std::string where = loaded.dir;
  torch::NoGradGuard no_grad;
  if (loaded.find("mesh/layout") != nullptr) {  // saved by a tensor/pipeline-parallel run
    KILN_RETURN_IF_ERROR(restore_whole_from_3d(loaded, module, optimizer));
    KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));
    return restore_progress(loaded);
  }
  if (loaded.find("zero/layout") != nullptr) {
    KILN_RETURN_IF_ERROR(restore_from_sharded(loaded, module, optimizer));
    KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));
    return restore_progress(loaded);
  }
  for (auto& [name, tensor] : module_tensors(module)) {
    const ckpt::LoadedEntry* e = loaded.find(name);
    if (e == nullptr || !e->is_tensor) {
      return data_loss(fmt::format("checkpoint {}: no tensor '{}' (saved by another model?)", where, name));
    }
    if (e->in_place && e->spec.shape == checkpoint_shape(tensor) && e->spec.row_offset == 0 &&
        e->spec.rows == e->spec.shape[0]) {
      continue;  // already in the tensor (whole_targets)
    }
    if (e->spec.shape != checkpoint_shape(tensor) || e->data.size() != tensor.nbytes()) {
      return data_loss(fmt::format("checkpoint {}: tensor '{}' has shape [{}] ({} bytes), the model's "
                                   "is [{}]", where, name, fmt::join(e->spec.shape, ", "),
                                   e->data.size(), fmt::join(tensor.sizes(), ", ")));
    }
    std::memcpy(tensor.data_ptr(), e->data.data(), e->data.size());
  }

  KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));

  const ckpt::LoadedEntry* optim = loaded.find("optim");
  if (optim == nullptr) return data_loss(fmt::format("checkpoint {}: no optimizer state", where));
  try {
    std::istringstream in(std::string(reinterpret_cast<const char*>(optim->data.data()), optim->data.size()));
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    optimizer.load(archive);
  } catch (const std::exception& e) {
    return data_loss(fmt::format("checkpoint {}: the optimizer state does not load: {}", where, e.what()));
  }

  return restore_progress(loaded);
}

Result<Progress> restore_sharded_state(const ckpt::LoadedState& loaded,
                                       parallel::zero::ShardedDataParallel& sharded, int rank,
                                       comm::Communicator& comm) {
  if (loaded.find("mesh/layout") != nullptr) {
    // Saved by a tensor/pipeline-parallel run: canonical rows of whole
    // parameters, which only whole tensors cut into the units' flats. The
    // units are what this run's wrapper would save (its zero/layout).
    KILN_ASSIGN_OR_RETURN(ckpt::LoadedState whole, ckpt::gather_whole_tensors(loaded, comm, kCollectiveTimeout));
    KILN_ASSIGN_OR_RETURN(ckpt::LoadedState converted, sharded_state_from_3d(whole, sharded.layout_json()));
    return restore_sharded_state(converted, sharded, rank, comm);
  }
  KILN_RETURN_IF_ERROR(sharded.restore(loaded));
  torch::NoGradGuard no_grad;
  for (auto& b : sharded.module().named_buffers()) {
    const ckpt::LoadedEntry* e = loaded.find("buffer/" + b.key());
    if (e == nullptr || e->data.size() != b.value().nbytes() || e->spec.rows != e->spec.shape[0]) {
      return data_loss(fmt::format("checkpoint {}: no whole buffer '{}' of {} bytes", loaded.dir,
                                   b.key(), b.value().nbytes()));
    }
    std::memcpy(b.value().data_ptr(), e->data.data(), e->data.size());
  }
  KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));
  return restore_progress(loaded);
}

void ParameterDigest::add(const torch::Tensor& parameter) {
  torch::Tensor t = parameter.detach().contiguous();
  hash_.update(t.data_ptr(), t.nbytes());
}

std::uint64_t parameter_digest(torch::nn::Module& module) {
  ParameterDigest d;
  for (auto& p : module.parameters()) d.add(p);
  return d.value();
}

}  // namespace kiln::train
