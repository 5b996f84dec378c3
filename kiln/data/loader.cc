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
constexpr std::size_t kPrefetchBytes = 4096;  // Note [Prefetch the head of a large record]

// Note [Loader threads yield to the consumer]: next() wakes a worker to
// build the batch that now fits the queue. Under the default policy the
// woken worker preempts the consumer (wakeup preemption) on a busy host, and
// the training step stalls for a whole batch build although its batch was
// ready. SCHED_BATCH threads never preempt on wakeup; they still get their
// fair share of CPU. Best effort: a failure leaves the default policy.
//
// Also names the thread after its job (as `top -H` and `perf --comm` show it).
void yield_on_wakeup(const char* name) {
  sched_param param{};
  param.sched_priority = 0;
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
  (void)pthread_setname_np(pthread_self(), name);
}

// A plain loop, not std::equal: that becomes a call to glibc's memcmp,
// whose AVX-512 short path (a masked 32-byte load) cost ~30% of a decode
// thread's time on 784 B samples on the 2-vCPU VM (perf, call graphs).
bool same_shape(const std::vector<std::int64_t>& a, std::span<const std::int64_t> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t d = 0; d < a.size(); ++d) {
    if (a[d] != b[d]) return false;
  }
  return true;
}

// Note [One layout per batch]: decode_sample_view() parses every record
// field by field (length prefixes, tensor rank and dims, bounds checks);
// for 784 B samples that bookkeeping cost about as much as the copy. How a
// record parses depends only on its length and its structural bytes (the
// length prefix of a bytes field, a tensor's rank and dims); the rest is
// field data (an int64's value, a payload). So the batch's first record is
// decoded in full and its layout kept: where each field's data lies and
// what its structural bytes are. A later record of the same length whose
// structural bytes are the same would decode to views at the same offsets
// with the same shapes, so its fields are copied from those offsets
// without decoding; any other record takes the full decode, with its
// checks and errors.
class RecordLayout {
 public:
  // Learns the layout of `record`, which `views` (decode_sample_view's
  // output for it) describe.
  void learn(std::span<const std::uint8_t> record, const std::vector<FieldView>& views) {
    bytes_ = record.size();
    data_begin_.clear();
    data_len_.clear();
    fixed_.clear();
    std::size_t pos = 0;
    for (const FieldView& v : views) {
      std::size_t begin = pos, len = 8;  // an int64 field: its 8 bytes, nothing structural
      if (v.kind != FieldKind::kInt64) {
        begin = static_cast<std::size_t>(v.data.data() - record.data());
        len = v.data.size();
        for (std::size_t b = pos; b < begin; ++b) fixed_.push_back({b, record[b]});
      }
      data_begin_.push_back(begin);
      data_len_.push_back(len);
      pos = begin + len;
    }
  }

  // Whether `record` decodes as the learned one did (same fields at the same
  // offsets, same shapes).
  bool matches(std::span<const std::uint8_t> record) const {
    if (record.size() != bytes_ || data_begin_.empty()) return false;
    for (const auto& [at, byte] : fixed_) {
      if (record[at] != byte) return false;
    }
    return true;
  }

  std::span<const std::uint8_t> field(std::span<const std::uint8_t> record, std::size_t f) const {
    return record.subspan(data_begin_[f], data_len_[f]);
  }

 private:
  std::size_t bytes_ = 0;
  std::vector<std::size_t> data_begin_, data_len_;           // per field
  std::vector<std::pair<std::size_t, std::uint8_t>> fixed_;  // structural bytes
};

}  // namespace

