#include "kiln/data/batch.h"

#include <utility>

namespace kiln::data {

Batch::~Batch() {
  if (pool_ != nullptr) pool_->recycle(std::move(columns), std::move(sample_ids));
}

std::shared_ptr<BatchPool> BatchPool::create(std::size_t max_free) {
  return std::shared_ptr<BatchPool>(new BatchPool(max_free));
}

Batch BatchPool::make(const Schema& schema) { return make(schema, false); }

Batch BatchPool::make_for_overwrite(const Schema& schema) { return make(schema, true); }

Batch BatchPool::make(const Schema& schema, bool keep_data_size) {
  Batch b;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++made_;
    if (!free_.empty()) {
      Buffers buffers = std::move(free_.back());
      free_.pop_back();
      ++reused_;
      b.columns = std::move(buffers.columns);
      b.sample_ids = std::move(buffers.sample_ids);
    }
  }
  b.columns.resize(schema.size());
  for (std::size_t f = 0; f < schema.size(); ++f) {
    Column& c = b.columns[f];
    c.name = schema[f].name;
    c.kind = schema[f].kind;
    c.dtype = schema[f].kind == FieldKind::kInt64 ? DType::kInt64 : schema[f].dtype;
    // clear() keeps the capacity: that is the point of the pool.
    c.shape.clear();
    if (!keep_data_size) c.data.clear();
    c.offsets.clear();
  }
  b.sample_ids.clear();
  b.pool_ = shared_from_this();
  return b;
}

void BatchPool::recycle(std::vector<Column> columns, std::vector<std::uint64_t> sample_ids) {
  if (columns.empty()) return;  // moved from: nothing worth keeping
  std::lock_guard<std::mutex> lock(mu_);
  if (free_.size() >= max_free_) return;  // freed on return
  free_.push_back({std::move(columns), std::move(sample_ids)});
}

std::uint64_t BatchPool::reused() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reused_;
}

std::uint64_t BatchPool::made() const {
  std::lock_guard<std::mutex> lock(mu_);
  return made_;
}

}  // namespace kiln::data
