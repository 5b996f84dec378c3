#include "kiln/data/loader.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "kiln/base/knobs.h"

namespace kiln::data {
namespace {

const Knob<bool> kVerifyEveryRead{
    "KILN_DATA_VERIFY_EVERY_READ", false,
    "check every record's xxh3 on every read, not once per shard file per process "
    "(LoaderOptions::verify; Note [Verify once per file])"};

constexpr auto kPoll = std::chrono::milliseconds(100);  // bounds every wait so stop_ is seen

// Note [Loader threads yield to the consumer]: next() wakes a worker to
// build the batch that now fits the queue. Under the default policy the
// woken worker preempts the consumer (wakeup preemption) on a busy host, and
// the training step stalls for a whole batch build although its batch was
// ready. SCHED_BATCH threads never preempt on wakeup; they still get their
// fair share of CPU. Best effort: a failure leaves the default policy.
void yield_on_wakeup() {
  sched_param param{};
  param.sched_priority = 0;
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
}

}  // namespace

Loader::Loader(ShardCache* cache, DatasetIndex index, LoaderOptions options)
    : cache_(cache), index_(std::move(index)), options_(options),
      sampler_(index_, options_.sampler, options_.rank, options_.world, options_.state) {
  options_.batch_size = std::max<std::uint64_t>(1, options_.batch_size);
  options_.workers = std::max(1, options_.workers);
  options_.queue_depth = std::max(1, options_.queue_depth);
  if (kVerifyEveryRead.get()) options_.verify = VerifyPolicy::kEveryRead;
  num_batches_ = (sampler_.remaining() + options_.batch_size - 1) / options_.batch_size;
  // Batches alive at once: the queue, one per worker in the making, the
  // consumer's, and one it may still hold while asking for the next.
  pool_ = options_.batch_pool != nullptr
              ? options_.batch_pool
              : BatchPool::create(
                    static_cast<std::size_t>(options_.queue_depth + options_.workers + 2));
  threads_.emplace_back([this] { prefetch_loop(); });
  for (int i = 0; i < options_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Loader::fail(Status s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.is_ok()) error_ = std::move(s);
    stop_ = true;
  }
  cv_.notify_all();
}

std::uint64_t Loader::batch_samples(std::uint64_t number) const {
  std::uint64_t begin = number * options_.batch_size;
  return std::min(options_.batch_size, sampler_.remaining() - begin);
}

Result<std::shared_ptr<Loader::OpenShard>> Loader::open_shard(std::size_t shard,
                                                              std::uint64_t batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(shard);
    if (it != open_.end()) {
      it->second.last_batch = std::max(it->second.last_batch, batch);
      return it->second.shard;
    }
  }
  // Slow I/O outside the lock. Two threads may race to open the same shard:
  // the cache makes the second a hit, and the first insert wins.
  const ShardInfo& info = index_.shards[shard];
  KILN_ASSIGN_OR_RETURN(ShardLease lease,
                        cache_->acquire(info, Deadline::after_seconds(options_.fetch_timeout_s)));
  KILN_ASSIGN_OR_RETURN(ShardReader reader, ShardReader::open(lease.path(), options_.verify));
  if (reader.records() != info.num_samples) {
    return data_loss(fmt::format("shard {}: holds {} records, index.json says {}", info.file,
                                 reader.records(), info.num_samples));
  }
  auto open = std::make_shared<OpenShard>(
      OpenShard{std::move(lease), std::make_unique<ShardReader>(std::move(reader))});
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = open_.try_emplace(shard, Slot{open, batch});
  it->second.last_batch = std::max(it->second.last_batch, batch);
  return it->second.shard;
}

void Loader::prefetch_loop() {
  yield_on_wakeup();
  std::uint64_t total = sampler_.remaining();
  std::size_t last_shard = SIZE_MAX;
  for (std::uint64_t k = 0; k < total; ++k) {
    std::size_t shard = index_.shard_of(sampler_.peek(k));
    if (shard == last_shard) continue;
    std::uint64_t batch = k / options_.batch_size;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (k > 0) {  // the previous run of samples ended: its shard is needed up to here
        auto prev = open_.find(last_shard);
        if (prev != open_.end()) {
          prev->second.last_batch = std::max(prev->second.last_batch, (k - 1) / options_.batch_size);
        }
      }
      // Stay at most prefetch_shards distinct shards ahead of the consumer.
      while (!stop_) {
        auto ahead = std::count_if(open_.begin(), open_.end(), [&](const auto& e) {
          return e.second.last_batch >= consumer_next_ && e.first != shard;
        });
        if (ahead < options_.prefetch_shards || open_.count(shard)) break;
        cv_.wait_for(lock, kPoll);
      }
      if (stop_) return;
    }
    last_shard = shard;
    auto r = open_shard(shard, batch);
    if (!r) return fail(r.status());
  }
}

