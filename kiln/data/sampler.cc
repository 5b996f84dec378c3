#include "kiln/data/sampler.h"

#include <algorithm>
#include <numeric>

#include "kiln/base/check.h"

namespace kiln::data {

std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

namespace {

// Fisher-Yates with a splitmix64 stream; std::shuffle's algorithm is
// unspecified, so its result could differ between standard libraries.
template <typename T>
void shuffle(std::vector<T>* v, std::uint64_t key) {
  std::uint64_t state = key;
  for (std::size_t i = v->size(); i > 1; --i) {
    state = mix64(state);
    std::size_t j = static_cast<std::size_t>(state % i);  // modulo bias < i/2^64
    std::swap((*v)[i - 1], (*v)[j]);
  }
}

}  // namespace

EpochOrder::EpochOrder(const DatasetIndex& index, const SamplerOptions& options,
                       std::uint64_t epoch)
    : options_(options), epoch_(epoch), total_(index.num_samples) {
  std::vector<std::size_t> order(index.shards.size());
  std::iota(order.begin(), order.end(), 0);
  if (options_.shuffle) shuffle(&order, mix64(options_.seed ^ mix64(epoch_)));
  std::uint64_t start = 0;
  for (auto s : order) {
    if (index.shards[s].num_samples == 0) continue;
    shard_index_.push_back(s);
    shard_first_.push_back(index.shards[s].first_sample);
    shard_start_.push_back(start);
    start += index.shards[s].num_samples;
  }
}

std::uint64_t EpochOrder::unshuffled(std::uint64_t q) const {
  auto it = std::upper_bound(shard_start_.begin(), shard_start_.end(), q);
  std::size_t s = static_cast<std::size_t>(it - shard_start_.begin()) - 1;
  return shard_first_[s] + (q - shard_start_[s]);
}

std::vector<EpochOrder::ShardSpan> EpochOrder::shard_spans() const {
  std::vector<ShardSpan> spans;
  std::uint64_t w = options_.shuffle && options_.shuffle_window > 1 ? options_.shuffle_window : 1;
  for (std::size_t i = 0; i < shard_index_.size(); ++i) {
    std::uint64_t begin = shard_start_[i];
    std::uint64_t end = i + 1 < shard_start_.size() ? shard_start_[i + 1] : total_;
    // A window shuffles positions only among themselves.
    spans.push_back({shard_index_[i], begin / w * w, std::min(total_, (end + w - 1) / w * w)});
  }
  return spans;
}

std::uint64_t EpochOrder::window_size() const {
  return options_.shuffle && options_.shuffle_window > 1 ? options_.shuffle_window : 1;
}

std::uint64_t EpochOrder::at(std::uint64_t p) const {
  KILN_CHECK(p < total_);
  std::uint64_t w = options_.shuffle_window;
  if (!options_.shuffle || w <= 1) return unshuffled(p);
  std::uint64_t win = p / w;
  std::unique_lock<std::mutex> lock(mu_);
  return window(win, lock)[p - win * w];
}

void EpochOrder::at_many(std::uint64_t p, std::uint64_t stride, std::size_t n,
                         std::uint64_t* out) const {
  if (n == 0) return;
  KILN_CHECK(p + (n - 1) * stride < total_);
  std::uint64_t w = options_.shuffle_window;
  if (!options_.shuffle || w <= 1) {
    for (std::size_t j = 0; j < n; ++j) out[j] = unshuffled(p + j * stride);
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  const std::vector<std::uint64_t>* ids = nullptr;
  std::uint64_t cur = UINT64_MAX;
  for (std::size_t j = 0; j < n; ++j, p += stride) {
    std::uint64_t win = p / w;
    if (win != cur) {
      ids =
          &window(win, lock);  // may release the lock: `ids` of an earlier window is not used after
      cur = win;
    }
    out[j] = (*ids)[p - win * w];
  }
}

void EpochOrder::prepare(std::uint64_t p) const {
  KILN_CHECK(p < total_);
  if (window_size() <= 1) return;
  std::unique_lock<std::mutex> lock(mu_);
  window(p / options_.shuffle_window, lock);
}

// Note [Windows computed outside the lock]: shuffling a window of ~20 000
// positions takes ~0.25 ms on the 2-vCPU VM. Computed under mu_, it stalled
// every other reader, even those of cached windows, and a loader's decode
// threads all reach a new window together: each window of an epoch of 784 B
// samples parked the other decode threads for its whole shuffle (perf: CPUs
// idle 14% of the epoch). Now a window is claimed under the lock (marked not
// ready, so no one evicts it and readers of it wait for it), shuffled with
// the lock released, and published under it; readers of other windows go on.
// Loader's prefetch threads also shuffle the next window before the decode
// threads need it (Note [Sampler windows ahead] in loader.cc).
const std::vector<std::uint64_t>& EpochOrder::window(std::uint64_t win,
                                                     std::unique_lock<std::mutex>& lock) const {
  while (true) {
    Window* victim = nullptr;
    bool computing = false;
    for (Window& cached : windows_) {
      if (cached.id == win) {
        if (cached.ready) {
          cached.last_use = ++uses_;
          return cached.ids;
        }
        computing = true;
        break;
      }
      if (cached.ready || cached.id == UINT64_MAX) {
        if (victim == nullptr || cached.last_use < victim->last_use) victim = &cached;
      }
    }
    if (computing || victim == nullptr) {  // another thread computes it (or every slot)
      computed_.wait(lock);
      continue;
    }
    victim->id = win;
    victim->ready = false;
    std::vector<std::uint64_t> ids = std::move(victim->ids);  // its storage, reused
    lock.unlock();
    try {
      fill_window(win, &ids);
    } catch (...) {  // bad_alloc: free the slot, or its waiters would wait forever
      lock.lock();
      victim->id = UINT64_MAX;
      computed_.notify_all();
      throw;
    }
    lock.lock();
    victim->ids = std::move(ids);
    victim->ready = true;
    victim->last_use = ++uses_;
    computed_.notify_all();
    return victim->ids;
  }
}

void EpochOrder::fill_window(std::uint64_t win, std::vector<std::uint64_t>* ids) const {
  std::uint64_t w = options_.shuffle_window;
  std::uint64_t begin = win * w, end = std::min(total_, begin + w);
  ids->resize(end - begin);
  // unshuffled(q) for q in [begin, end), one shard run at a time (a binary
  // search per sample was ~1.4 ms of a 12 ms epoch of 85 599 small samples).
  auto it = std::upper_bound(shard_start_.begin(), shard_start_.end(), begin);
  std::size_t s = static_cast<std::size_t>(it - shard_start_.begin()) - 1;
  for (std::uint64_t q = begin; q < end;) {
    std::uint64_t run_end = s + 1 < shard_start_.size() ? std::min(end, shard_start_[s + 1]) : end;
    for (std::uint64_t id = shard_first_[s] + (q - shard_start_[s]); q < run_end; ++q, ++id) {
      (*ids)[q - begin] = id;
    }
    ++s;
  }
  shuffle(ids, mix64(mix64(options_.seed ^ mix64(epoch_)) + win + 1));
}

RankSampler::RankSampler(const DatasetIndex& index, SamplerOptions options, int rank, int world,
                         SamplerState state)
    : order_(index, options, state.epoch), rank_(rank), world_(world), start_(state) {
  KILN_CHECK(world > 0 && rank >= 0 && rank < world);
}

std::uint64_t RankSampler::remaining() const {
  std::uint64_t total = order_.size();
  if (start_.consumed >= total) return 0;
  std::uint64_t left = total - start_.consumed;
  auto r = static_cast<std::uint64_t>(rank_), w = static_cast<std::uint64_t>(world_);
  return left > r ? (left - r + w - 1) / w : 0;
}

std::uint64_t RankSampler::position(std::uint64_t k) const {
  return start_.consumed + static_cast<std::uint64_t>(rank_) + k * static_cast<std::uint64_t>(world_);
}

std::uint64_t RankSampler::peek(std::uint64_t k) const { return order_.at(position(k)); }

void RankSampler::peek_many(std::uint64_t k, std::size_t n, std::uint64_t* out) const {
  order_.at_many(position(k), static_cast<std::uint64_t>(world_), n, out);
}

}  // namespace kiln::data
