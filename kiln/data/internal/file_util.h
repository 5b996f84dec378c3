// Small POSIX file helpers shared inside kiln/data (not for other modules).
#pragma once

#include <string>

#include "kiln/base/status.h"

namespace kiln::data::internal {

Result<std::string> read_file(const std::string& path);

// Commit by rename: data to `path`.tmp.<pid>, fsync, rename, fsync the directory.
Status write_file_atomic(const std::string& path, const std::string& contents);

Status fsync_dir(const std::string& dir);

// mkdir -p.
Status make_dirs(const std::string& dir);

}  // namespace kiln::data::internal
