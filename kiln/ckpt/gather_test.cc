// gather_whole_tensors: every rank ends with the whole tensors, bit for bit,
// from the shares the ranks hold; mismatched shares fail every rank before
// any bytes move. Ranks are real processes.
#include "kiln/ckpt/gather.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using testing::quick;

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

TEST(GatherWhole, RanksHoldingOtherTensorsAllFailBeforeMovingBytes) {
  TempDir tmp;
  const std::string root = tmp.path() + "/ckpt";
  save(root, 2, 3, 37);
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(LoadedState share, share_from_storage(root, comm));
        if (comm.rank() == 1) share.entries[0].name = "renamed";
        auto whole = gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20));
        if (whole.is_ok() || whole.status().code() != Code::kInvalidArgument) {
          return internal_error(fmt::format("rank {}: want InvalidArgument, got {}", comm.rank(),
                                            whole.status().to_string()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(GatherWhole, AShareThatIsNotTheEvenSplitIsNamed) {
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
        if (comm.rank() == 0 && whole.status().message().find("'w0'") == std::string::npos) {
          return internal_error("the error does not name w0: " + whole.status().to_string());
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

}  // namespace
}  // namespace kiln::ckpt
