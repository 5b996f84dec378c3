// Fault campaign for checkpoints straight to an object store (a real s3rver;
// skipped where it is not installed).
//
// SIGKILL: two ranks save back to back to s3:// in the default layout
// (shards as chunk objects, Note [Shards as chunk objects]); one of them
// (rank 0 or 1 in turn) is killed at a random instant: inside its chunk
// uploads, the exchange of shard records, rank 0's manifest PUT, or
// retention. After each trial the newest committed step loads bit-exactly,
// every step listed as committed downloads and verifies, and no committed
// step vanishes; after a final clean save no interrupted upload (orphan
// chunks under a step without a manifest) is left below the newest commit,
// and no multipart upload is left on the server.
// KILN_STORE_FAULT_TRIALS trials (default 4; `make test-store-faults` runs 30).
//
// Server restart, in both layouts: s3rver is killed and restarted while both
// ranks upload; the uploads' retries carry the saves through, they load
// bit-exactly, and no upload is left pending (multipart: an initiate whose
// reply the kill lost leaves one on the server; the last commit aborts it
// (Note [Abandoned uploads]; s3rver lists and aborts them through
// s3rver_uploads.js)) and no orphan chunk is left.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <chrono>
#include <thread>

#include "kiln/base/fs.h"
#include "kiln/base/server_process.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/ckpt/verify.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/objstore/s3/local_s3rver.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/testing/s3rver_test.h"

namespace kiln::ckpt {
namespace {

using objstore::s3::LocalS3Server;
using objstore::s3::S3ObjectStore;
using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

// Rows of w0: 400000 x 7 floats, ~5.6 MB per rank of two, so each shard is
// two 5 MiB chunks (or a multipart upload of two parts).
constexpr std::int64_t kRows0 = 400000;

objstore::s3::S3Options store_options(const LocalS3Server& s3) {
  objstore::s3::S3Options o = s3.options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 2;
  // s3rver (node) takes seconds to restart: retries must span that.
  o.max_attempts = 10;
  o.backoff_base_ms = 200;
  o.backoff_cap_ms = 2000;
  return o;
}

int trials() {
  const char* n = std::getenv("KILN_STORE_FAULT_TRIALS");
  return n != nullptr && std::atoi(n) > 0 ? std::atoi(n) : 4;
}

// What must hold after any crash. Returns "" or what broke.
std::string check_invariants(objstore::ObjectStore& store, const std::string& scratch,
                             std::int64_t* newest) {
  auto steps = list_remote_committed_steps(store, Deadline::after_seconds(30));
  if (!steps.is_ok()) return steps.status().to_string();
  if (steps->empty()) return "no committed step";
  for (auto step : *steps) {
    const std::string cache = fmt::format("{}/verify-{}", scratch, step);
    auto dir = download_remote_step(store, step, cache, Deadline::after_seconds(30));
    if (!dir.is_ok()) return fmt::format("listed step {}: {}", step, dir.status().to_string());
    Status v = verify_step_status(*dir);
    (void)Fs::posix()->remove_tree(cache);
    if (!v.is_ok()) return fmt::format("listed step {}: {}", step, v.to_string());
  }
  auto loaded = load_latest_remote(store, scratch + "/load", {});
  (void)Fs::posix()->remove_tree(scratch + "/load");
  if (!loaded.is_ok()) return loaded.status().to_string();
  if (loaded->step != steps->front()) {
    return fmt::format("loaded step {}, not the newest {}", loaded->step, steps->front());
  }
  *newest = loaded->step;
  return check_loaded(*loaded, loaded->step, 0, 1, kRows0);
}

// Both ranks save steps after the newest committed one, back to back, until
// `last` (or, with a victim, until a peer's death aborts them).
Status save_steps(comm::Communicator& comm, const std::string& url, const LocalS3Server& s3,
                  std::int64_t last, ObjectLayout layout = ObjectLayout::kChunks) {
  KILN_ASSIGN_OR_RETURN(auto store, S3ObjectStore::open(url, store_options(s3)));
  KILN_ASSIGN_OR_RETURN(auto ck, Checkpointer::create({.root = url,
                                                       .comm = &comm,
                                                       .retention = {.keep_last = 2},
                                                       .timeout = std::chrono::seconds(60),
                                                       .store = store.get(),
                                                       .object_layout = layout}));
  KILN_ASSIGN_OR_RETURN(auto steps,
                        list_remote_committed_steps(*store, Deadline::after_seconds(30)));
  for (std::int64_t step = steps.empty() ? 1 : steps.front() + 1; step <= last; ++step) {
    TestState s(step, comm.rank(), comm.size(), kRows0);
    Status st = ck->save(s.view(), step, Deadline::after_seconds(60));
    if (st.code() == Code::kAborted) return Status::ok();  // the peer died
    KILN_RETURN_IF_ERROR(st);
  }
  // The last step's retention, which ~Checkpointer would stop after the
  // delete in flight (Note [Retention after the commit]).
  return ck->flush_retention(Deadline::after_seconds(60));
}

class StoreFaults : public objstore::s3::testing::S3rverTest {
 protected:
  void SetUp() override {
    S3rverTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    url_ = s3_->url("run");
    store_ = open_store("run", store_options(*s3_));
    ASSERT_NE(store_, nullptr);
  }

  comm::testing::RunResult run(const std::function<Status(comm::Communicator&)>& body) {
    comm::testing::RunOptions opts;
    opts.deadline = std::chrono::seconds(90);
    opts.comm.timeout = std::chrono::seconds(20);
    return comm::testing::run_ranks(2, body, opts);
  }

