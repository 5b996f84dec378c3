// `kiln bench data`: what the input pipeline costs, against baselines
// measured in the same run on the same bytes.
//
//   warm_vs_raw             a warm-cache epoch through the Loader (prefetch,
//                           decode, collate) in MB/s over a raw sequential
//                           read() of the same cached shard files (target ≥ 0.8)
//   cold_vs_raw_get         a first epoch from s3rver into an empty cache
//                           (download, verify, commit, decode) over plain
//                           sequential GETs of the same objects from the same
//                           server to a local file (target ≥ 0.8)
//   consumer_wait_fraction  a consumer that spends --consumer-ms per batch:
//                           mean Batch::wait_seconds after --warmup-batches,
//                           over that time (target < 0.02)
//   warm_vs_raw_small       warm_vs_raw again on --small-sample-bytes samples
//                           (Fashion-MNIST-sized, 784 B), where per-sample and
//                           per-batch costs, not bytes, dominate
//   warm_cpus_busy,         where the time went (both cases): CPU seconds of
//   raw_cpus_busy           the process per wall second during the warm
//                           epochs and during the raw passes, so a loader
//                           that sleeps (hand-offs, wake-ups) is told apart
//                           from one whose threads run but stall on memory
//   warm_sleeps_per_batch,  voluntary and involuntary context switches of
//   warm_preemptions_per_batch  the warm epochs per batch
// Samples are an int64 label and a uint8 tensor of --sample-bytes, like an
// image dataset. Fairness of the warm baseline (Note [A fair raw baseline]):
// both sides read the same cached files, once each per timed run, with the
// page cache warm (an untimed epoch first), on --workers threads, into
// batch-sized buffers as many as the loader's pool; the raw side only copies
// the bytes in file order, the loader also shuffles and collates into
// batches, and checks every record's framing. Record checksums follow the loader's
// default VerifyPolicy::kOncePerFile: the untimed epoch (or the cold
// download) verified every file, so timed warm epochs do not hash again;
// KILN_DATA_VERIFY_EVERY_READ=1 measures hashing every epoch.
// Each run times --warm-epochs epochs, each against the median of the raw
// passes right before and after it (Note [A stable raw baseline]); the
// ratios are medians over --runs of the per-run medians, so load from other
// processes cancels out as far as it can. The cold part starts s3rver on
// 127.0.0.1 (LocalS3Server) and is skipped where it is not installed.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/resource_usage.h"
#include "kiln/base/units.h"
#include "kiln/data/checksum.h"
#include "kiln/data/dataset_push.h"
#include "kiln/data/dataset_writer.h"
#include "kiln/data/loader.h"
#include "kiln/objstore/object_store.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/local_s3rver.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using data::DatasetIndex;

