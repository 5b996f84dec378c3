#include "kiln/diag/aggregate.h"

#include <fmt/format.h>

#include <cstring>

namespace kiln::diag {
namespace {

// The summary travels as bytes with its layout's size and a magic in front,
// so a peer built with another RankSummary fails loudly instead of being
// misread.
struct Wire {
  std::uint32_t magic;
  std::uint32_t size;
  RankSummary summary;
};
constexpr std::uint32_t kMagic = 0x4b444731;  // "KDG1"

}  // namespace

Result<std::vector<RankSummary>> gather_summaries(comm::Communicator& comm, const RankSummary& mine,
                                                  std::chrono::milliseconds timeout) {
  Wire send{kMagic, static_cast<std::uint32_t>(sizeof(RankSummary)), mine};
  send.summary.rank = comm.rank();
  std::vector<Wire> recv(static_cast<size_t>(comm.size()));
  auto work = comm.allgather(&send, recv.data(), sizeof(Wire), comm::DataType::kUInt8);
  Status st = work->wait(timeout);
  if (!st.is_ok()) {
    return st.with_context(fmt::format("diag: gathering step summaries on rank {}", comm.rank()));
  }
  std::vector<RankSummary> out;
  out.reserve(recv.size());
  for (size_t i = 0; i < recv.size(); ++i) {
    if (recv[i].magic != kMagic || recv[i].size != sizeof(RankSummary)) {
      return internal_error(fmt::format(
          "diag: rank {}'s step summary has another layout (magic {:#x}, {} bytes; expected "
          "{:#x}, {} bytes): are all ranks running the same kiln build?",
          i, recv[i].magic, recv[i].size, kMagic, sizeof(RankSummary)));
    }
    out.push_back(recv[i].summary);
  }
  return out;
}

}  // namespace kiln::diag