struct Loader::Scratch {
  struct Where {
    const ShardReader* reader;
    std::uint64_t record;
    std::size_t shard;
    std::span<const std::uint8_t> extent;  // for prefetching only (ShardReader::extent)
  };
  std::vector<Where> where;
  std::vector<std::pair<std::size_t, std::shared_ptr<OpenShard>>> held;  // usually 1-2 shards
  std::vector<FieldView> sample;
  std::vector<std::size_t> stride;  // bytes per sample of each fixed-size column
  RecordLayout layout;              // of the batch's first sample
};

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
  ready_.resize(static_cast<std::size_t>(options_.queue_depth));
  plan_ = make_plan();
  for (std::size_t i = 0; i < plan_.size(); ++i) plan_of_.emplace(plan_[i].shard, i);
  plan_opened_.assign(plan_.size(), false);
  plan_reach_.resize(plan_.size());
  for (std::size_t i = 0; i < plan_.size(); ++i) {
    plan_reach_[i] = std::max(plan_[i].last_batch, i > 0 ? plan_reach_[i - 1] : 0);
  }
  consumer_scratch_ = std::make_unique<Scratch>();
  // Note [Sampler windows ahead]: only where the batches in flight and the
  // prepared window fit the sampler's cache of windows together.
  const std::uint64_t w = sampler_.order().window_size();
  const std::uint64_t in_flight = static_cast<std::uint64_t>(options_.queue_depth + 1) *
                                  options_.batch_size * static_cast<std::uint64_t>(options_.world);
  if (num_batches_ > 0 && w > 1 && w >= 2 * in_flight) {
    next_window_ = sampler_.position(0) / w;
    last_window_ = window_of_batch(num_batches_ - 1);
  }
  for (int i = 0; i < std::max(1, options_.fetchers); ++i) {
    threads_.emplace_back([this] { prefetch_loop(); });
  }
  for (int i = 0; i < options_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_all();
  for (auto& t : threads_) t.join();
}

void Loader::wake_all() {
  ready_cv_.notify_all();
  space_cv_.notify_all();
  shard_cv_.notify_all();
  prefetch_cv_.notify_all();
}

void Loader::fail(Status s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.is_ok()) error_ = std::move(s);
    stop_ = true;
  }
  wake_all();
}

std::uint64_t Loader::batch_samples(std::uint64_t number) const {
  std::uint64_t begin = number * options_.batch_size;
  return std::min(options_.batch_size, sampler_.remaining() - begin);
}

std::uint64_t Loader::window_of_batch(std::uint64_t number) const {
  const std::uint64_t last = std::min(sampler_.remaining(), (number + 1) * options_.batch_size) - 1;
  return sampler_.position(last) / sampler_.order().window_size();
}

std::uint64_t Loader::first_batch_in_window(std::uint64_t win) const {
  std::uint64_t lo = 0, hi = num_batches_;  // window_of_batch is nondecreasing
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    if (window_of_batch(mid) >= win) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Note [Shard plan]: the prefetcher needs, for each shard, the first and
// last batch of this rank that may read it: to open shards in the order they
// are needed, and to release each when no later batch needs it. Walking the
// order sample by sample for that cost more than the epoch itself for small
// samples (a lock per sample, and the walk fell behind the workers, which
// then opened shards themselves, twice or three times over). The order's
// structure gives it per shard instead (EpochOrder::shard_spans): a superset
// by at most the windows at its ends, so a shard may be held a little longer
// than needed, and, with world > 1, a shard none of whose samples fall on
// this rank may be fetched.
std::vector<Loader::Planned> Loader::make_plan() const {
  std::vector<Planned> plan;
  const std::uint64_t total = sampler_.remaining();
  if (total == 0) return plan;
  const auto c = sampler_.position(0);  // position of this rank's first sample
  const auto w = static_cast<std::uint64_t>(options_.world);
  for (const auto& span : sampler_.order().shard_spans()) {
    if (span.end <= c) continue;
    // This rank's samples k sit at c + k * w: the k with begin <= pos < end.
    std::uint64_t k0 = span.begin > c ? (span.begin - c + w - 1) / w : 0;
    std::uint64_t k1 = (span.end - 1 - c) / w;  // last k with c + k * w <= end - 1
    if (k0 >= total || k0 > k1) continue;
    k1 = std::min(k1, total - 1);
    plan.push_back({span.shard, k0 / options_.batch_size, k1 / options_.batch_size});
  }
  std::stable_sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    return a.first_batch < b.first_batch;
  });
  return plan;
}

