// The s3:// half of `kiln bench ckpt` (bench_ckpt_s3.h). Compiled with the
// subcommands (a *_cmd.cc file) but registers none of its own.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "cli/bench_ckpt_s3.h"
#include "cli/bench_ckpt_s3_breakdown.h"
#include "kiln/base/deadline.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/objstore/s3/local_s3rver.h"
#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::cli {
namespace {

using comm::DataType;
using objstore::s3::LocalS3Server;
using objstore::s3::S3ObjectStore;

Result<double> slowest(comm::Communicator& c, double v) {
  KILN_RETURN_IF_ERROR(c.allreduce(&v, 1, DataType::kFloat64, comm::ReduceOp::kMax)->wait());
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The keys of the raw PUTs of `bytes` under `prefix`, one per part.
std::vector<std::string> raw_put_keys(const S3ObjectStore& store, const std::string& prefix,
                                      std::size_t bytes) {
  const std::size_t part = store.options().part_bytes;
  std::vector<std::string> keys;
  for (std::size_t i = 0; i * part < bytes; ++i)
    keys.push_back(fmt::format("{}/part-{:05}", prefix, i));
  return keys;
}

// Note [The raw PUTs' server state]: the baseline PUTs must meet the server
// in the state the checkpoint meets it. s3rver keeps objects in files on
// /dev/shm; a PUT of a new object fills freshly allocated tmpfs pages, one
// that overwrites an object truncates its file and refills the pages just
// freed. On this VM (virtio-balloon, DAMON) fresh pages cost s3rver's file
// writes ~10x the kernel copy time (`perf record -a`, session 16: 1.5-2.2
// s of copy_folio_from_iter_atomic per GiB against 0.21-0.22 s), and
// s3rver's one thread waits for each write before it reads on, so every
// PUT is slower. A checkpoint always writes new objects (the previous step
// stays until the new one is committed), while the baseline used to
// overwrite the same objects every round: its PUTs were ~1.2x faster for a
// reason that was the server's memory, not the client's. So each round's
// raw PUTs are new objects, removed when the round ends, as retention
// removes the previous step: both halves of a round then find the same
// amount of freed memory. RawPutKeys::kOverwrite keeps the old baseline
// for A/Bs.

// The baseline: `bytes` as part-sized objects, PUT by upload_parallelism
// threads taking parts in turn: what the wire and the server allow.
Status raw_puts(S3ObjectStore& store, const std::string& prefix, const std::vector<char>& bytes) {
  const std::size_t part = store.options().part_bytes;
  const std::vector<std::string> keys = raw_put_keys(store, prefix, bytes.size());
  const std::size_t parts = keys.size();
  std::atomic<std::size_t> next{0};
  std::vector<Status> failed(static_cast<std::size_t>(store.options().upload_parallelism));
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < failed.size(); ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t i; (i = next.fetch_add(1)) < parts;) {
        std::size_t off = i * part, n = std::min(part, bytes.size() - off);
        Status s = store.put(keys[i], std::string_view(bytes.data() + off, n),
                             Deadline::after_seconds(600));
        if (!s.is_ok()) {
          failed[t] = s;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& s : failed) KILN_RETURN_IF_ERROR(s);
  return Status::ok();
}

}  // namespace

Result<std::optional<S3CkptTimes>> measure_s3_checkpoint(comm::Communicator& c,
                                                         const std::vector<char>& state,
                                                         std::int64_t rows, std::int64_t cols,
                                                         int rounds, ckpt::ObjectLayout layout,
                                                         RawPutKeys raw_keys, bool raw_after,
                                                         std::string* skipped) {
  const int r = c.rank(), n = c.size();
  std::unique_ptr<LocalS3Server> server;
  std::int64_t port = -1;
  if (r == 0 && LocalS3Server::installed()) {
    auto s = LocalS3Server::start("kiln-bench");
    if (!s.is_ok()) return s.status().with_context("bench ckpt: s3rver");
    server = std::move(s).value();
    port = server->port();
  }
  KILN_RETURN_IF_ERROR(c.broadcast(&port, 1, DataType::kInt64, 0)->wait());
  if (port < 0) {
    *skipped = LocalS3Server::kNotInstalled;
    return std::optional<S3CkptTimes>();
  }
  objstore::s3::S3Options o;
  o.endpoint = fmt::format("http://127.0.0.1:{}", port);
  o.region = "us-east-1";
  o.access_key_id = o.secret_access_key = "S3RVER";
  const std::string url = "s3://kiln-bench/ckpt";
  KILN_ASSIGN_OR_RETURN(auto store, S3ObjectStore::open(url, o));
  KILN_ASSIGN_OR_RETURN(auto raw_store, S3ObjectStore::open("s3://kiln-bench/raw", o));
  KILN_ASSIGN_OR_RETURN(auto ckpt_comm, c.split(0, r));
  KILN_ASSIGN_OR_RETURN(auto ck, ckpt::Checkpointer::create({.root = url,
                                                             .comm = ckpt_comm.get(),
                                                             .retention = {.keep_last = 1},
                                                             .store = store.get(),
                                                             .object_layout = layout}));
  const ckpt::RowRange mine = ckpt::even_rows(rows, r, n);
  ckpt::StateView view;
  KILN_RETURN_IF_ERROR(view.add_tensor("weights", DataType::kFloat32, {rows, cols}, mine.offset,
                                       mine.count, state.data()));
  KILN_RETURN_IF_ERROR(ck->reserve(view.total_bytes()));
  store->request_log().enable(true);
  raw_store->request_log().enable(true);
  std::vector<double> raw_s, write_s, commit_s, ratio;
  nlohmann::json breakdown = nlohmann::json::array();
  for (int step = 0; step < rounds; ++step) {
    const std::string raw_prefix = raw_keys == RawPutKeys::kFresh
                                       ? fmt::format("rank-{}/round-{}", r, step)
                                       : fmt::format("rank-{}", r);
    Clock::time_point t0, ts;
    double raw = 0;
    auto baseline = [&]() -> Status {
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
      t0 = std::chrono::steady_clock::now();
      KILN_RETURN_IF_ERROR(raw_puts(*raw_store, raw_prefix, state));
      KILN_ASSIGN_OR_RETURN(raw, slowest(c, seconds_since(t0)));
      return Status::ok();
    };
    if (!raw_after) KILN_RETURN_IF_ERROR(baseline());
    KILN_RETURN_IF_ERROR(c.barrier()->wait());
    ts = std::chrono::steady_clock::now();
    KILN_RETURN_IF_ERROR(ck->save(view, step, Deadline::after_seconds(600)));
    // Rank 0's retention of the previous step runs after the commit (Note
    // [Retention after the commit]); it ends before the next round's raw
    // PUTs, which it would otherwise slow, and is reported as retention_s.
    KILN_RETURN_IF_ERROR(ck->flush_retention(Deadline::after_seconds(600)));
    if (raw_after) KILN_RETURN_IF_ERROR(baseline());
    if (raw_keys == RawPutKeys::kFresh) {
      KILN_RETURN_IF_ERROR(raw_store->remove_many(
          raw_put_keys(*raw_store, raw_prefix, state.size()), Deadline::after_seconds(600)));
    }
    auto st = ck->last_stats();
    KILN_ASSIGN_OR_RETURN(
        auto raw_parts,
        every_ranks_breakdown(c, raw_put_breakdown(raw_store->request_log().take(), t0)));
    KILN_ASSIGN_OR_RETURN(
        auto ckpt_parts,
        every_ranks_breakdown(c, checkpoint_breakdown(store->request_log().take(), ts, st)));
    breakdown.push_back({{"raw", std::move(raw_parts)}, {"checkpoint", std::move(ckpt_parts)}});
    KILN_ASSIGN_OR_RETURN(double w, slowest(c, st.write_s + st.commit_s));
    KILN_ASSIGN_OR_RETURN(double commit, slowest(c, st.commit_s));
    commit_s.push_back(commit);
    raw_s.push_back(raw);
    write_s.push_back(w);
    ratio.push_back(raw / w);
  }
  // The last step must come back as saved.
  const std::string cache = fmt::format("/tmp/kiln-bench-s3-cache-{}-{}", ::getpid(), r);
  auto loaded =
      ckpt::load_latest_remote(*store, cache, {r, n, ckpt_comm.get(), std::chrono::seconds(600)});
  std::error_code ec;
  std::filesystem::remove_all(cache, ec);
  if (!loaded.is_ok()) return loaded.status().with_context("bench ckpt: load back from s3");
  const ckpt::LoadedEntry* w = loaded->find("weights");
  int bad = (loaded->step != rounds - 1 || w == nullptr || w->data.size() != state.size() ||
             std::memcmp(w->data.data(), state.data(), state.size()) != 0)
                ? 1
                : 0;
  KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, DataType::kInt32, comm::ReduceOp::kMax)->wait());
  if (bad) return internal_error("bench ckpt: the state loaded from s3 differs from the saved one");
  ck.reset();
  // s3rver stops with rank 0's `server`, after every rank is done with it.
  KILN_RETURN_IF_ERROR(c.barrier()->wait());
  return std::optional<S3CkptTimes>(S3CkptTimes{median(raw_s), median(write_s), median(ratio),
                                                rounds, raw_s, write_s, commit_s,
                                                std::move(breakdown)});
}

}  // namespace kiln::cli