struct DataBenchArgs {
  std::string root = "/tmp/kiln-bench-data";
  std::string total = "256M";        // dataset size
  std::string sample_bytes = "64K";  // tensor bytes per sample
  std::string small_total = "64M";   // dataset size of the small-sample case
  std::string small_sample_bytes = "784";  // 28x28 uint8, as Fashion-MNIST; 0 skips
  double shard_mib = 16;
  std::uint64_t batch_size = 64;
  int workers = 2;
  int runs = 3;
  int warm_epochs = 5;  // timed warm epochs per run (Note [A stable raw baseline])
  int raw_passes = 3;   // raw passes before and after each of them
  double consumer_ms = 5;
  int warmup_batches = 5;
  // Within-shard shuffling; 0 (the default) spans one shard's samples. A
  // window across many shards makes every batch reopen them.
  std::uint64_t shuffle_window = 0;
  bool json = false;
  // Test-only (hidden): flips a byte of the first shard after writing it, so
  // a test can prove a corrupt dataset fails the run instead of timing it.
  bool inject_corruption = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::uint64_t dataset_bytes(const DatasetIndex& index) {
  std::uint64_t b = 0;
  for (const auto& sh : index.shards) b += sh.bytes;
  return b;
}

// Samples: an int64 label and an incompressible-looking uint8 tensor.
Result<DatasetIndex> write_dataset(const std::string& dir, std::uint64_t total,
                                   std::uint64_t sample_bytes, std::uint64_t shard_bytes) {
  data::Schema schema{{"label", data::FieldKind::kInt64, data::DType::kUInt8},
                      {"image", data::FieldKind::kTensor, data::DType::kUInt8}};
  KILN_ASSIGN_OR_RETURN(auto w,
                        data::DatasetWriter::create(dir, schema, {.shard_bytes = shard_bytes}));
  std::vector<std::uint8_t> payload(sample_bytes);
  std::uint32_t x = 12345;
  for (std::uint64_t i = 0; i * sample_bytes < total; ++i) {
    for (auto& b : payload) {
      x = x * 1664525u + 1013904223u;
      b = static_cast<std::uint8_t>(x >> 24);
    }
    KILN_RETURN_IF_ERROR(w.add({data::FieldValue::int64(static_cast<std::int64_t>(i)),
                                data::FieldValue::tensor(
                                    data::DType::kUInt8,
                                    {static_cast<std::int64_t>(sample_bytes)}, payload)}));
  }
  return w.finish();
}

// One epoch on one rank: wall seconds and the consumer's mean wait after
// warm-up. `consumer_ms` > 0 spends that long on each batch (a training step).
struct EpochResult {
  double seconds = 0;
  ResourceUsage usage;  // the whole process's CPU and context switches during the epoch
  std::uint64_t samples = 0;
  double mean_wait_s = 0;
  std::vector<double> waits_s;  // after warm-up, in batch order
};

Result<EpochResult> run_epoch(data::ShardCache* cache, const DatasetIndex& index,
                              const DataBenchArgs& a, double consumer_ms,
                              std::shared_ptr<data::BatchPool> pool) {
  // The default window: the samples of one shard.
  std::uint64_t window = a.shuffle_window > 0 ? a.shuffle_window : index.shards[0].num_samples;
  const ResourceUsage usage0 = ResourceUsage::of_process();
  auto t0 = std::chrono::steady_clock::now();
  data::Loader loader(cache, index,
                      {.sampler = {.seed = 1, .shuffle_window = window},
                       .batch_size = a.batch_size,
                       .workers = a.workers,
                       .queue_depth = 8,
                       .prefetch_shards = 2,
                       .batch_pool = std::move(pool)});
  EpochResult r;
  double waited = 0;
  std::uint64_t counted = 0;
  for (int n = 0;; ++n) {
    KILN_ASSIGN_OR_RETURN(auto batch, loader.next(Deadline::after_seconds(600)));
    if (!batch) break;
    r.samples += batch->sample_ids.size();
    if (n >= a.warmup_batches) {
      waited += batch->wait_seconds;
      r.waits_s.push_back(batch->wait_seconds);
      ++counted;
    }
    if (consumer_ms > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(consumer_ms));
    }
  }
  r.seconds = seconds_since(t0);
  r.usage = ResourceUsage::of_process() - usage0;
  r.mean_wait_s = counted > 0 ? waited / counted : 0;
  if (r.samples != index.num_samples) {
    return internal_error(
        fmt::format("bench data: epoch yielded {} of {} samples", r.samples, index.num_samples));
  }
  return r;
}