void Loader::worker_loop() {
  yield_on_wakeup();
  while (true) {
    std::uint64_t number;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_ && next_to_build_ < num_batches_ &&
             next_to_build_ >= consumer_next_ + static_cast<std::uint64_t>(options_.queue_depth)) {
        cv_.wait_for(lock, kPoll);
      }
      if (stop_ || next_to_build_ >= num_batches_) return;
      number = next_to_build_++;
    }
    auto batch = build(number);
    if (!batch) return fail(batch.status());
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(number, std::move(batch).value());
    }
    cv_.notify_all();
  }
}

Result<Batch> Loader::build(std::uint64_t number) {
  Batch b = pool_->make(index_.schema);
  b.number = number;
  std::uint64_t n = batch_samples(number);
  std::uint64_t first = number * options_.batch_size;
  for (Column& c : b.columns) {
    if (c.kind == FieldKind::kBytes) c.offsets.push_back(0);
  }
  b.sample_ids.reserve(n);
  std::vector<FieldView> sample;
  std::shared_ptr<OpenShard> open;
  std::size_t open_index = SIZE_MAX;
  for (std::uint64_t j = 0; j < n; ++j) {
    std::uint64_t id = sampler_.peek(first + j);
    b.sample_ids.push_back(id);
    std::size_t shard = index_.shard_of(id);
    // Consecutive samples mostly share a shard: look it up (under mu_) only
    // when it changes.
    if (shard != open_index) {
      KILN_ASSIGN_OR_RETURN(open, open_shard(shard, number));
      open_index = shard;
    }
    // record() checked the record (or this process verified the whole file
    // before, per options_.verify): decode it in place and copy each field
    // once, into the batch.
    KILN_ASSIGN_OR_RETURN(auto record, open->reader->record(id - index_.shards[shard].first_sample));
    if (Status s = decode_sample_view(index_.schema, record, &sample); !s.is_ok()) {
      return s.with_context(fmt::format("shard {} sample {}", index_.shards[shard].file, id));
    }
    for (std::size_t f = 0; f < sample.size(); ++f) {
      const FieldView& v = sample[f];
      Column& c = b.columns[f];
      switch (c.kind) {
        case FieldKind::kBytes:
          // Payloads are usually of similar size: size the column once from
          // the first instead of regrowing (and recopying) it. A recycled
          // column already has the capacity.
          if (j == 0) c.data.reserve(n * v.data.size());
          c.data.insert(c.data.end(), v.data.begin(), v.data.end());
          c.offsets.push_back(c.data.size());
          break;
        case FieldKind::kInt64: {
          if (j == 0) c.data.reserve(n * 8);
          const auto* p = reinterpret_cast<const std::uint8_t*>(&v.i64);
          c.data.insert(c.data.end(), p, p + 8);
          break;
        }
        case FieldKind::kTensor:
          if (j == 0) {
            c.shape.assign(v.shape().begin(), v.shape().end());
            c.data.reserve(n * v.data.size());
          } else if (!std::equal(c.shape.begin(), c.shape.end(), v.shape().begin(),
                                 v.shape().end())) {
            return invalid_argument(fmt::format(
                "batch {}: tensor '{}' of sample {} has another shape than sample {}; ragged "
                "tensors are not collated (store them as bytes)", number, c.name, id,
                b.sample_ids[0]));
          }
          c.data.insert(c.data.end(), v.data.begin(), v.data.end());
          break;
      }
    }
  }
  for (Column& c : b.columns) {
    if (c.kind == FieldKind::kTensor) c.shape.insert(c.shape.begin(), static_cast<std::int64_t>(n));
    if (c.kind == FieldKind::kInt64) c.shape = {static_cast<std::int64_t>(n)};
    if (c.kind == FieldKind::kBytes) c.shape = {static_cast<std::int64_t>(n)};
  }
  // Lockstep ranks: after batch `number`, every rank has consumed (number+1)
  // full batches of the global order.
  std::uint64_t step = (number + 1) * options_.batch_size * static_cast<std::uint64_t>(options_.world);
  b.state_after = {options_.state.epoch, std::min(index_.num_samples, options_.state.consumed + step)};
  return b;
}

Result<std::optional<Batch>> Loader::next(Deadline deadline) {
  auto t0 = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (!error_.is_ok()) return error_;
    if (consumer_next_ >= num_batches_) return std::optional<Batch>();
    auto it = ready_.find(consumer_next_);
    if (it != ready_.end()) {
      Batch b = std::move(it->second);
      ready_.erase(it);
      ++consumer_next_;
      // Release shards no remaining batch is known to need (their cache
      // leases go with them, making them evictable).
      std::erase_if(open_, [&](const auto& e) { return e.second.last_batch < consumer_next_; });
      lock.unlock();
      cv_.notify_all();
      b.wait_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      return std::optional<Batch>(std::move(b));
    }
    if (deadline.expired()) {
      return deadline_exceeded(fmt::format("loader rank {}: batch {} not ready before the deadline "
                                           "(shard downloads too slow?)", options_.rank,
                                           consumer_next_));
    }
    cv_.wait_for(lock, std::min<Clock::duration>(kPoll, deadline.remaining()));
  }
}

}  // namespace kiln::data
