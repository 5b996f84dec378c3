// POSIX file helpers shared by every module: each failure is a Status naming
// the operation and the path (errno_status maps ENOSPC to ResourceExhausted,
// ENOENT to NotFound). Writes that must survive a crash go through Fs
// (fs.h) instead, so tests can inject faults into them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln {

// The whole file.
Result<std::string> read_file(const std::string& path);
// Reads exactly `n` bytes at `offset`; DataLoss if the file ends first.
Status read_at(const std::string& path, std::uint64_t offset, void* out, std::size_t n);
Result<std::uint64_t> file_size(const std::string& path);
bool path_exists(const std::string& path);
// Names in `dir` (not "." or ".."), sorted.
Result<std::vector<std::string>> list_dir(const std::string& dir);

// Writes all of `bytes` to `fd`, retrying short writes and EINTR; `what`
// names the file in errors.
Status write_all(int fd, std::string_view bytes, std::string_view what);

// mkdir -p.
Status make_dirs(const std::string& dir);

}  // namespace kiln
