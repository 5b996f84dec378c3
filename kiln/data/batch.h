// Batch: what the loader yields, columns of contiguous host buffers; and
// BatchPool, which recycles a dropped batch's buffers into the next one.
//
// Note [Recycled batch buffers]: a batch's columns are a few MiB. Freeing
// them and allocating fresh ones per batch costs an mmap/munmap pair and a
// page fault per 4 KiB touched (glibc serves large blocks from fresh
// mappings), which at GB/s is more than the copy itself. A Batch made by the
// loader returns its buffers to the loader's pool when it is destroyed, and
// the next batch appends into them with their capacity kept: in steady state
// collation touches only pages it touched before.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/data/sampler.h"
#include "kiln/data/schema.h"

namespace kiln::data {

// One field of a batch. int64 fields and tensors are [B, ...] row-major in
// `data`; bytes fields are concatenated in `data` with B+1 `offsets`.
struct Column {
  std::string name;
  FieldKind kind = FieldKind::kBytes;
  DType dtype = DType::kUInt8;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;
  std::vector<std::uint64_t> offsets;
};

class BatchPool;

// Its buffers stay valid (and are not reused) until the Batch is destroyed.
struct Batch {
  Batch() = default;
  Batch(const Batch&) = default;
  Batch(Batch&&) noexcept = default;
  Batch& operator=(const Batch&) = default;
  Batch& operator=(Batch&&) noexcept = default;
  ~Batch();  // hands the buffers back to the pool it came from, if any

  std::uint64_t number = 0;  // 0-based within this rank's epoch
  std::vector<std::uint64_t> sample_ids;
  std::vector<Column> columns;
  SamplerState state_after;  // save this (with every rank at the same step) to resume after it
  double wait_seconds = 0;   // how long next() blocked for this batch

 private:
  friend class BatchPool;
  std::shared_ptr<BatchPool> pool_;
};

// Thread-safe. Holds at most `max_free` sets of buffers; more are freed.
// Owned by shared_ptr so a batch may outlive the loader that made it.
class BatchPool : public std::enable_shared_from_this<BatchPool> {
 public:
  static std::shared_ptr<BatchPool> create(std::size_t max_free);

  // A batch with one empty column per schema field (capacity from a recycled
  // batch where one is free), returning its buffers here when destroyed.
  Batch make(const Schema& schema);

  // Like make(), but each column's `data` keeps the size it had in the
  // recycled batch, its contents unspecified: a builder that resizes it to
  // what it then overwrites in full pays no zero fill while the size stays
  // the same, as it does from batch to batch (Note [Collate with plain
  // stores] in loader.cc). `shape` and `offsets` are empty, as from make().
  Batch make_for_overwrite(const Schema& schema);

  std::uint64_t reused() const;  // batches made from recycled buffers
  std::uint64_t made() const;    // all batches made

 private:
  friend struct Batch;
  explicit BatchPool(std::size_t max_free) : max_free_(max_free) {}
  void recycle(std::vector<Column> columns, std::vector<std::uint64_t> sample_ids);
  Batch make(const Schema& schema, bool keep_data_size);

  struct Buffers {
    std::vector<Column> columns;
    std::vector<std::uint64_t> sample_ids;
  };
  const std::size_t max_free_;
  mutable std::mutex mu_;
  std::vector<Buffers> free_;  // GUARDED_BY(mu_)
  std::uint64_t reused_ = 0;   // GUARDED_BY(mu_)
  std::uint64_t made_ = 0;     // GUARDED_BY(mu_)
};

}  // namespace kiln::data
