#include "kiln/ckpt/gather.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <cstring>

namespace kiln::ckpt {
namespace {

using comm::DataType;

// What every rank must agree on: the tensors' names, dtypes and shapes, in
// order. A share whose rows are not its even split poisons the digest, so a
// bad share fails every rank instead of only its own.
std::uint64_t layout_digest(const LoadedState& s, int rank, int world, std::string* problem) {
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  for (const auto& e : s.entries) {
    if (!e.is_tensor) continue;
    XXH3_64bits_update(h, e.name.data(), e.name.size() + 1);
    auto dtype = static_cast<int>(e.spec.dtype);
    XXH3_64bits_update(h, &dtype, sizeof dtype);
    XXH3_64bits_update(h, e.spec.shape.data(), e.spec.shape.size() * sizeof(std::int64_t));
    RowRange want = even_rows(e.spec.shape[0], rank, world);
    if (problem->empty() &&
        (e.spec.row_offset != want.offset || e.spec.rows != want.count ||
         e.data.size() != static_cast<std::size_t>(want.count) * e.spec.row_bytes())) {
      *problem = fmt::format(
          "rank {} holds rows [{}, +{}) of '{}' ({} bytes), not its even share "
          "[{}, +{}) of {} ranks",
          rank, e.spec.row_offset, e.spec.rows, e.name, e.data.size(), want.offset, want.count,
          world);
    }
  }
  std::uint64_t d = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  return problem->empty() ? d : 0;
}

}  // namespace

Result<LoadedState> gather_whole_tensors(LoadedState share, comm::Communicator& comm,
                                         std::chrono::milliseconds timeout) {
  const int rank = comm.rank(), world = comm.size();
  std::string problem;
  std::uint64_t digest = layout_digest(share, rank, world, &problem);
  std::vector<std::uint64_t> digests(static_cast<std::size_t>(world));
  KILN_RETURN_IF_ERROR(comm.allgather(&digest, digests.data(), 1, DataType::kInt64)
                           ->wait(timeout));  // 8 bytes moved as they are
  for (int r = 0; r < world; ++r) {
    if (digests[r] == 0 || digests[r] != digests[0]) {
      return invalid_argument(fmt::format(
          "gathering whole tensors of checkpoint step {}: {}", share.step,
          !problem.empty()
              ? problem
              : fmt::format("rank {} holds other tensors than rank 0 (or a bad share)", r)));
    }
  }

  // Rank r sends its rows of every tensor back to back; every rank knows
  // each rank's byte count from the shapes alone.
  std::vector<std::size_t> counts(static_cast<std::size_t>(world), 0);
  for (const auto& e : share.entries) {
    if (!e.is_tensor) continue;
    for (int r = 0; r < world; ++r) {
      counts[r] +=
          static_cast<std::size_t>(even_rows(e.spec.shape[0], r, world).count) * e.spec.row_bytes();
    }
  }
  std::vector<std::byte> send;
  send.reserve(counts[rank]);
  for (const auto& e : share.entries) {
    if (e.is_tensor) send.insert(send.end(), e.data.begin(), e.data.end());
  }
  std::vector<std::size_t> starts(static_cast<std::size_t>(world), 0);
  for (int r = 1; r < world; ++r) starts[r] = starts[r - 1] + counts[r - 1];
  std::vector<std::byte> all(starts.back() + counts.back());
  KILN_RETURN_IF_ERROR(
      comm.allgatherv(send.data(), all.data(), counts, DataType::kUInt8)->wait(timeout));

  std::vector<std::size_t> cursor = starts;  // next unread byte of rank r's part
  for (auto& e : share.entries) {
    if (!e.is_tensor) continue;
    const std::size_t row_bytes = e.spec.row_bytes();
    std::vector<std::byte> whole(static_cast<std::size_t>(e.spec.shape[0]) * row_bytes);
    for (int r = 0; r < world; ++r) {
      RowRange rows = even_rows(e.spec.shape[0], r, world);
      const std::size_t n = static_cast<std::size_t>(rows.count) * row_bytes;
      if (n > 0) {
        std::memcpy(whole.data() + static_cast<std::size_t>(rows.offset) * row_bytes,
                    all.data() + cursor[r], n);
      }
      cursor[r] += n;
    }
    e.data = std::move(whole);
    e.spec.row_offset = 0;
    e.spec.rows = e.spec.shape[0];
  }
  return share;
}

}  // namespace kiln::ckpt