// Note [A fair raw baseline]: the warm epoch's bytes go from the page cache
// into batch buffers that `workers` threads fill at once, and the batches
// alive at a time (the pool: queue, one per worker, the consumer's) are far
// larger than the caches, so every byte is written to memory. The baseline
// does the same with the same parallelism: `threads` threads read() the same
// cached files (file i on thread i % threads), one batch's bytes per call,
// into a ring of as many batch-sized buffers as the loader's pool holds
// (touched before timing, as the loader's pool is warm from its untimed
// epoch). The old baseline, one thread reading into one reused 4 MiB buffer
// that never leaves the cache, is still reported (raw_read_cached_mb_s,
// warm_vs_raw_cached): it does less work than the loader must (no write to
// memory) with half its threads, so it moved with the machine's cache and
// memory balance (~6 GB/s on one VM, ~21 GB/s on another of the same type).
struct RawReader {
  RawReader(int threads, std::size_t chunk_bytes, std::size_t buffers)
      : threads(std::max(1, threads)),
        chunk(std::max<std::size_t>(4096, chunk_bytes)),
        ring(std::max<std::size_t>(buffers, static_cast<std::size_t>(this->threads))) {
    for (auto& b : ring) b.assign(chunk, 1);  // touched, as a warm pool's buffers are
  }
  int threads;
  std::size_t chunk;
  std::vector<std::vector<char>> ring;
};

