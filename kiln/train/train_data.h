// The data side of `kiln train`: preparing a dataset on first use, opening
// its splits through the shard cache, and the training stream of
// micro-batches across epochs. Shared by the data-parallel loop and the 3D
// loop (trainer_3d.cc).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/data/loader.h"
#include "kiln/data/shard_cache.h"
#include "kiln/objstore/object_store.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// Bounds the collectives the trainer itself issues (eval sums, barriers): a
// dead peer fails the run instead of hanging it. Generous: rank 0 may be
// converting a dataset while the others wait.
constexpr std::chrono::milliseconds kCollectiveTimeout = std::chrono::minutes(10);
constexpr double kBatchTimeoutS = 600;

// Intra-op threads per rank: train.threads, or the rank's share of the
// cores (Note [A rank's share of the cores] in kiln/base/rank_cores.h).
int threads_per_rank(const TrainLoopConfig& train);

// Converts the dataset on first use (rank 0; the others wait at a barrier).
Status prepare_data(const DataConfig& c, comm::Communicator& comm);

struct Split {
  std::unique_ptr<objstore::ObjectStore> store;
  std::unique_ptr<data::ShardCache> cache;
  data::DatasetIndex index;
};

Result<Split> open_split(const DataConfig& c, const std::string& name);

// Whether any rank was asked to stop (kiln run's SIGTERM): every rank must
// leave the loop after the same step, so the question is a collective.
Result<bool> any_rank_asked_to_stop(comm::Communicator& comm, bool asked);

// The training stream across epochs: micro-batches of `micro` samples per
// rank, only whole global micro-steps of each epoch.
class EpochStream {
 public:
  EpochStream(Split* split, const DataConfig& c, std::uint64_t micro, int rank, int world,
              std::uint64_t seed, data::SamplerState start)
      : split_(split), config_(c), micro_(micro), rank_(rank), world_(world), seed_(seed),
        state_(start) {}

  // The next micro-batch; starts the next epoch when this one has no whole
  // global micro-step left.
  Result<data::Batch> next() {
    std::uint64_t global = micro_ * static_cast<std::uint64_t>(world_);
    if (!loader_ || left_ == 0) {
      if (loader_) state_ = {state_.epoch + 1, 0};
      left_ = remaining() / global;
      if (left_ == 0 && state_.consumed != 0) {  // resumed within the epoch's dropped tail
        state_ = {state_.epoch + 1, 0};
        left_ = remaining() / global;
      }
      if (left_ == 0) {
        return failed_precondition(fmt::format(
            "dataset {} has {} samples, fewer than one micro-step across ranks ({})", config_.dir,
            split_->index.num_samples, global));
      }
      loader_.reset();
      loader_ = std::make_unique<data::Loader>(
          split_->cache.get(), split_->index,
          data::LoaderOptions{.rank = rank_, .world = world_,
                              .sampler = {.seed = seed_, .shuffle_window = config_.shuffle_window},
                              .state = state_, .batch_size = micro_, .workers = config_.workers,
                              .queue_depth = config_.queue_depth,
                              .batch_pool = batch_pool_});
    }
    KILN_ASSIGN_OR_RETURN(auto batch, loader_->next(Deadline::after_seconds(kBatchTimeoutS)));
    if (!batch) return internal_error("loader ended before the whole steps it promised");
    --left_;
    state_ = batch->state_after;
    return std::move(*batch);
  }

  data::SamplerState state() const { return state_; }
  double cache_hit_rate() const {
    const auto& st = split_->cache->stats();
    double hits = static_cast<double>(st.hits.load()), fetches = static_cast<double>(st.downloads.load());
    return hits + fetches > 0 ? hits / (hits + fetches) : -1;
  }

 private:
  std::uint64_t remaining() const {
    return split_->index.num_samples - std::min(split_->index.num_samples, state_.consumed);
  }

  Split* split_;
  DataConfig config_;
  std::uint64_t micro_;
  int rank_, world_;
  std::uint64_t seed_;
  data::SamplerState state_;
  std::uint64_t left_ = 0;
  // One pool for every epoch's loader: a new epoch starts with warm batch
  // buffers (Note [Recycled batch buffers] in kiln/data/batch.h).
  std::shared_ptr<data::BatchPool> batch_pool_ = data::BatchPool::create(
      static_cast<std::size_t>(std::max(1, config_.queue_depth) + std::max(1, config_.workers) + 2));
  std::unique_ptr<data::Loader> loader_;
};

}  // namespace kiln::train