  std::string url_;
  std::unique_ptr<S3ObjectStore> store_;
  TempDir scratch_;
};

TEST_F(StoreFaults, SigkillOfEitherRankDuringUploads) {
  // A first checkpoint to protect.
  auto first = run([&](comm::Communicator& c) { return save_steps(c, url_, *s3_, 1); });
  ASSERT_TRUE(first.ok()) << first.report;
  std::mt19937 rng(4242);
  std::uniform_int_distribution<int> delay_us(0, 1500000);
  std::int64_t newest = 0;
  int interrupted = 0;  // kills that left chunks under a step without its manifest
  const int n = trials();
  for (int trial = 0; trial < n; ++trial) {
    const int victim = trial % 2;
    const int delay = delay_us(rng);
    auto r = run([&](comm::Communicator& comm) -> Status {
      if (comm.rank() == victim) {
        std::thread([delay] {
          usleep(static_cast<useconds_t>(delay));
          ::raise(SIGKILL);
        }).detach();
      }
      return save_steps(comm, url_, *s3_, 1 << 30);
    });
    ASSERT_EQ(r.ranks[victim].signal, SIGKILL) << "trial " << trial << ": " << r.report;
    ASSERT_EQ(r.ranks[1 - victim].exit_code, 0) << "trial " << trial << ": " << r.report;
    std::int64_t now = 0;
    ASSERT_EQ(check_invariants(*store_, scratch_.path(), &now), "") << "after trial " << trial;
    ASSERT_GE(now, newest) << "trial " << trial << ": a committed step vanished";
    newest = now;
    auto steps = summarize_remote_steps(*store_, Deadline::after_seconds(30));
    ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
    if (!steps->empty() && !steps->front().committed) ++interrupted;
  }
  // One clean save: its retention removes every interrupted upload below it.
  auto last = run([&](comm::Communicator& c) { return save_steps(c, url_, *s3_, newest + 1); });
  ASSERT_TRUE(last.ok()) << last.report;
  auto steps = summarize_remote_steps(*store_, Deadline::after_seconds(30));
  ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
  for (const auto& s : *steps) {
    EXPECT_TRUE(s.committed) << "step " << s.step << ": an interrupted upload was left behind";
  }
  auto pending = store_->list_pending_uploads("", Deadline::after_seconds(30));
  ASSERT_TRUE(pending.is_ok()) << pending.status().to_string();
  for (const auto& u : *pending) ADD_FAILURE() << "upload of " << u.key << " left pending";
  std::printf(
      "%d kills of 2 ranks uploading chunks to s3rver: %d left orphan chunks under an "
      "uncommitted step (all removed by the next commit); newest step %lld\n",
      n, interrupted, static_cast<long long>(newest + 1));
}

// Whether an upload is seen in progress on the server (as an operator
// listing it would see it): a multipart upload begun, or chunks under a step
// with no manifest yet.
bool upload_in_progress(objstore::ObjectStore& store, ObjectLayout layout) {
  if (layout == ObjectLayout::kMultipart) {
    auto pending = store.list_pending_uploads("", Deadline::after_seconds(5));
    return pending.is_ok() && !pending->empty();
  }
  auto steps = summarize_remote_steps(store, Deadline::after_seconds(5));
  return steps.is_ok() &&
         std::any_of(steps->begin(), steps->end(),
                     [](const RemoteStepSummary& s) { return !s.committed && s.objects > 0; });
}

class StoreServerRestart : public StoreFaults,
                           public ::testing::WithParamInterface<ObjectLayout> {};

TEST_P(StoreServerRestart, KilledAndRestartedMidUpload) {
  const ObjectLayout layout = GetParam();
  comm::testing::RunResult r;
  std::atomic<bool> done{false};
  std::thread ranks([&] {
    r = run([&](comm::Communicator& c) { return save_steps(c, url_, *s3_, 3, layout); });
    done = true;
  });
  // Killed once an upload is seen in progress on the server, not after a
  // guessed delay: on a fast host all three saves finished within 0.7 s.
  bool saving = false;
  const Deadline give_up = Deadline::after_seconds(60);
  while (!done && !give_up.expired()) {
    if (upload_in_progress(*store_, layout)) {
      saving = !done;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the poll's interval
  }
  s3_->kill();
  Status restarted = s3_->restart();
  ranks.join();
  ASSERT_TRUE(restarted.is_ok()) << restarted.to_string();
  ASSERT_TRUE(r.ok()) << r.report;
  EXPECT_TRUE(saving) << "the saves were over before the server was killed";
  std::int64_t newest = 0;
  ASSERT_EQ(check_invariants(*store_, scratch_.path(), &newest), "");
  EXPECT_EQ(newest, 3);
  auto pending = store_->list_pending_uploads("", Deadline::after_seconds(30));
  ASSERT_TRUE(pending.is_ok()) << pending.status().to_string();
  for (const auto& u : *pending) ADD_FAILURE() << "upload of " << u.key << " left pending";
  auto steps = summarize_remote_steps(*store_, Deadline::after_seconds(30));
  ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
  for (const auto& s : *steps) {
    EXPECT_TRUE(s.committed) << "step " << s.step << ": orphan objects were left";
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, StoreServerRestart,
                         ::testing::Values(ObjectLayout::kChunks, ObjectLayout::kMultipart),
                         [](const auto& info) { return std::string(object_layout_name(info.param)); });

}  // namespace
}  // namespace kiln::ckpt