Result<double> raw_read_parallel_seconds(const std::vector<std::string>& paths, RawReader& r) {
  std::vector<Status> status(r.threads);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < r.threads; ++t) {
    threads.emplace_back([&, t] {
      // This thread's share of the ring: buffers t, t + threads, ...
      std::size_t next = static_cast<std::size_t>(t);
      for (std::size_t f = static_cast<std::size_t>(t); f < paths.size(); f += r.threads) {
        Fd fd(::open(paths[f].c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) {
          status[t] = errno_status("bench data: open " + paths[f], errno);
          return;
        }
        ssize_t n;
        do {
          n = ::read(fd.get(), r.ring[next].data(), r.chunk);
          next += r.threads;
          if (next >= r.ring.size()) next = static_cast<std::size_t>(t);
        } while (n > 0);
        if (n < 0) {
          status[t] = errno_status("bench data: read " + paths[f], errno);
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  double secs = seconds_since(t0);
  for (auto& st : status) KILN_RETURN_IF_ERROR(st);
  return secs;
}

// read() of every cached shard file, 4 MiB at a time into one reused buffer
// (the cache-resident baseline of Note [A fair raw baseline]).
Result<double> raw_read_seconds(const std::vector<std::string>& paths) {
  std::vector<char> buf(4 << 20);
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& p : paths) {
    Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return errno_status("bench data: open " + p, errno);
    ssize_t n;
    while ((n = ::read(fd.get(), buf.data(), buf.size())) > 0) {
    }
    if (n < 0) return errno_status("bench data: read " + p, errno);
  }
  return seconds_since(t0);
}

struct WarmRuns {
  std::vector<double> warm, warm_mb_s, warm_samples_s, raw_mb_s;
  std::vector<double> raw_pass_mb_s;  // every raw pass of every run (the baseline's spread)
  std::vector<double> warm_vs_cached, raw_cached_mb_s;  // the old baseline, for comparison
  // Where the time went (ResourceUsage): CPUs busy during a warm epoch and
  // during the raw passes, and the warm epoch's context switches per batch.
  std::vector<double> warm_cpus_busy, raw_cpus_busy, warm_sleeps_per_batch,
      warm_preemptions_per_batch;
};

struct Ratios {
  WarmRuns large, small;
  std::vector<double> cold, cold_mb_s, raw_get_mb_s;
  std::vector<double> wait_fraction;
  std::vector<double> wait_p50_ms, wait_p99_ms, wait_max_ms;
};

nlohmann::json range_of(const std::vector<double>& v) {
  if (v.empty()) return nullptr;
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return {*lo, *hi};
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()))];
}

// Note [A stable raw baseline]: on the shared 2-vCPU VM one raw pass of
// the page cache ran anywhere between 9.8 and 34 GB/s from one run to the
// next (other tenants, the host's memory traffic), and a ratio over a
// single pass moved with the baseline far more than with the loader. So
// each timed epoch is flanked by --raw-passes raw passes before and after
// it (the passes after epoch e are also those before epoch e + 1), its
// baseline is the median of those around it, and a run's ratio is the
// median over its --warm-epochs per-epoch ratios: both sides are medians,
// taken in the same seconds of the same run.
Status bench_warm(const DataBenchArgs& a, const std::string& ds, const DatasetIndex& index,
                  WarmRuns* out, Ratios* stalls) {
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(ds));
  data::ShardCache cache(store.get(), "",
                         {.dir = ds + "-warm-cache", .capacity_bytes = 1ull << 40});
  std::vector<std::string> paths;
  for (const auto& sh : index.shards) {
    KILN_ASSIGN_OR_RETURN(auto lease, cache.acquire(sh, Deadline::after_seconds(600)));
    paths.push_back(lease.path());
  }
  const double mb = dataset_bytes(index) / 1e6;
  // One pool across epochs, as a training loop keeps it (LoaderOptions::batch_pool).
  const std::size_t pool_batches = 8 + a.workers + 2;
  auto pool = data::BatchPool::create(pool_batches);
  KILN_RETURN_IF_ERROR(run_epoch(&cache, index, a, 0, pool).status());  // page cache warm
  // Note [A fair raw baseline]: one batch's bytes per read(), the pool's footprint.
  const std::uint64_t batch_bytes = dataset_bytes(index) / std::max<std::uint64_t>(
                                        1, (index.num_samples + a.batch_size - 1) / a.batch_size);
  RawReader raw(a.workers, batch_bytes, pool_batches);
  KILN_RETURN_IF_ERROR(raw_read_parallel_seconds(paths, raw).status());  // its buffers settled
  auto raw_passes = [&](std::vector<double>* secs) -> Status {
    secs->clear();
    const ResourceUsage u0 = ResourceUsage::of_process();
    for (int p = 0; p < a.raw_passes; ++p) {
      KILN_ASSIGN_OR_RETURN(double s, raw_read_parallel_seconds(paths, raw));
      secs->push_back(s);
      out->raw_pass_mb_s.push_back(mb / s);
    }
    double total_s = 0;
    for (double s : *secs) total_s += s;
    out->raw_cpus_busy.push_back((ResourceUsage::of_process() - u0).cpu_s / total_s);
    return Status::ok();
  };
  for (int r = 0; r < a.runs; ++r) {
    std::vector<double> before, after, ratio, raw_s_of, epoch_s, samples_s, cached_ratio, cached;
    KILN_RETURN_IF_ERROR(raw_passes(&before));
    for (int e = 0; e < a.warm_epochs; ++e) {
      KILN_ASSIGN_OR_RETURN(double cached_s, raw_read_seconds(paths));
      KILN_ASSIGN_OR_RETURN(EpochResult ep, run_epoch(&cache, index, a, 0, pool));
      KILN_RETURN_IF_ERROR(raw_passes(&after));
      std::vector<double> around = before;
      around.insert(around.end(), after.begin(), after.end());
      const double raw_s = median(around);
      ratio.push_back(raw_s / ep.seconds);
      raw_s_of.push_back(raw_s);
      epoch_s.push_back(ep.seconds);
      samples_s.push_back(ep.samples / ep.seconds);
      cached.push_back(cached_s);
      cached_ratio.push_back(cached_s / ep.seconds);
      const double batches = static_cast<double>((ep.samples + a.batch_size - 1) / a.batch_size);
      out->warm_cpus_busy.push_back(ep.usage.cpu_s / ep.seconds);
      out->warm_sleeps_per_batch.push_back(static_cast<double>(ep.usage.voluntary_switches) / batches);
      out->warm_preemptions_per_batch.push_back(static_cast<double>(ep.usage.involuntary_switches) / batches);
      before = std::move(after);
    }
    out->raw_mb_s.push_back(mb / median(raw_s_of));
    out->raw_cached_mb_s.push_back(mb / median(cached));
    out->warm_mb_s.push_back(mb / median(epoch_s));
    out->warm_samples_s.push_back(median(samples_s));
    out->warm.push_back(median(ratio));
    out->warm_vs_cached.push_back(median(cached_ratio));
  }
  for (int r = 0; stalls != nullptr && r < a.runs; ++r) {  // the stall test, when asked
    KILN_ASSIGN_OR_RETURN(EpochResult e, run_epoch(&cache, index, a, a.consumer_ms, pool));
    Ratios* o = stalls;
    o->wait_fraction.push_back(e.mean_wait_s / (a.consumer_ms / 1000));
    o->wait_p50_ms.push_back(1000 * percentile(e.waits_s, 0.5));
    o->wait_p99_ms.push_back(1000 * percentile(e.waits_s, 0.99));
    o->wait_max_ms.push_back(1000 * percentile(e.waits_s, 1.0));
  }
  return Status::ok();
}

