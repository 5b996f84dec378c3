#include "kiln/train/gpt_3d_state.h"

#include <xxhash.h>

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
  return XXH3_64bits(all.data(), all.size() * sizeof(std::uint64_t));
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

}  // namespace kiln::train