Result<std::shared_ptr<Loader::OpenShard>> Loader::shard_for(std::size_t shard,
                                                             std::uint64_t batch) {
  std::uint64_t first = batch, last = batch;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto planned = plan_of_.find(shard);
    while (true) {
      auto it = open_.find(shard);
      if (it != open_.end()) {
        it->second.last_batch = std::max(it->second.last_batch, batch);
        return it->second.shard;
      }
      if (stop_) return cancelled("loader stopped");
      // A prefetcher opens it (they never wait to open what a claimed batch
      // needs): wait rather than map and check it a second time.
      if (planned == plan_of_.end() || plan_opened_[planned->second] ||
          batch < plan_[planned->second].first_batch) {
        break;  // not (or no longer) a prefetcher's to open: never wait for it
      }
      shard_cv_.wait_for(lock, kPoll);
    }
    if (planned != plan_of_.end()) {  // released early: should not happen, but is safe
      first = plan_[planned->second].first_batch;
      last = std::max(batch, plan_[planned->second].last_batch);
    }
  }
  return open_shard(shard, first, last);
}

Result<std::shared_ptr<Loader::OpenShard>> Loader::open_shard(std::size_t shard,
                                                              std::uint64_t first_batch,
                                                              std::uint64_t last_batch) {
  const ShardInfo& info = index_.shards[shard];
  KILN_ASSIGN_OR_RETURN(ShardLease lease,
                        cache_->acquire(info, Deadline::after_seconds(options_.fetch_timeout_s)));
  // Note [Warm shard mappings]: the mapping an earlier epoch parked, when
  // the leased file is still the one it maps; else map it now.
  std::unique_ptr<ShardReader> reader = cache_->mappings().take(lease.path(), options_.verify);
  if (reader == nullptr) {
    KILN_ASSIGN_OR_RETURN(ShardReader opened, ShardReader::open(lease.path(), options_.verify));
    reader = std::make_unique<ShardReader>(std::move(opened));
  }
  if (reader->records() != info.num_samples) {
    return data_loss(fmt::format("shard {}: holds {} records, index.json says {}", info.file,
                                 reader->records(), info.num_samples));
  }
  auto open = std::make_shared<OpenShard>(std::move(lease), std::move(reader), &cache_->mappings());
  std::lock_guard<std::mutex> lock(mu_);
  // A worker and the prefetcher may both have opened it: the first insert wins.
  auto [it, inserted] = open_.try_emplace(shard, Slot{open, first_batch, last_batch});
  it->second.last_batch = std::max(it->second.last_batch, last_batch);
  return it->second.shard;
}

// Note [Sampler windows ahead]: the decode threads reach a new shuffle window
// together, and the first to ask shuffles it (~0.25 ms for 20 000 positions
// on the 2-vCPU VM) while the others wait for it (Note [Windows computed
// outside the lock] in sampler.cc). The prefetch threads, idle between
// shards, shuffle each window before the decode threads need it. A window
// the batches in flight need (the batch queue_depth ahead of the next to
// build reaches it) comes first; then the shards claimed batches need; then
// the window after that one, a whole window ahead of the decode threads.
// Preparing only the window in flight left the threads ~8 batches (~50 µs of
// 784 B samples) of lead for a ~250 µs shuffle: every decode thread waited
// for the rest of it at each window, with one CPU idle. Only where the
// sampler's cache holds the windows of the batches in flight and the
// prepared ones together (windows of at least twice the positions in
// flight: the batches in flight span at most two windows, plus the one
// ahead, within EpochOrder's four), or preparing would evict a window still
// being read.
void Loader::prefetch_loop() {
  yield_on_wakeup("kiln-prefetch");
  const auto depth = static_cast<std::uint64_t>(options_.queue_depth);
  std::unique_lock<std::mutex> lock(mu_);
  // Shuffles window next_window_ with the lock released.
  auto prepare_next_window = [&] {
    const std::uint64_t win = next_window_++;
    lock.unlock();
    sampler_.order().prepare(win * sampler_.order().window_size());
    lock.lock();
  };
  while (!stop_) {
    std::uint64_t wake_at = UINT64_MAX;
    std::uint64_t in_flight_window = 0;  // the window of the batch queue_depth ahead
    const bool windows_left = next_window_ <= last_window_;
    if (windows_left) {
      in_flight_window = window_of_batch(std::min(num_batches_ - 1, next_to_build_ + depth));
      if (next_window_ <= in_flight_window) {
        prepare_next_window();
        continue;
      }
    }
    if (next_plan_ < plan_.size()) {
      // Claim plan entries in order. A shard a claimed batch may need is
      // opened at once; later ones only while fewer than prefetch_shards are
      // open ahead of the workers (plus those other fetchers are opening).
      bool open_now = plan_[next_plan_].first_batch < next_to_build_;
      if (!open_now) {
        std::uint64_t first_ahead = plan_[next_plan_].first_batch;
        int ahead = 0;
        for (const auto& [shard, slot] : open_) {
          if (slot.first_batch < next_to_build_) continue;
          ++ahead;
          first_ahead = std::min(first_ahead, slot.first_batch);
        }
        open_now = ahead < options_.prefetch_shards;
        // Nothing changes for us until a worker claims batch first_ahead:
        // the first ahead shard is no longer ahead, or the entry is needed now.
        wake_at = std::min(wake_at, first_ahead);
      }
      if (open_now) {
        const std::size_t i = next_plan_++;
        lock.unlock();
        const Planned& p = plan_[i];
        auto r = open_shard(p.shard, p.first_batch, p.last_batch);
        if (!r) return fail(r.status());
        lock.lock();
        plan_opened_[i] = true;
        shard_cv_.notify_all();
        continue;
      }
    }
    if (windows_left) {
      if (next_window_ == in_flight_window + 1) {  // the window ahead
        prepare_next_window();
        continue;
      }
      // Ahead once next_to_build_ + depth reaches the window before it.
      const std::uint64_t first = first_batch_in_window(next_window_ - 1);
      wake_at = std::min(wake_at, first > depth ? first - depth - 1 : 0);
    } else if (next_plan_ >= plan_.size()) {
      return;  // every shard opened, every window prepared
    }
    prefetch_wake_at_ = std::min(prefetch_wake_at_, wake_at);
    prefetch_cv_.wait_for(lock, kPoll);
  }
}