Status bench_cold(const DataBenchArgs& a, const std::string& ds, const DatasetIndex& index,
                  Ratios* out) {
  KILN_ASSIGN_OR_RETURN(auto server, objstore::s3::LocalS3Server::start("kiln-bench"));
  objstore::s3::S3Options o = server->options();
  o.max_attempts = 6;
  KILN_ASSIGN_OR_RETURN(auto store, objstore::s3::S3ObjectStore::open(server->url("ds"), o));
  KILN_RETURN_IF_ERROR(data::push_dataset(ds, store.get(), Deadline::after_seconds(600)).status());
  const double mb = dataset_bytes(index) / 1e6;
  const std::string scratch = a.root + "/raw-get";
  fs::create_directories(scratch);
  for (int r = 0; r < a.runs; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (const auto& sh : index.shards) {
      std::string dst = scratch + "/" + sh.file;
      KILN_RETURN_IF_ERROR(store->get_to_file(sh.file, dst, Deadline::after_seconds(600)));
      ::unlink(dst.c_str());
    }
    double raw_s = seconds_since(t0);
    std::string cache_dir = fmt::format("{}/cold-cache-{}", a.root, r);
    data::ShardCache cache(store.get(), "", {.dir = cache_dir, .capacity_bytes = 1ull << 40});
    KILN_ASSIGN_OR_RETURN(EpochResult e, run_epoch(&cache, index, a, 0, nullptr));
    std::error_code ec;
    fs::remove_all(cache_dir, ec);
    out->raw_get_mb_s.push_back(mb / raw_s);
    out->cold_mb_s.push_back(mb / e.seconds);
    out->cold.push_back(raw_s / e.seconds);
  }
  return Status::ok();
}

