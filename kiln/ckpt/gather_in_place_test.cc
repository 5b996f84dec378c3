// gather_whole_tensors with tensors restored in place (Note [Gathered in
// place], gather.h): each rank's memory of the whole tensor, holding only its
// own rows, ends holding every row, bit for bit; misuse fails every rank
// naming the tensor. Ranks are real processes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "kiln/ckpt/gather.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using comm::Communicator;
using comm::testing::run_ranks;
using testing::quick;
using testing::whole_rows;

constexpr std::size_t kRowBytes = 3 * sizeof(float);


// A model's tensor of `total` rows restored in place: its memory holds rows
// [lo, lo + n) and garbage elsewhere; `entry` is what recover() returned.
struct Placed {
  Placed(const std::string& name, std::int64_t total, std::int64_t lo, std::int64_t n, float salt)
      : memory(static_cast<std::size_t>(total) * kRowBytes, std::byte{0xab}),
        want(whole_rows(total, salt)),
        entry{name, true, TensorSpec{comm::DataType::kFloat32, {total, 3}, lo, n}, {}, true},
        target{name, memory.data(), memory.size(), total} {
    std::memcpy(memory.data() + lo * kRowBytes,
                reinterpret_cast<const std::byte*>(want.data()) + lo * kRowBytes,
                static_cast<std::size_t>(n) * kRowBytes);
  }
  Status check(const LoadedState& s, int rank) const {
    const LoadedEntry* e = s.find(entry.name);
    if (e == nullptr || !e->in_place || !e->data.empty() || e->spec.row_offset != 0 ||
        e->spec.rows != e->spec.shape[0]) {
      return data_loss(
          fmt::format("rank {}: '{}' does not come back whole and in place", rank, entry.name));
    }
    if (std::memcmp(memory.data(), want.data(), memory.size()) != 0) {
      return data_loss(fmt::format("rank {}: the memory of '{}' differs from the whole tensor",
                                   rank, entry.name));
    }
    return Status::ok();
  }
  std::vector<std::byte> memory;
  std::vector<float> want;
  LoadedEntry entry;
  WholeTarget target;
};

LoadedEntry copied_entry(const std::string& name, std::int64_t total, std::int64_t lo,
                         std::int64_t n, float salt) {
  std::vector<float> all = whole_rows(total, salt);
  LoadedEntry e{name, true, TensorSpec{comm::DataType::kFloat32, {total, 3}, lo, n}, {}};
  const auto* first = reinterpret_cast<const std::byte*>(all.data()) + lo * kRowBytes;
  e.data.assign(first, first + n * kRowBytes);
  return e;
}

class GatherInPlace : public ::testing::TestWithParam<int> {};

// Even splits as recover() restores them: 37 rows over 1, 3 or 4 ranks, and
// 2 rows over 4 (two ranks hold none), beside a tensor gathered by copy and
// a blob.
TEST_P(GatherInPlace, EveryRankCompletesItsTensorsWhereTheyLie) {
  const int world = GetParam();
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        const int k = comm.rank(), n = comm.size();
        const RowRange a = even_rows(37, k, n), b = even_rows(2, k, n), v = even_rows(5, k, n);
        Placed wa("wa", 37, a.offset, a.count, 1), wb("wb", 2, b.offset, b.count, 2);
        LoadedState share;
        share.entries = {wa.entry, copied_entry("v", 5, v.offset, v.count, 3), wb.entry,
                         LoadedEntry{"blob", false, {}, {std::byte{7}}}};
        const WholeTarget targets[] = {wb.target, wa.target};
        KILN_ASSIGN_OR_RETURN(
            LoadedState whole,
            gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20), targets));
        KILN_RETURN_IF_ERROR(wa.check(whole, k));
        KILN_RETURN_IF_ERROR(wb.check(whole, k));
        const LoadedEntry* e = whole.find("v");
        std::vector<float> want = whole_rows(5, 3);
        if (e == nullptr || e->in_place || e->data.size() != want.size() * 4 ||
            std::memcmp(e->data.data(), want.data(), e->data.size()) != 0) {
          return data_loss(fmt::format("rank {}: 'v' is not whole", k));
        }
        if (whole.find("blob") == nullptr) return data_loss("the blob was lost");
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

INSTANTIATE_TEST_SUITE_P(Worlds, GatherInPlace, ::testing::Values(1, 3, 4));

// Rows held out of rank order (rank 0 the second half) cannot land by one
// allgatherv: they go through the shared buffer and are copied in.
TEST(GatherInPlaceOrder, RowsHeldOutOfRankOrderAreCopiedIn) {
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        const int k = comm.rank();
        Placed w("w", 8, k == 0 ? 4 : 0, 4, 5);
        LoadedState share;
        share.entries = {w.entry};
        KILN_ASSIGN_OR_RETURN(
            LoadedState whole,
            gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20), {&w.target, 1}));
        return w.check(whole, k);
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// Every rank fails with the same InvalidArgument naming the tensor, before
// any bytes move.
void expect_every_rank_fails(
    int world,
    const std::function<LoadedState(int, std::vector<WholeTarget>*, std::vector<Placed>*)>& make,
    const std::string& want) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        std::vector<WholeTarget> targets;
        std::vector<Placed> keep;
        keep.reserve(4);
        LoadedState share = make(comm.rank(), &targets, &keep);
        auto whole =
            gather_whole_tensors(std::move(share), comm, std::chrono::seconds(20), targets);
        if (whole.is_ok() || whole.status().code() != Code::kInvalidArgument ||
            whole.status().message().find(want) == std::string::npos) {
          return internal_error(fmt::format("rank {}: want InvalidArgument with \"{}\", got {}",
                                            comm.rank(), want, whole.status().to_string()));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(GatherInPlaceErrors, AnEntryInPlaceWithoutItsMemoryIsNamed) {
  expect_every_rank_fails(
      2,
      [](int k, std::vector<WholeTarget>*, std::vector<Placed>* keep) {
        keep->emplace_back("w", 8, k * 4, 4, 0);
        LoadedState s;
        s.entries = {keep->back().entry};
        return s;
      },
      "rows of 'w' were restored in place, but no memory of the whole tensor");
}

TEST(GatherInPlaceErrors, MemoryOfAnotherSizeIsNamed) {
  expect_every_rank_fails(
      2,
      [](int k, std::vector<WholeTarget>* targets, std::vector<Placed>* keep) {
        keep->emplace_back("w", 8, k * 4, 4, 0);
        WholeTarget t = keep->back().target;
        if (k == 1) t.bytes -= kRowBytes;
        targets->push_back(t);
        LoadedState s;
        s.entries = {keep->back().entry};
        return s;
      },
      "rank 1's memory for 'w' has 84 bytes in 8 rows, the whole tensor 96 in 8");
}

TEST(GatherInPlaceErrors, ATensorInPlaceOnSomeRanksOnlyIsNamed) {
  expect_every_rank_fails(
      3,
      [](int k, std::vector<WholeTarget>* targets, std::vector<Placed>* keep) {
        const RowRange m = even_rows(9, k, 3);
        LoadedState s;
        if (k == 2) {
          s.entries = {copied_entry("w", 9, m.offset, m.count, 0)};
        } else {
          keep->emplace_back("w", 9, m.offset, m.count, 0);
          targets->push_back(keep->back().target);
          s.entries = {keep->back().entry};
        }
        return s;
      },
      "tensor 'w' was restored in place on rank 0 but not on rank 2");
}

}  // namespace
}  // namespace kiln::ckpt
