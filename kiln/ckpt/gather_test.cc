// gather_whole_tensors: every rank ends with the whole tensors, bit for bit,
// from the shares the ranks hold; mismatched shares fail every rank before
// any bytes move. Ranks are real processes.
#include "kiln/ckpt/gather.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using testing::quick;
using testing::whole_rows;

using comm::Communicator;
using comm::testing::run_ranks;
using testing::TempDir;
using testing::TestState;

// Rank r's share of TestState(step) as load_latest returns it for r of W.
Result<LoadedState> share_from_storage(const std::string& root, Communicator& comm) {
  LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(20)};
  return load_latest(root, o);
}

Status expect_bytes(const LoadedState& s, const std::string& name, const void* want,
                    std::size_t bytes, int rank) {
  const LoadedEntry* e = s.find(name);
  if (e == nullptr) return not_found(fmt::format("rank {}: no '{}'", rank, name));
  if (e->data.size() != bytes || std::memcmp(e->data.data(), want, bytes) != 0) {
    return data_loss(fmt::format("rank {}: '{}' differs from the whole tensor ({} bytes, want {})",
                                 rank, name, e->data.size(), bytes));
  }
  if (e->is_tensor && (e->spec.row_offset != 0 || e->spec.rows != e->spec.shape[0])) {
    return data_loss(fmt::format("rank {}: '{}' not marked whole", rank, name));
  }
  return Status::ok();
}

void save(const std::string& root, int world, std::int64_t step, std::int64_t rows0) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto ck, Checkpointer::create({.root = root, .comm = &comm}));
        TestState s(step, comm.rank(), comm.size(), rows0);
        return ck->save(s.view(), step, Deadline::after_seconds(20));
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

class GatherWhole : public ::testing::TestWithParam<int> {};