std::optional<std::uint64_t> Loader::claim_locked(bool* wake_prefetcher) {
  if (stop_ || next_to_build_ >= num_batches_ ||
      next_to_build_ >= consumer_next_ + static_cast<std::uint64_t>(options_.queue_depth)) {
    return std::nullopt;
  }
  std::uint64_t number = next_to_build_++;
  if (next_to_build_ > prefetch_wake_at_) {
    *wake_prefetcher = true;
    prefetch_wake_at_ = UINT64_MAX;  // a waiting prefetcher sets it again
  }
  return number;
}

bool Loader::build_and_park(std::uint64_t number, Scratch* scratch) {
  auto batch = build(number, scratch);
  scratch->held.clear();  // the batch holds copies; the shards may go
  if (!batch) {
    fail(batch.status());
    return false;
  }
  bool wake_consumer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready_[ready_slot(number)].emplace(std::move(batch).value());
    wake_consumer = number == consumer_next_;
  }
  if (wake_consumer) ready_cv_.notify_one();
  return true;
}

void Loader::worker_loop() {
  yield_on_wakeup("kiln-decode");
  Scratch scratch;
  while (true) {
    std::optional<std::uint64_t> number;
    bool wake_prefetcher = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (!(number = claim_locked(&wake_prefetcher)) && !stop_ &&
             next_to_build_ < num_batches_) {
        space_cv_.wait_for(lock, kPoll);
      }
      if (!number) return;  // stopped, or every batch claimed
    }
    if (wake_prefetcher) prefetch_cv_.notify_all();
    if (!build_and_park(*number, &scratch)) return;
  }
}

// Note [The consumer helps]: the shards a batch may read (its plan entries)
// are all open, so building it waits for no download and no prefetcher.
bool Loader::shards_open_locked(std::uint64_t batch) const {
  // plan_ is sorted by first_batch; plan_reach_[i] is the largest last_batch
  // of plan_[0..i], so the scan back stops at the first entry before which
  // no entry reaches `batch`.
  auto end = std::upper_bound(plan_.begin(), plan_.end(), batch,
                              [](std::uint64_t b, const Planned& p) { return b < p.first_batch; });
  for (auto i = static_cast<std::size_t>(end - plan_.begin()); i-- > 0 && plan_reach_[i] >= batch;) {
    if (plan_[i].last_batch >= batch && !open_.contains(plan_[i].shard)) return false;
  }
  return true;
}

