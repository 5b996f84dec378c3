#include "kiln/train/train_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <xxhash.h>

#include <cstring>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

}  // namespace

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

  at::Generator gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    out->rng = gen.get_state().contiguous();
  }
  KILN_RETURN_IF_ERROR(out->view.add_tensor("rng", comm::DataType::kUInt8,
                                            {world, out->rng.numel()}, rank, 1,
                                            out->rng.data_ptr()));

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

  out->progress_blob = nlohmann::json{{"step", progress.step},
                                      {"epoch", progress.epoch},
                                      {"consumed", progress.consumed}}.dump();
  return out->view.add_blob("progress", out->progress_blob.data(), out->progress_blob.size());
}

Result<Progress> restore_state(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                               torch::optim::Optimizer& optimizer, int rank) {
  const std::string where = loaded.dir;
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : module_tensors(module)) {
    const ckpt::LoadedEntry* e = loaded.find(name);
    if (e == nullptr || !e->is_tensor) {
      return data_loss(fmt::format("checkpoint {}: no tensor '{}' (saved by another model?)", where, name));
    }
    if (e->spec.shape != checkpoint_shape(tensor) || e->data.size() != tensor.nbytes()) {
      return data_loss(fmt::format("checkpoint {}: tensor '{}' has shape [{}] ({} bytes), the model's "
                                   "is [{}]", where, name, fmt::join(e->spec.shape, ", "),
                                   e->data.size(), fmt::join(tensor.sizes(), ", ")));
    }
    std::memcpy(tensor.data_ptr(), e->data.data(), e->data.size());
  }

  const ckpt::LoadedEntry* rng = loaded.find("rng");
  if (rng == nullptr || !rng->is_tensor || rng->spec.shape.size() != 2 || rng->spec.shape[0] < 1) {
    return data_loss(fmt::format("checkpoint {}: no generator states ('rng')", where));
  }
  {
    std::int64_t rows = rng->spec.shape[0], bytes = rng->spec.shape[1];
    torch::Tensor state = torch::empty({bytes}, torch::kUInt8);
    std::memcpy(state.data_ptr(), rng->data.data() + (rank % rows) * bytes, static_cast<std::size_t>(bytes));
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  }

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

std::uint64_t parameter_digest(torch::nn::Module& module) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (auto& p : module.parameters()) {
    torch::Tensor t = p.detach().contiguous();
    XXH3_64bits_update(state, t.data_ptr(), t.nbytes());
  }
  std::uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

}  // namespace kiln::train
