#include "kiln/ckpt/state.h"

#include <fmt/format.h>

namespace kiln::ckpt {

std::size_t TensorSpec::row_bytes() const {
  std::size_t n = comm::dtype_size(dtype);
  for (std::size_t i = 1; i < shape.size(); ++i) n *= static_cast<std::size_t>(shape[i]);
  return n;
}

Status StateView::check_name(const std::string& name) const {
  if (name.empty()) return invalid_argument("checkpoint entry with an empty name");
  for (const auto& e : entries_) {
    if (e.name == name)
      return invalid_argument(fmt::format("checkpoint entry '{}' added twice", name));
  }
  return Status::ok();
}

Status StateView::add_tensor(std::string name, comm::DataType dtype,
                             std::vector<std::int64_t> shape, std::int64_t row_offset,
                             std::int64_t rows, const void* data) {
  KILN_RETURN_IF_ERROR(check_name(name));
  if (shape.empty()) {
    return invalid_argument(
        fmt::format("tensor '{}': empty shape (use shape {{1}} for a scalar)", name));
  }
  for (auto d : shape) {
    if (d < 0) return invalid_argument(fmt::format("tensor '{}': negative dimension {}", name, d));
  }
  if (row_offset < 0 || rows < 0 || row_offset + rows > shape[0]) {
    return invalid_argument(fmt::format("tensor '{}': rows [{}, {}) outside dim 0 of size {}", name,
                                        row_offset, row_offset + rows, shape[0]));
  }
  EntryView e;
  e.name = std::move(name);
  e.is_tensor = true;
  e.spec = TensorSpec{dtype, std::move(shape), row_offset, rows};
  e.data = static_cast<const std::byte*>(data);
  e.bytes = static_cast<std::size_t>(rows) * e.spec.row_bytes();
  if (e.bytes > 0 && data == nullptr) {
    return invalid_argument(fmt::format("tensor '{}': null data for {} bytes", e.name, e.bytes));
  }
  entries_.push_back(std::move(e));
  return Status::ok();
}

Status StateView::add_replicated(std::string name, comm::DataType dtype,
                                 std::vector<std::int64_t> shape, const void* data) {
  std::int64_t rows = shape.empty() ? 0 : shape[0];
  return add_tensor(std::move(name), dtype, std::move(shape), 0, rows, data);
}

Status StateView::add_blob(std::string name, const void* data, std::size_t bytes) {
  KILN_RETURN_IF_ERROR(check_name(name));
  if (bytes > 0 && data == nullptr) {
    return invalid_argument(fmt::format("blob '{}': null data for {} bytes", name, bytes));
  }
  EntryView e;
  e.name = std::move(name);
  e.data = static_cast<const std::byte*>(data);
  e.bytes = bytes;
  entries_.push_back(std::move(e));
  return Status::ok();
}

std::size_t StateView::total_bytes() const {
  std::size_t n = 0;
  for (const auto& e : entries_) n += e.bytes;
  return n;
}

const LoadedEntry* LoadedState::find(const std::string& name) const {
  for (const auto& e : entries) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

RowRange even_rows(std::int64_t total, int rank, int world) {
  std::int64_t base = total / world, extra = total % world;
  std::int64_t count = base + (rank < extra ? 1 : 0);
  std::int64_t offset = rank * base + std::min<std::int64_t>(rank, extra);
  return {offset, count};
}

}  // namespace kiln::ckpt
