#include "kiln/comm/agree.h"

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::comm {

Status agree(Communicator& comm, const Status& local, std::chrono::milliseconds timeout) {
  const int n = comm.size();
  if (n == 1) return local;
  std::int32_t failed = local.is_ok() ? 0 : 1;
  KILN_RETURN_IF_ERROR(comm.allreduce(&failed, 1, DataType::kInt32, ReduceOp::kMax)->wait(timeout));
  if (failed == 0) return Status::ok();
  // Someone failed: every rank learns who, with what code and message.
  const std::string mine = local.is_ok() ? std::string() : local.message();
  std::int64_t head[2] = {static_cast<std::int64_t>(local.code()),
                          static_cast<std::int64_t>(mine.size())};
  std::vector<std::int64_t> heads(2 * static_cast<std::size_t>(n));
  KILN_RETURN_IF_ERROR(comm.allgather(head, heads.data(), 2, DataType::kInt64)->wait(timeout));
  std::vector<std::size_t> sizes(static_cast<std::size_t>(n));
  std::size_t total = 0;
  for (int r = 0; r < n; ++r) {
    sizes[static_cast<std::size_t>(r)] = static_cast<std::size_t>(heads[2 * r + 1]);
    total += sizes[static_cast<std::size_t>(r)];
  }
  std::string all(total, '\0');
  KILN_RETURN_IF_ERROR(
      comm.allgatherv(mine.data(), all.data(), sizes, DataType::kUInt8)->wait(timeout));
  Code code = Code::kOk;
  std::string message;
  std::size_t at = 0;
  for (int r = 0; r < n; ++r) {
    const auto c = static_cast<Code>(heads[2 * r]);
    const std::size_t len = sizes[static_cast<std::size_t>(r)];
    if (c != Code::kOk) {
      if (code == Code::kOk) code = c;
      if (!message.empty()) message += "; ";
      message += fmt::format("rank {}: {}", r, std::string_view(all.data() + at, len));
    }
    at += len;
  }
  return Status(code, std::move(message));
}

}  // namespace kiln::comm