// Uneven splits included: 37 and 10 rows over 3 ranks; a 2-row w0 over 4
// ranks, two of which hold none of it.
TEST_P(GatherWhole, EveryRankGetsTheWholeTensorsAndKeepsItsOwnBlobs) {
  const int world = GetParam();
  TempDir tmp;
  const std::string root = tmp.path() + "/ckpt";
  const std::int64_t rows0 = world == 4 ? 2 : 37;
  save(root, world, 7, rows0);
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(LoadedState share, share_from_storage(root, comm));
        KILN_ASSIGN_OR_RETURN(LoadedState whole, gather_whole_tensors(std::move(share), comm,
                                                                      std::chrono::seconds(20)));
        TestState all(7, 0, 1, rows0);  // the whole tensors
        TestState mine(7, comm.rank(), comm.size(), rows0);
        const int k = comm.rank();
        KILN_RETURN_IF_ERROR(expect_bytes(whole, "w0", all.w0.data(), all.w0.size() * 4, k));
        KILN_RETURN_IF_ERROR(expect_bytes(whole, "w1", all.w1.data(), all.w1.size() * 4, k));
        KILN_RETURN_IF_ERROR(expect_bytes(whole, "bias", all.bias.data(), all.bias.size() * 4, k));
        return expect_bytes(whole, "rng", mine.rng.data(), mine.rng.size(), k);
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

INSTANTIATE_TEST_SUITE_P(Worlds, GatherWhole, ::testing::Values(1, 3, 4));

// A share cut to arbitrary rows: rows [lo, lo + n) of a tensor of `total`
// rows of 3 floats, whose row i is {i + salt, i + 0.5, -i} (a salt per
// tensor, so rows of one tensor cannot pass for another's).
LoadedEntry rows_entry(const std::string& name, std::int64_t total, std::int64_t lo, std::int64_t n,
                       float salt = 0) {
  LoadedEntry e{name, true, TensorSpec{comm::DataType::kFloat32, {total, 3}, lo, n}, {}};
  std::vector<float> v;
  for (std::int64_t i = lo; i < lo + n; ++i) {
    v.insert(v.end(), {static_cast<float>(i) + salt, static_cast<float>(i) + 0.5f,
                       -static_cast<float>(i)});
  }
  e.data.resize(v.size() * sizeof(float));
  std::memcpy(e.data.data(), v.data(), e.data.size());
  return e;
}


// A 3D run's shares: each rank holds only its pipeline stage's tensors, in
// rows that are not the even split, and a replicated range held by two
// ranks is sent once. Every rank gets every tensor whole.
TEST(GatherWhole, RowsAsSavedAndTensorsOnlySomeRanksHold) {
  auto r = run_ranks(
      4,
      [&](Communicator& comm) -> Status {
        LoadedState share;
        share.step = 5;
        const int k = comm.rank();
        // "stage0": ranks 0 and 1 split its 10 rows 7 / 3; "stage1": rank 2
        // alone (rank 3 holds an empty range of it); "shared": ranks 0 and 2
        // both hold rows [2, 4), rank 2's copy differs and must not win.
        // Rank 3 holds no rows at all.
        if (k == 0) share.entries.push_back(rows_entry("stage0", 10, 0, 7, 100));
        if (k == 1) share.entries.push_back(rows_entry("stage0", 10, 7, 3, 100));
        if (k == 2) share.entries.push_back(rows_entry("stage1", 4, 0, 4, 200));
        if (k == 3) share.entries.push_back(rows_entry("stage1", 4, 4, 0, 200));
        if (k == 0) share.entries.push_back(rows_entry("shared", 6, 0, 4, 300));
        if (k == 1) share.entries.push_back(rows_entry("shared", 6, 4, 2, 300));
        if (k == 2) share.entries.push_back(rows_entry("shared", 6, 2, 2, -1));
        const std::byte blob{static_cast<unsigned char>(40 + k)};
        share.entries.push_back(LoadedEntry{"rng", false, {}, {blob}});
        KILN_ASSIGN_OR_RETURN(LoadedState whole, gather_whole_tensors(std::move(share), comm,
                                                                      std::chrono::seconds(20)));
        for (auto [name, total, salt] :
             {std::tuple<const char*, std::int64_t, float>{"stage0", 10, 100},
              {"stage1", 4, 200},
              {"shared", 6, 300}}) {
          std::vector<float> want = whole_rows(total, salt);
          KILN_RETURN_IF_ERROR(expect_bytes(whole, name, want.data(), want.size() * 4, k));
        }
        return expect_bytes(whole, "rng", &blob, 1, k);
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(GatherWhole, ATensorHeldTwiceByOneRankIsNamed) {
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        LoadedState share;
        share.entries.push_back(rows_entry("w", 8, comm.rank() * 4, 4));
        if (comm.rank() == 1) share.entries.push_back(rows_entry("w", 8, 0, 2));
        auto whole = gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20));
        if (whole.is_ok() ||
            whole.status().message().find("rank 1 holds tensor 'w' twice") == std::string::npos) {
          return internal_error(
              fmt::format("rank {}: {}", comm.rank(), whole.status().to_string()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(GatherWhole, RanksThatDisagreeOnATensorAllFailNamingIt) {
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        LoadedState share;
        share.entries.push_back(rows_entry("w", comm.rank() == 0 ? 8 : 9, comm.rank() * 4, 4));
        auto whole = gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20));
        if (whole.is_ok() || whole.status().code() != Code::kInvalidArgument ||
            whole.status().message().find("'w'") == std::string::npos) {
          return internal_error(fmt::format("rank {}: want InvalidArgument naming 'w', got {}",
                                            comm.rank(), whole.status().to_string()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// Rows no rank holds (a short share, from storage) fail every rank, naming
// the tensor and the rows, before any tensor bytes move.
TEST(GatherWhole, RowsNoRankHoldsAreNamedOnEveryRank) {
  TempDir tmp;
  const std::string root = tmp.path() + "/ckpt";
  save(root, 2, 3, 37);
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(LoadedState share, share_from_storage(root, comm));
        if (comm.rank() == 0) {
          LoadedEntry* w0 = nullptr;
          for (auto& e : share.entries) w0 = e.name == "w0" ? &e : w0;
          w0->spec.rows -= 1;
          w0->data.resize(w0->data.size() - w0->spec.row_bytes());
        }
        auto whole = gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20));
        if (whole.is_ok()) return internal_error("a short share was gathered");
        if (whole.status().code() != Code::kInvalidArgument ||
            whole.status().message().find("rows [18, 19) of 'w0'") == std::string::npos) {
          return internal_error("the error does not name w0's missing row: " +
                                whole.status().to_string());
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// A share whose bytes do not match its rows is named by its rank, and every
// rank fails with it.
TEST(GatherWhole, AShareWithTheWrongByteCountIsNamed) {
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        LoadedState share;
        share.entries.push_back(rows_entry("w", 8, comm.rank() * 4, 4));
        if (comm.rank() == 1) share.entries[0].data.resize(7);
        auto whole = gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20));
        if (whole.is_ok() ||
            whole.status().message().find("rank 1 holds rows [4, +4) of 'w' in 7 bytes") ==
                std::string::npos) {
          return internal_error(
              fmt::format("rank {}: {}", comm.rank(), whole.status().to_string()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

}  // namespace
}  // namespace kiln::ckpt
