// The state a checkpoint holds, framework-agnostic: named entries that are
// either tensors (dtype, global shape, and this rank's rows of it along dim 0)
// or byte blobs (optimizer/RNG/sampler state, the step).
//
// Sharding: a tensor of global shape [R, ...] is split along dim 0; each
// rank saves rows [row_offset, row_offset + rows). A replicated tensor is
// saved by every rank with row_offset 0 and rows R (the loader reads one
// copy). Blobs are per rank: on load, rank r gets the blob that saved rank
// r % saved_world_size wrote (Note [Blobs across world sizes] in docs/formats.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/types.h"

namespace kiln::ckpt {

struct TensorSpec {
  comm::DataType dtype = comm::DataType::kFloat32;
  std::vector<std::int64_t> shape;  // global shape, at least one dimension
  std::int64_t row_offset = 0;      // this rank's first row along dim 0
  std::int64_t rows = 0;            // this rank's number of rows

  // Bytes of one row: dtype size × the product of shape[1:].
  std::size_t row_bytes() const;
};

struct EntryView {
  std::string name;
  bool is_tensor = false;
  TensorSpec spec;  // tensors only
  const std::byte* data = nullptr;
  std::size_t bytes = 0;
};

// Non-owning views of the caller's memory. The memory must stay valid and
// unchanged until the save call that takes the view returns (that call copies
// it into staging memory); it may change freely afterwards.
class StateView {
 public:
  // InvalidArgument: duplicate name, empty shape, rows outside shape[0].
  Status add_tensor(std::string name, comm::DataType dtype, std::vector<std::int64_t> shape,
                    std::int64_t row_offset, std::int64_t rows, const void* data);
  // A tensor this rank holds whole (row_offset 0, rows = shape[0]).
  Status add_replicated(std::string name, comm::DataType dtype, std::vector<std::int64_t> shape,
                        const void* data);
  Status add_blob(std::string name, const void* data, std::size_t bytes);

  const std::vector<EntryView>& entries() const { return entries_; }
  std::size_t total_bytes() const;

 private:
  Status check_name(const std::string& name) const;
  std::vector<EntryView> entries_;
};

struct LoadedEntry {
  std::string name;
  bool is_tensor = false;
  TensorSpec spec;  // tensors: this rank's rows under the loading world size
  std::vector<std::byte> data;
  // The bytes went straight into the caller's memory (MemoryTier::recover's
  // targets); `data` is empty then.
  bool in_place = false;
};

struct LoadedState {
  std::int64_t step = -1;
  std::string dir;  // the step directory it came from
  int saved_world_size = 0;
  std::vector<LoadedEntry> entries;

  const LoadedEntry* find(const std::string& name) const;
};

// Rows [offset, offset + count) of `total` that `rank` of `world` holds under
// the even split the loader uses (the first total % world ranks get one more).
struct RowRange {
  std::int64_t offset = 0;
  std::int64_t count = 0;
};
RowRange even_rows(std::int64_t total, int rank, int world);

}  // namespace kiln::ckpt
