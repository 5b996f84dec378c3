// IDX files (the MNIST family's format), gzip-compressed or plain: a big-endian
// header (magic 0x0000 + element type + rank, then one uint32 per dimension)
// followed by the elements. Only unsigned-byte elements are read: every
// (Fashion-)MNIST file uses them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::data::convert {

struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> data;  // row-major, product(dims) bytes
};

// Reads `path` (".gz" or not: zlib reads both). InvalidArgument naming the
// file and the header field for a bad magic, element type or rank;
// DataLoss for a file shorter than its header says.
Result<IdxArray> read_idx(const std::string& path);

}  // namespace kiln::data::convert
