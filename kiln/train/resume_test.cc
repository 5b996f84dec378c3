// resume() across ranks: a rank that cannot load what the others can fails
// every rank at once, with an error naming it and the file; a recovery from
// memory restores the model's tensors where they lie.
#include "kiln/train/resume.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <tuple>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::train {
namespace {

using ckpt::testing::TempDir;

// Flips the byte in the middle of `path`.
void flip_middle_byte(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << path;
  const off_t middle = ::lseek(fd.get(), 0, SEEK_END) / 2;
  char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, middle), 1);
  b = static_cast<char>(b ^ 0x5a);
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, middle), 1);
}

TEST(Resume, ARankThatCannotLoadTheStepFailsEveryRankNamingItAndTheFile) {
  TempDir tmp;
  const std::string good = tmp.path() + "/good", bad = tmp.path() + "/bad";
  {
    auto ck = ckpt::Checkpointer::create({.root = good});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    ckpt::testing::TestState state(4, 0, 1);
    ASSERT_TRUE((*ck)->save(state.view(), 4, Deadline::after_seconds(60)).is_ok());
  }
  // Rank 1 reads the step from a copy with a flipped byte in its shard (a
  // host whose copy went bad); rank 0, which picks the step, reads a good one.
  std::filesystem::copy(good, bad, std::filesystem::copy_options::recursive);
  const std::string corrupt = bad + "/step-4/" + ckpt::shard_file_name(0);
  flip_middle_byte(corrupt);

  auto result = comm::testing::run_ranks(2, [&](comm::Communicator& comm) -> Status {
    TrainConfig c;
    c.checkpoint.dir = comm.rank() == 1 ? bad : good;
    auto restore = [](const ckpt::LoadedState& s) -> Result<Progress> {
      return Progress{s.step, 0, 0};
    };
    auto r = resume(c, restore, /*whole=*/true, comm, nullptr, nullptr, /*use_memory=*/false);
    const std::string msg = r.is_ok() ? "" : r.status().to_string();
    if (r.is_ok() || r.status().code() != Code::kDataLoss ||
        msg.find("rank 1: ") == std::string::npos || msg.find(corrupt) == std::string::npos) {
      return internal_error(fmt::format("rank {}: want DataLoss naming rank 1 and {}, got '{}'",
                                        comm.rank(), corrupt, r.is_ok() ? "ok" : msg));
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

// A model's whole tensors (TestState's w0, w1, bias), holding garbage until
// a resume restores them.
struct Model {
  std::vector<float> w0 = std::vector<float>(37 * 7, -1.5f), w1 = std::vector<float>(10 * 3, -1.5f),
                     bias = std::vector<float>(5, -1.5f);
  std::vector<ckpt::WholeTarget> targets() {
    auto t = [](const char* name, std::vector<float>& v, std::int64_t rows) {
      return ckpt::WholeTarget{name, reinterpret_cast<std::byte*>(v.data()), v.size() * 4, rows};
    };
    return {t("w0", w0, 37), t("w1", w1, 10), t("bias", bias, 5)};
  }
};

struct MemoryDirs {
  TempDir tmp;
  std::string root = tmp.path() + "/ckpt", mem = tmp.path() + "/mem";
};

// Two ranks save step 4 of TestState to storage and memory; then storage is
// removed, so only memory can serve.
void save_to_memory_only(const MemoryDirs& d) {
  auto r = comm::testing::run_ranks(2, [&](comm::Communicator& comm) -> Status {
    KILN_ASSIGN_OR_RETURN(auto tier, ckpt::MemoryTier::open({.dir = d.mem, .comm = &comm}));
    KILN_ASSIGN_OR_RETURN(
        auto ck, ckpt::Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
    ckpt::testing::TestState state(4, comm.rank(), comm.size());
    return ck->save(state.view(), 4, Deadline::after_seconds(60));
  });
  ASSERT_TRUE(r.ok()) << r.report;
  std::filesystem::remove_all(d.root);
}

// `restore` fails unless the tensors came in place; returns step 4's progress.
Result<Progress> expect_in_place(const ckpt::LoadedState& s) {
  for (const char* name : {"w0", "w1", "bias"}) {
    const ckpt::LoadedEntry* e = s.find(name);
    if (e == nullptr || !e->in_place || !e->data.empty()) {
      return internal_error(fmt::format("'{}' did not come in place", name));
    }
  }
  return Progress{s.step, 0, 0};
}

// Resumes the whole job from the memory tier straight into `model`'s
// tensors (in place), with d.root as the checkpoint directory.
Result<std::optional<Resumed>> resume_into(Model& model, const MemoryDirs& d,
                                           comm::Communicator& comm, ckpt::MemoryTier& tier) {
  TrainConfig c;
  c.checkpoint.dir = d.root;
  const auto targets = model.targets();
  return resume(c, expect_in_place, /*whole=*/true, comm, &tier, &comm, /*use_memory=*/true,
                targets);
}

TEST(Resume, FromMemoryTheModelsTensorsAreRestoredWhereTheyLieBitForBit) {
  MemoryDirs d;
  save_to_memory_only(d);
  auto r = comm::testing::run_ranks(2, [&](comm::Communicator& comm) -> Status {
    KILN_ASSIGN_OR_RETURN(auto tier, ckpt::MemoryTier::open({.dir = d.mem, .comm = &comm}));
    Model model;
    KILN_ASSIGN_OR_RETURN(auto resumed, resume_into(model, d, comm, *tier));
    if (!resumed || !resumed->from_memory || resumed->in_place != 3 ||
        resumed->progress.step != 4) {
      return internal_error(
          fmt::format("rank {}: not resumed from memory, 3 tensors in place", comm.rank()));
    }
    ckpt::testing::TestState whole(4, 0, 1);
    for (auto [name, got, want] :
         {std::tuple{"w0", &model.w0, &whole.w0}, std::tuple{"w1", &model.w1, &whole.w1},
          std::tuple{"bias", &model.bias, &whole.bias}}) {
      if (got->size() != want->size() ||
          std::memcmp(got->data(), want->data(), want->size() * 4) != 0) {
        return data_loss(
            fmt::format("rank {}: '{}' differs from the saved tensor", comm.rank(), name));
      }
    }
    return tier->clear();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

// A recovery that wrote into the model and then failed (rank 0's snapshot
// corrupt) leaves the model neither initial nor restored: with nothing in
// storage to restore instead, every rank fails with DataLoss saying so.
TEST(Resume, AFailedRecoveryIntoTheModelWithNothingInStorageIsDataLoss) {
  MemoryDirs d;
  save_to_memory_only(d);
  flip_middle_byte(d.mem + "/rank-0/" + ckpt::step_dir_name(4) + "/" + ckpt::shard_file_name(0));
  auto r = comm::testing::run_ranks(2, [&](comm::Communicator& comm) -> Status {
    KILN_ASSIGN_OR_RETURN(auto tier, ckpt::MemoryTier::open({.dir = d.mem, .comm = &comm}));
    Model model;
    auto resumed = resume_into(model, d, comm, *tier);
    const std::string msg = resumed.is_ok() ? "ok" : resumed.status().to_string();
    if (resumed.is_ok() || resumed.status().code() != Code::kDataLoss ||
        msg.find("failed after restoring into the model") == std::string::npos ||
        msg.find("step 4 failed") == std::string::npos) {
      return internal_error(fmt::format("rank {}: want DataLoss, got '{}'", comm.rank(), msg));
    }
    return tier->clear();
  });
  EXPECT_TRUE(r.ok()) << r.report;
}

}  // namespace
}  // namespace kiln::train
