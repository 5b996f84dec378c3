// A file mapped into memory, for the in-memory checkpoint tier: snapshots on
// tmpfs are sent straight from, and received straight into, their pages
// (no staging copy). Internal to kiln/ckpt.
#pragma once

#include <cstddef>
#include <string>

#include "kiln/base/status.h"

namespace kiln::ckpt::internal {

class MappedFile {
 public:
  // Maps an existing file read-only.
  static Result<MappedFile> open_read(const std::string& path);
  // Creates (truncating) a file of `size` bytes and maps it writable.
  // ResourceExhausted when the filesystem has no room for it.
  static Result<MappedFile> create(const std::string& path, std::size_t size);

  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile();

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  MappedFile(std::byte* data, std::size_t size) : data_(data), size_(size) {}
  std::byte* data_;
  std::size_t size_;
};

}  // namespace kiln::ckpt::internal
