// BusyPolicy::kSkip with several ranks (real processes): the ranks vote, so
// one busy rank makes every rank skip the step and all commit the same steps.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <future>
#include <mutex>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/objstore/file_object_store.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::ckpt {
namespace {

using comm::Communicator;
using comm::testing::run_ranks;
using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

Deadline soon() { return Deadline::after_seconds(20); }

comm::testing::RunOptions quick() {
  comm::testing::RunOptions o = testing::quick(std::chrono::seconds(40));
  o.comm.timeout = std::chrono::seconds(15);
  return o;
}

const char* name(SaveStart s) { return s == SaveStart::kStarted ? "started" : "skipped"; }

// Wraps a store; the upload of step `held`'s manifest waits until release()
// (or its deadline), which keeps the save of that step in flight on the one
// rank that uploads manifests (rank 0) after the other ranks' saves are done.
class HeldManifestPut final : public objstore::testing::ForwardingObjectStore {
 public:
  HeldManifestPut(objstore::ObjectStore& inner, std::int64_t held)
      : ForwardingObjectStore(inner),
        held_key_(remote_key(held, kManifestName)),
        entered_future_(entered_.get_future()),
        released_(release_.get_future()) {}

  // Whether the held put has started waiting by `d`.
  bool wait_entered(Deadline d) {
    return entered_future_.wait_until(d.at()) == std::future_status::ready;
  }
  void release() {
    std::call_once(released_once_, [this] { release_.set_value(); });
  }

  Status put_file(const std::string& key, const std::string& src, Deadline d) override {
    if (key == held_key_) {
      entered_.set_value();
      if (released_.wait_until(d.at()) != std::future_status::ready) {
        return deadline_exceeded("test: the upload of " + key + " was never released");
      }
    }
    return inner_.put_file(key, src, d);
  }
  std::string describe() const override { return "held-manifest+" + inner_.describe(); }

 private:
  const std::string held_key_;
  std::promise<void> entered_;
  std::future<void> entered_future_;
  std::promise<void> release_;
  std::shared_future<void> released_;
  std::once_flag released_once_;
};

// A checkpointer under `root` that skips a save while any rank's is in flight.
Result<std::unique_ptr<Checkpointer>> create_skipping(const std::string& root, Communicator& comm) {
  return Checkpointer::create({.root = root,
                               .comm = &comm,
                               .busy = BusyPolicy::kSkip,
                               .timeout = std::chrono::seconds(15)});
}

// Releases the held upload however the rank's body ends, before the
// Checkpointer (declared earlier) waits for its save in its destructor.
struct ReleaseOnExit {
  HeldManifestPut& held;
  ~ReleaseOnExit() { held.release(); }
};

TEST(CkptSkip, OneBusyRankMakesEveryRankSkip) {
  TempDir local, remote;
  std::string root = local.path() + "/ckpt";
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        const int rank = comm.rank();
        auto files = objstore::make_file_object_store(remote.path());
        HeldManifestPut held(*files, 1);
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = root,
                                           .comm = &comm,
                                           .busy = BusyPolicy::kSkip,
                                           .timeout = std::chrono::seconds(15),
                                           .remote = "test",
                                           .remote_store = rank == 0 ? &held : files.get()}));
        ReleaseOnExit release_on_exit{held};
        TestState s1(1, rank, 2), s2(2, rank, 2), s3(3, rank, 2);
        KILN_ASSIGN_OR_RETURN(SaveStart first, ck->save_async(s1.view(), 1));
        if (first != SaveStart::kStarted) return internal_error("step 1 was skipped");
        if (rank == 0) {
          // Rank 0's save of step 1 is now held in its manifest upload,
          // after the local commit and the ranks' shard-upload exchange.
          if (!held.wait_entered(soon())) {
            return internal_error("rank 0: the manifest upload of step 1 never started");
          }
        } else {
          // Rank 1's save of step 1 is done: rank 1 is idle.
          KILN_RETURN_IF_ERROR(ck->wait(soon()));
        }
        // Rank 0 busy, rank 1 idle: both must skip step 2.
        KILN_ASSIGN_OR_RETURN(SaveStart second, ck->save_async(s2.view(), 2));
        if (second != SaveStart::kSkipped) {
          return internal_error(fmt::format(
              "rank {}: step 2 was {} while rank 0 still saved step 1; want skipped on every rank",
              rank, name(second)));
        }
        if (rank == 0) held.release();
        KILN_RETURN_IF_ERROR(ck->wait(soon()));
        // No rank busy now: step 3 is saved everywhere.
        KILN_ASSIGN_OR_RETURN(SaveStart third, ck->save_async(s3.view(), 3));
        if (third != SaveStart::kStarted) {
          return internal_error(fmt::format("rank {}: step 3 was {}", rank, name(third)));
        }
        return ck->wait(soon());
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;

  auto steps = list_committed_steps(root);
  ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
  EXPECT_EQ(*steps, (std::vector<std::int64_t>{3, 1}));
  EXPECT_FALSE(path_exists(root + "/" + step_dir_name(2)));
  EXPECT_FALSE(path_exists(root + "/" + tmp_step_dir_name(2)));
  auto store = objstore::make_file_object_store(remote.path());
  auto remote_steps = list_remote_committed_steps(*store, soon());
  ASSERT_TRUE(remote_steps.is_ok()) << remote_steps.status().to_string();
  EXPECT_EQ(*remote_steps, (std::vector<std::int64_t>{3, 1}));
  auto step2 = store->list("step-2/", soon());
  ASSERT_TRUE(step2.is_ok());
  EXPECT_TRUE(step2->empty()) << "objects of the skipped step 2 were uploaded";
  auto loaded = load_latest(root, {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 3);
  EXPECT_EQ(check_loaded(*loaded, 3, 0, 1), "");
}

TEST(CkptSkip, WithNoRankBusyEverySaveIsMade) {
  TempDir dir;
  auto r = run_ranks(
      3,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto ck, create_skipping(dir.path(), comm));
        for (std::int64_t step : {1, 2}) {
          TestState s(step, comm.rank(), comm.size());
          KILN_ASSIGN_OR_RETURN(SaveStart started, ck->save_async(s.view(), step));
          if (started != SaveStart::kStarted) {
            return internal_error(fmt::format("rank {}: step {} was {} with no save in flight",
                                              comm.rank(), step, name(started)));
          }
          KILN_RETURN_IF_ERROR(ck->wait(soon()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
  EXPECT_EQ(*steps, (std::vector<std::int64_t>{2, 1}));
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1), "");
}

TEST(CkptSkip, AFailedVoteStartsNothingAndNamesTheStep) {
  TempDir dir;
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto ck, create_skipping(dir.path(), comm));
        if (comm.rank() == 1) return Status::ok();  // leaves: no vote on its side
        TestState s(1, 0, 2);
        auto started = ck->save_async(s.view(), 1);
        if (started.is_ok()) return internal_error("rank 0: the vote passed without rank 1");
        const Status& st = started.status();
        for (const char* want : {"checkpoint of step 1", "kSkip vote", "not started"}) {
          if (st.message().find(want) == std::string::npos) {
            return internal_error(fmt::format("rank 0: want '{}' in {}", want, st.to_string()));
          }
        }
        // The vote communicator is aborted: later saves fail too.
        if (ck->save_async(s.view(), 2).is_ok()) return internal_error("rank 0: step 2 started");
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok()) << steps.status().to_string();
  EXPECT_TRUE(steps->empty());
}

}  // namespace
}  // namespace kiln::ckpt
