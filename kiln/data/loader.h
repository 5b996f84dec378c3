// Loader: the memory tier. Turns one rank's sampler order into batches of
// contiguous host buffers, ahead of the consumer.
//
// Threads, each with one job:
//   - `fetchers` prefetchers: acquire (download into the cache, then open)
//     shards in the order this rank first needs them, at most
//     `prefetch_shards` ahead of the workers (Note [Shard plan] in
//     loader.cc), so that downloads overlap;
//   - `workers` decoders: each claims the next batch number, decodes its
//     samples in place in the shard mapping (ShardReader) and collates them
//     straight into recycled batch buffers (Note [Recycled batch buffers] in
//     batch.h), and parks the batch in a reorder buffer.
// A consumer that finds its batch not ready builds the next unclaimed one
// itself when that cannot block, instead of sleeping (Note [The consumer
// helps] in loader.cc).
// At most `queue_depth` batches exist beyond the consumer (bounded memory).
// Batches come out in order; the first error of any thread is returned by
// next() and stops the others. Destruction stops and joins every thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/data/batch.h"
#include "kiln/data/index.h"
#include "kiln/data/mapped_shards.h"
#include "kiln/data/sampler.h"
#include "kiln/data/shard.h"
#include "kiln/data/shard_cache.h"

namespace kiln::data {

struct LoaderOptions {
  int rank = 0;
  int world = 1;
  SamplerOptions sampler;
  SamplerState state;          // where this epoch resumes (Note [Resume] in sampler.h)
  std::uint64_t batch_size = 64;
  int workers = 2;
  int queue_depth = 4;         // batches decoded ahead of the consumer
  int prefetch_shards = 2;     // distinct shards acquired ahead of the workers
  int fetchers = 2;            // prefetch threads: shards acquired (downloaded) at once
  double fetch_timeout_s = 300;  // per shard acquisition
  // When record checksums are checked (shard.h). kOncePerFile: a shard file
  // this process has verified in full (by every record, or as a download
  // matching index.json) is not hashed again while its identity holds
  // (Note [Verify once per file]). KILN_DATA_VERIFY_EVERY_READ=1 forces
  // kEveryRead for every loader.
  VerifyPolicy verify = VerifyPolicy::kOncePerFile;
  // Where batch buffers are recycled (Note [Recycled batch buffers]). Pass
  // one pool to every epoch's loader so a new epoch starts with warm
  // buffers instead of faulting in fresh ones; null: the loader makes its own.
  std::shared_ptr<BatchPool> batch_pool;
};

class Loader {
 public:
  // `cache` must outlive the loader. Starts the threads.
  Loader(ShardCache* cache, DatasetIndex index, LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Number of batches this rank yields in the epoch (the last may be short).
  std::uint64_t num_batches() const { return num_batches_; }

  // The pool this loader's batches return their buffers to (for its stats).
  const BatchPool& batch_pool() const { return *pool_; }

  // Batches next() built itself while it would have waited (Note [The
  // consumer helps] in loader.cc). Call from the consumer's thread.
  std::uint64_t built_by_consumer() const { return built_by_consumer_; }

  // The next batch in order; std::nullopt at the end of the epoch. Blocks up
  // to `deadline` (DeadlineExceeded). DataLoss / ResourceExhausted / ... from
  // the cache or a corrupt shard, naming it. Call from one thread.
  Result<std::optional<Batch>> next(Deadline deadline);

 private:
  // A leased, mapped shard. When the last batch using it lets go, its reader
  // is parked in the cache's mappings() for the next epoch, and then the
  // lease is released (Note [Warm shard mappings]).
  struct OpenShard {
    OpenShard(ShardLease l, std::unique_ptr<ShardReader> r, MappedShards* p)
        : lease(std::move(l)), reader(std::move(r)), park(p) {}
    ~OpenShard() { park->put(std::move(reader)); }
    OpenShard(const OpenShard&) = delete;
    OpenShard& operator=(const OpenShard&) = delete;
    ShardLease lease;  // first: released last
    std::unique_ptr<ShardReader> reader;
    MappedShards* park;
  };
  struct Slot {
    std::shared_ptr<OpenShard> shard;
    std::uint64_t first_batch = 0;  // first batch that may need it
    std::uint64_t last_batch = 0;   // last batch that may need it
  };
  // Note [Shard plan]: a shard and the batches of this rank that may need it.
  struct Planned {
    std::size_t shard;
    std::uint64_t first_batch, last_batch;
  };

  std::vector<Planned> make_plan() const;
  void prefetch_loop();
  // A worker's buffers for build(), reused from batch to batch.
  struct Scratch;
  void worker_loop();
  // Claims the next batch to build where the queue bound allows one (sets
  // *wake_prefetcher when a waiting prefetcher should look again). REQUIRES(mu_).
  std::optional<std::uint64_t> claim_locked(bool* wake_prefetcher);
  // Builds a claimed batch into ready_, waking the consumer if it is the
  // one it waits for; on error fails the loader and returns false.
  bool build_and_park(std::uint64_t number, Scratch* scratch);
  // Whether every shard batch `batch` may read is open. REQUIRES(mu_).
  bool shards_open_locked(std::uint64_t batch) const;
  Result<Batch> build(std::uint64_t number, Scratch* scratch);
  void wake_all();
  // The open shard, for a worker building `batch`: waits for the prefetcher
  // where it is about to open it, else opens it here.
  Result<std::shared_ptr<OpenShard>> shard_for(std::size_t shard, std::uint64_t batch);
  // Acquires and opens `shard` (slow I/O, no lock held) and inserts it.
  Result<std::shared_ptr<OpenShard>> open_shard(std::size_t shard, std::uint64_t first_batch,
                                                std::uint64_t last_batch);
  std::uint64_t batch_samples(std::uint64_t number) const;
  // Note [Sampler windows ahead]: the shuffle window holding the last sample
  // of batch `number`, and the first batch whose last sample lies in window
  // `win` or later.
  std::uint64_t window_of_batch(std::uint64_t number) const;
  std::uint64_t first_batch_in_window(std::uint64_t win) const;
  std::size_t ready_slot(std::uint64_t number) const {
    return static_cast<std::size_t>(number % static_cast<std::uint64_t>(options_.queue_depth));
  }
  void fail(Status s);

  ShardCache* cache_;
  DatasetIndex index_;
  LoaderOptions options_;
  RankSampler sampler_;
  std::uint64_t num_batches_;
  std::shared_ptr<BatchPool> pool_;
  std::vector<Planned> plan_;                             // by first_batch; immutable
  std::unordered_map<std::size_t, std::size_t> plan_of_;  // shard -> index in plan_; immutable
  std::vector<std::uint64_t> plan_reach_;  // max last_batch of plan_[0..i]; immutable
  std::uint64_t last_window_ = 0;          // Note [Sampler windows ahead]; immutable
  std::unique_ptr<Scratch> consumer_scratch_;  // next()'s, when it builds a batch
  std::uint64_t built_by_consumer_ = 0;        // next()'s thread only

  std::mutex mu_;
  // Note [Who wakes whom]: one condition variable per kind of waiter, so a
  // batch made or taken wakes only the thread that can use it (notify_all on
  // one variable cost a context switch per thread per batch, ~40% of an
  // epoch of 784 B samples in batches of 64).
  std::condition_variable ready_cv_;     // the consumer: batch consumer_next_ is ready, or error
  std::condition_variable space_cv_;     // workers: a queue slot is free, or stop
  std::condition_variable shard_cv_;     // workers in shard_for: a prefetcher opened one, or stop
  std::condition_variable prefetch_cv_;  // prefetchers: next_to_build_ passed prefetch_wake_at_
  bool stop_ = false;                               // GUARDED_BY(mu_)
  Status error_;                                    // GUARDED_BY(mu_), first error
  std::uint64_t next_to_build_ = 0;                 // GUARDED_BY(mu_)
  std::uint64_t consumer_next_ = 0;                 // GUARDED_BY(mu_)
  // Built batches by number: a ring of queue_depth slots, batch k in slot k %
  // queue_depth. claim_locked() hands out only numbers below consumer_next_ +
  // queue_depth, so the batches alive in it never share a slot.
  std::vector<std::optional<Batch>> ready_;         // GUARDED_BY(mu_)
  std::unordered_map<std::size_t, Slot> open_;      // GUARDED_BY(mu_)
  std::size_t next_plan_ = 0;                       // GUARDED_BY(mu_), next plan_ entry to claim
  std::vector<bool> plan_opened_;                   // GUARDED_BY(mu_), per plan_ entry
  std::uint64_t prefetch_wake_at_ = UINT64_MAX;     // GUARDED_BY(mu_), see prefetch_cv_
  std::uint64_t next_window_ = 1;  // GUARDED_BY(mu_), next to prepare (> last_window_: none)
  std::vector<std::thread> threads_;
};

}  // namespace kiln::data