Status bench_data(const DataBenchArgs& a) {
  KILN_ASSIGN_OR_RETURN(std::uint64_t total, parse_bytes(a.total));
  KILN_ASSIGN_OR_RETURN(std::uint64_t sample_bytes, parse_bytes(a.sample_bytes));
  if (a.runs < 1 || a.warm_epochs < 1 || a.raw_passes < 1 || sample_bytes == 0 ||
      a.consumer_ms <= 0) {
    return invalid_argument(
        "bench data: --runs, --warm-epochs and --raw-passes ≥ 1, --sample-bytes > 0 and "
        "--consumer-ms > 0");
  }
  std::error_code ec;
  fs::remove_all(a.root, ec);
  const std::string ds = a.root + "/ds";
  KILN_ASSIGN_OR_RETURN(
      DatasetIndex index,
      write_dataset(ds, total, sample_bytes, static_cast<std::uint64_t>(a.shard_mib * (1 << 20))));
  if (a.inject_corruption) {
    std::fstream f(ds + "/" + index.shards[0].file, std::ios::in | std::ios::out | std::ios::binary);
    const auto middle = static_cast<std::streamoff>(index.shards[0].bytes / 2);
    char b = 0;
    f.seekg(middle).get(b);
    f.seekp(middle).put(static_cast<char>(b ^ 0x5a));
    if (!f) return internal_error("bench data: cannot corrupt " + index.shards[0].file);
  }
  Ratios r;
  KILN_RETURN_IF_ERROR(bench_warm(a, ds, index, &r.large, &r));
  KILN_ASSIGN_OR_RETURN(std::uint64_t small_total, parse_bytes(a.small_total));
  KILN_ASSIGN_OR_RETURN(std::uint64_t small_bytes, parse_bytes(a.small_sample_bytes));
  std::optional<DatasetIndex> small;
  if (small_bytes > 0) {
    const std::string small_ds = a.root + "/ds-small";
    KILN_ASSIGN_OR_RETURN(small, write_dataset(small_ds, small_total, small_bytes,
                                               static_cast<std::uint64_t>(a.shard_mib * (1 << 20))));
    KILN_RETURN_IF_ERROR(bench_warm(a, small_ds, *small, &r.small, nullptr));
  }
  bool cold = objstore::s3::LocalS3Server::installed();
  if (cold) KILN_RETURN_IF_ERROR(bench_cold(a, ds, index, &r));
  fs::remove_all(a.root, ec);

  nlohmann::json doc{
      {"dataset_mb", dataset_bytes(index) / 1e6},
      {"samples", index.num_samples},
      {"shards", index.shards.size()},
      {"sample_bytes", sample_bytes},
      {"batch_size", a.batch_size},
      {"workers", a.workers},
      {"runs", a.runs},
      {"shuffle_window", a.shuffle_window > 0 ? a.shuffle_window : index.shards[0].num_samples},
      {"warm_mb_s", median(r.large.warm_mb_s)},
      {"warm_samples_s", median(r.large.warm_samples_s)},
      {"raw_read_mb_s", median(r.large.raw_mb_s)},
      {"raw_pass_mb_s_range", range_of(r.large.raw_pass_mb_s)},
      {"warm_epochs", a.warm_epochs},
      {"raw_passes", a.raw_passes},
      {"warm_vs_raw", median(r.large.warm)},
      {"raw_read_cached_mb_s", median(r.large.raw_cached_mb_s)},
      {"warm_vs_raw_cached", median(r.large.warm_vs_cached)},
      {"warm_cpus_busy", median(r.large.warm_cpus_busy)},
      {"raw_cpus_busy", median(r.large.raw_cpus_busy)},
      {"warm_sleeps_per_batch", median(r.large.warm_sleeps_per_batch)},
      {"warm_preemptions_per_batch", median(r.large.warm_preemptions_per_batch)},
      {"consumer_ms", a.consumer_ms},
      {"consumer_wait_fraction", median(r.wait_fraction)},
      {"consumer_wait_p50_ms", median(r.wait_p50_ms)},
      {"consumer_wait_p99_ms", median(r.wait_p99_ms)},
      {"consumer_wait_max_ms", median(r.wait_max_ms)},
  };
  if (small) {
    doc["small"] = {{"dataset_mb", dataset_bytes(*small) / 1e6},
                    {"samples", small->num_samples},
                    {"sample_bytes", small_bytes},
                    {"shuffle_window", small->shards[0].num_samples},
                    {"warm_mb_s", median(r.small.warm_mb_s)},
                    {"warm_samples_s", median(r.small.warm_samples_s)},
                    {"raw_read_mb_s", median(r.small.raw_mb_s)},
                    {"raw_pass_mb_s_range", range_of(r.small.raw_pass_mb_s)},
                    {"raw_read_cached_mb_s", median(r.small.raw_cached_mb_s)},
                    {"warm_vs_raw_cached", median(r.small.warm_vs_cached)},
                    {"warm_cpus_busy", median(r.small.warm_cpus_busy)},
                    {"raw_cpus_busy", median(r.small.raw_cpus_busy)},
                    {"warm_sleeps_per_batch", median(r.small.warm_sleeps_per_batch)},
                    {"warm_preemptions_per_batch", median(r.small.warm_preemptions_per_batch)}};
    doc["warm_vs_raw_small"] = median(r.small.warm);
  }
  if (cold) {
    doc["cold_mb_s"] = median(r.cold_mb_s);
    doc["raw_get_mb_s"] = median(r.raw_get_mb_s);
    doc["cold_vs_raw_get"] = median(r.cold);
  } else {
    doc["cold_vs_raw_get"] = nullptr;
    doc["cold_skipped"] = objstore::s3::LocalS3Server::kNotInstalled;
  }
  if (a.json) {
    std::printf("%s\n", doc.dump(2).c_str());
    return Status::ok();
  }
  std::printf(
      "dataset: %.1f MB, %llu samples of %s in %zu shards; batch %llu, %d workers; "
      "medians of %d runs\n",
      dataset_bytes(index) / 1e6, static_cast<unsigned long long>(index.num_samples),
      a.sample_bytes.c_str(), index.shards.size(), static_cast<unsigned long long>(a.batch_size),
      a.workers, a.runs);
  std::printf(
      "warm:   %.0f MB/s, %.0f samples/s; raw read %.0f MB/s; warm_vs_raw %.2f (target >= 0.8)\n",
      median(r.large.warm_mb_s), median(r.large.warm_samples_s), median(r.large.raw_mb_s), median(r.large.warm));
  if (small) {
    std::printf(
        "small:  %s samples: %.0f MB/s, %.0f samples/s; raw read %.0f MB/s; warm_vs_raw_small "
        "%.2f\n",
        a.small_sample_bytes.c_str(), median(r.small.warm_mb_s), median(r.small.warm_samples_s),
        median(r.small.raw_mb_s), median(r.small.warm));
  }
  if (cold) {
    std::printf(
        "cold:   %.0f MB/s from s3rver; raw GETs %.0f MB/s; cold_vs_raw_get %.2f (target >= 0.8)\n",
        median(r.cold_mb_s), median(r.raw_get_mb_s), median(r.cold));
  } else {
    std::printf("cold:   skipped: %s\n", objstore::s3::LocalS3Server::kNotInstalled);
  }
  std::printf(
      "stall:  consumer at %.1f ms/batch waits %.2f%% of it (target < 2%%); wait p50 "
      "%.3f ms, p99 %.3f ms, max %.3f ms\n",
      a.consumer_ms, 100 * median(r.wait_fraction), median(r.wait_p50_ms), median(r.wait_p99_ms),
      median(r.wait_max_ms));
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<DataBenchArgs>();
  auto* cmd = parent.add_subcommand(
      "data", "Input pipeline: warm cache, cold start from s3rver, consumer stalls");
  cmd->add_option("--root", a->root, "Scratch directory (removed)")->capture_default_str();
  cmd->add_option("--total", a->total, "Dataset size (e.g. 256M)")->capture_default_str();
  cmd->add_option("--sample-bytes", a->sample_bytes, "Tensor bytes per sample")
      ->capture_default_str();
  cmd->add_option("--small-total", a->small_total, "Dataset size of the small-sample case")
      ->capture_default_str();
  cmd->add_option("--small-sample-bytes", a->small_sample_bytes,
                  "Tensor bytes per sample of the small case (0 skips it)")
      ->capture_default_str();
  cmd->add_option("--shard-mib", a->shard_mib, "Target shard size, MiB")->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Samples per batch")->capture_default_str();
  cmd->add_option("--workers", a->workers, "Loader decode threads")->capture_default_str();
  cmd->add_option("--runs", a->runs, "Timed runs (medians are reported)")->capture_default_str();
  cmd->add_option("--warm-epochs", a->warm_epochs,
                  "Timed warm epochs per run (the run's ratio is their median)")
      ->capture_default_str();
  cmd->add_option("--raw-passes", a->raw_passes,
                  "Raw read passes before and after each warm epoch (its baseline: their median)")
      ->capture_default_str();
  cmd->add_option("--consumer-ms", a->consumer_ms, "Consumer time per batch for the stall test")
      ->capture_default_str();
  cmd->add_option("--warmup-batches", a->warmup_batches, "Batches before waits count")
      ->capture_default_str();
  cmd->add_option("--shuffle-window", a->shuffle_window, "Sampler shuffle window (samples; 0: one shard's)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON document");
  cmd->add_flag("--inject-corruption", a->inject_corruption)->group("");  // tests only
  cmd->callback(run_status([a] { return bench_data(*a); }));
});

}  // namespace
}  // namespace kiln::cli