Result<Batch> Loader::build(std::uint64_t number, Scratch* scratch) {
  Batch b = pool_->make_for_overwrite(index_.schema);
  b.number = number;
  const std::uint64_t n = batch_samples(number);
  const std::uint64_t first = number * options_.batch_size;
  for (Column& c : b.columns) {
    if (c.kind == FieldKind::kBytes) {
      c.data.clear();  // appended to: make_for_overwrite() kept its size
      c.offsets.push_back(0);
    }
  }
  b.sample_ids.resize(n);
  sampler_.peek_many(first, n, b.sample_ids.data());
  // Note [Prefetch the records of a batch]: resolve every sample to (reader,
  // record, extent) first, touching no record, so that the copy loop below
  // can start loading a whole record kAhead samples before it decodes it.
  // Shuffled records are cache misses, and for small samples (784 B) the
  // miss, not the copy, was the largest cost per sample. Prefetching only a
  // record's first two lines left the copy (memmove) missing on the other
  // eleven: 44% of the decode threads' time; every line, with the extent
  // taken from the offset table in the first pass (no dependent load in
  // the copy loop), raised the 784 B epoch from ~3.1 to ~3.7 GB/s (A/B,
  // docs/perf.md).
  auto& where = scratch->where;
  auto& held = scratch->held;
  where.resize(n);
  held.clear();
  std::size_t cur = SIZE_MAX;
  std::uint64_t cur_first = 0, cur_end = 0;
  const ShardReader* cur_reader = nullptr;
  for (std::uint64_t j = 0; j < n; ++j) {
    std::uint64_t id = b.sample_ids[j];
    if (id < cur_first || id >= cur_end) {
      cur = index_.shard_of(id);
      cur_first = index_.shards[cur].first_sample;
      cur_end = cur_first + index_.shards[cur].num_samples;
      cur_reader = nullptr;
      for (const auto& [shard, open] : held) {
        if (shard == cur) cur_reader = open->reader.get();
      }
      if (cur_reader == nullptr) {
        // Consecutive samples mostly share a shard or two: look it up (under
        // mu_) only when it is not one this batch already holds.
        KILN_ASSIGN_OR_RETURN(auto open, shard_for(cur, number));
        cur_reader = open->reader.get();
        held.emplace_back(cur, std::move(open));
      }
    }
    // Note [Prefetch the offset table]: a shuffled record's offset-table
    // entry is a cache miss too (the table of a 16 MiB shard of 784 B
    // records is ~160 KiB, and the records streaming through the caches
    // evict it). Read in the loop below right after it was looked up, each
    // entry's miss came one after another: 18% of the build loop's samples
    // sat on that load (perf, 784 B epochs). So all of a batch's entries are
    // requested first, and their misses overlap.
    cur_reader->prefetch_extent(id - cur_first);
    where[j] = {cur_reader, id - cur_first, cur, {}};
  }
  for (Scratch::Where& w : where) {
    // Note [Prefetch the head of a large record]: a record's lines are
    // loaded ahead only up to kPrefetchBytes. Past that the copy reads it
    // sequentially and the hardware prefetcher streams it; prefetching all
    // of a 64 KiB record eight records ahead issued 8 192 prefetches that
    // waited for free miss buffers in the build loop (9% of an epoch of
    // 64 KiB samples in perf, against 19% in the copy itself).
    const std::span<const std::uint8_t> extent = w.reader->extent(w.record);
    w.extent = extent.first(std::min(extent.size(), kPrefetchBytes));
  }
  // Note [Collate with plain stores]: int64 and tensor fields have one size
  // per sample for the whole batch (a tensor's shape must match the first
  // sample's), so each such column is sized once, for n samples, and sample
  // j's bytes are stored at j times that size: one memcpy per field, no
  // per-sample capacity check or size update as vector::insert does. The
  // column keeps the recycled batch's size (BatchPool::make_for_overwrite),
  // so resize() fills nothing from one full batch to the next. Bytes fields
  // vary in size and are still appended.
  auto& stride = scratch->stride;
  stride.assign(b.columns.size(), 0);
  constexpr std::uint64_t kAhead = 8;
  for (std::uint64_t j = 0; j < std::min(n, kAhead); ++j) ShardReader::prefetch(where[j].extent);
  std::vector<FieldView>& sample = scratch->sample;
  for (std::uint64_t j = 0; j < n; ++j) {
    if (j + kAhead < n) ShardReader::prefetch(where[j + kAhead].extent);
    const std::uint64_t id = b.sample_ids[j];
    // record() checked the record (or this process verified the whole file
    // before, per options_.verify): decode it in place and copy each field
    // once, into the batch.
    KILN_ASSIGN_OR_RETURN(auto record, where[j].reader->record(where[j].record));
    if (j > 0 && scratch->layout.matches(record)) {  // Note [One layout per batch]
      for (std::size_t f = 0; f < b.columns.size(); ++f) {
        Column& c = b.columns[f];
        const std::span<const std::uint8_t> v = scratch->layout.field(record, f);
        switch (c.kind) {
          case FieldKind::kBytes:
            c.data.insert(c.data.end(), v.begin(), v.end());
            c.offsets.push_back(c.data.size());
            break;
          case FieldKind::kInt64:
            std::memcpy(c.data.data() + j * 8, v.data(), 8);
            break;
          case FieldKind::kTensor:  // the shape of sample 0, so stride[f] bytes
            if (stride[f] > 0) std::memcpy(c.data.data() + j * stride[f], v.data(), stride[f]);
            break;
        }
      }
      continue;
    }
    if (Status s = decode_sample_view(index_.schema, record, &sample); !s.is_ok()) {
      return s.with_context(
          fmt::format("shard {} sample {}", index_.shards[where[j].shard].file, id));
    }
    if (j == 0) scratch->layout.learn(record, sample);
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
        case FieldKind::kInt64:
          if (j == 0) c.data.resize(n * 8);
          std::memcpy(c.data.data() + j * 8, &v.i64, 8);
          break;
        case FieldKind::kTensor:
          if (j == 0) {
            c.shape.assign(v.shape().begin(), v.shape().end());
            stride[f] = v.data.size();
            c.data.resize(n * stride[f]);
          } else if (!same_shape(c.shape, v.shape())) {
            return invalid_argument(fmt::format(
                "batch {}: tensor '{}' of sample {} has another shape than sample {}; ragged "
                "tensors are not collated (store them as bytes)", number, c.name, id,
                b.sample_ids[0]));
          }
          // Same shape and dtype as sample 0: the same size.
          if (stride[f] > 0) std::memcpy(c.data.data() + j * stride[f], v.data.data(), stride[f]);
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
    if (auto& slot = ready_[ready_slot(consumer_next_)]; slot.has_value()) {
      Batch b = std::move(*slot);
      slot.reset();
      ++consumer_next_;
      // Release shards no remaining batch is known to need (their cache
      // leases go with them, making them evictable; their mappings are
      // parked for the next epoch, Note [Warm shard mappings]), after unlock.
      std::vector<std::shared_ptr<OpenShard>> released;
      for (auto e = open_.begin(); e != open_.end();) {
        if (e->second.last_batch < consumer_next_) {
          released.push_back(std::move(e->second.shard));
          e = open_.erase(e);
        } else {
          ++e;
        }
      }
      lock.unlock();
      space_cv_.notify_one();  // one queue slot is free
      released.clear();
      b.wait_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      return std::optional<Batch>(std::move(b));
    }
    // Note [The consumer helps]: a consumer faster than the workers used to
    // sleep here once per batch and be woken by the worker that finished
    // it: two context switches and two futex calls per batch, which on the
    // 2-vCPU VM (paravirtualised, where a syscall is a world switch) cost
    // about as much as building a batch of 64 784 B samples. Instead the
    // consumer builds the next unclaimed batch itself, where that cannot
    // block (every shard it may read is open: no download, no prefetcher
    // to wait for) and the queue bound allows one more. Batches are the
    // same and come out in the same order; a consumer that is slower than
    // the workers never gets here.
    if (shards_open_locked(next_to_build_)) {
      bool wake_prefetcher = false;
      if (auto number = claim_locked(&wake_prefetcher)) {
        lock.unlock();
        if (wake_prefetcher) prefetch_cv_.notify_all();
        const bool ok = build_and_park(*number, consumer_scratch_.get());
        lock.lock();
        if (ok) ++built_by_consumer_;
        continue;
      }
    }
    if (deadline.expired()) {
      return deadline_exceeded(fmt::format("loader rank {}: batch {} not ready before the deadline "
                                           "(shard downloads too slow?)", options_.rank,
                                           consumer_next_));
    }
    ready_cv_.wait_for(lock, std::min<Clock::duration>(kPoll, deadline.remaining()));
  }
}

}  // namespace kiln::data
