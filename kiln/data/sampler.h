// Sampler: a deterministic global order per epoch, partitioned across ranks,
// resumable mid-epoch at any world size.
//
// Note [Global order]: the epoch's order is a permutation of all samples,
// a pure function of (seed, epoch, shard sizes, window). Shards are shuffled
// as units, their samples concatenated, and then each consecutive block of
// `shuffle_window` positions is shuffled in place. Reads stay local (a window
// touches ~window/shard_size + 1 shards) while the order is still mixed.
//
// Note [Resume]: the state is (epoch, consumed): `consumed` positions of the
// global order are done. Position p >= consumed goes to rank
// (p - consumed) % world. Saving at a point where every position < consumed
// was delivered (e.g. after a lockstep step: consumed += world * batch) and
// resuming with any world size visits every remaining position exactly once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/data/index.h"

namespace kiln::data {

struct SamplerOptions {
  std::uint64_t seed = 0;
  std::uint64_t shuffle_window = 8192;  // 0 or 1: shard-level shuffle only
  bool shuffle = true;                  // false: positions in sample order
};

struct SamplerState {
  std::uint64_t epoch = 0;
  std::uint64_t consumed = 0;  // positions of the epoch's global order done
};

// The epoch's global order. Thread-safe: at() caches the last few shuffled
// windows, so a prefetcher and workers reading different windows do not
// recompute them on every call (Note [Windows computed outside the lock]).
class EpochOrder {
 public:
  EpochOrder(const DatasetIndex& index, const SamplerOptions& options, std::uint64_t epoch);

  std::uint64_t size() const { return total_; }
  // The sample id at global position `p` (< size()).
  std::uint64_t at(std::uint64_t p) const;
  // out[j] = at(p + j * stride) for j < n, under one lock (positions < size()).
  void at_many(std::uint64_t p, std::uint64_t stride, std::size_t n, std::uint64_t* out) const;
  // Shuffles (and caches) the window holding position `p` (< size()) now,
  // so that a later at() there finds it ready: lets a thread with time to
  // spare do it ahead of the readers. No effect without a window.
  void prepare(std::uint64_t p) const;
  // Positions per shuffle window; 1 when positions are not shuffled in windows.
  std::uint64_t window_size() const;

  // Where each shard's samples can sit in the order: every position holding
  // a sample of index.shards[shard] is in [begin, end). Exact without a
  // window; with one, the windows that overlap the shard's run (a superset,
  // from the order's structure alone, O(shards)). In order of `begin`.
  struct ShardSpan {
    std::size_t shard;
    std::uint64_t begin, end;
  };
  std::vector<ShardSpan> shard_spans() const;

 private:
  std::uint64_t unshuffled(std::uint64_t q) const;  // q-th sample after the shard shuffle
  // The ids of window `win`, computed (with `lock` released) if not cached.
  // Valid until `lock` is next released.
  const std::vector<std::uint64_t>& window(std::uint64_t win,
                                           std::unique_lock<std::mutex>& lock) const;
  void fill_window(std::uint64_t win, std::vector<std::uint64_t>* ids) const;  // no lock needed

  SamplerOptions options_;
  std::uint64_t epoch_;
  std::uint64_t total_ = 0;
  std::vector<std::size_t> shard_index_;    // in shuffled shard order
  std::vector<std::uint64_t> shard_first_;  // in shuffled shard order
  std::vector<std::uint64_t> shard_start_;  // prefix sums of shuffled shard sizes
  static constexpr int kCachedWindows = 4;
  struct Window {
    std::uint64_t id = UINT64_MAX;
    bool ready = false;          // false while a thread computes it (ids moved out)
    std::uint64_t last_use = 0;  // for least-recently-used eviction
    std::vector<std::uint64_t> ids;
  };
  mutable std::mutex mu_;
  mutable std::condition_variable computed_;  // a window became ready
  mutable Window windows_[kCachedWindows];    // GUARDED_BY(mu_)
  mutable std::uint64_t uses_ = 0;            // GUARDED_BY(mu_)
};

// One rank's view: the positions it consumes, in order, from a state.
class RankSampler {
 public:
  RankSampler(const DatasetIndex& index, SamplerOptions options, int rank, int world,
              SamplerState state);

  // Number of samples this rank has left in the epoch.
  std::uint64_t remaining() const;
  // The k-th next sample id of this rank (k < remaining()); does not advance.
  std::uint64_t peek(std::uint64_t k) const;
  // out[j] = peek(k + j) for j < n (k + n <= remaining()), cheaper than n peeks.
  void peek_many(std::uint64_t k, std::size_t n, std::uint64_t* out) const;
  // Global position of this rank's k-th next sample.
  std::uint64_t position(std::uint64_t k) const;

  const EpochOrder& order() const { return order_; }
  const SamplerState& start() const { return start_; }

 private:
  EpochOrder order_;
  int rank_, world_;
  SamplerState start_;
};

// A 64-bit mix (splitmix64): the only randomness source, so orders are
// identical across platforms and standard libraries.
std::uint64_t mix64(std::uint64_t x);

}  // namespace kiln::data
