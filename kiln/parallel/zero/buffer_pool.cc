#include "kiln/parallel/zero/buffer_pool.h"

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

namespace kiln::parallel::zero {

struct BufferPool::State {
  mutable std::mutex mu;
  std::vector<std::pair<std::size_t, c10::DataPtr>> idle;  // GUARDED_BY(mu), any order
  std::size_t max_idle;                                     // GUARDED_BY(mu)
  std::size_t held = 0;                                     // GUARDED_BY(mu)
  bool open = true;                                         // GUARDED_BY(mu)

  // Frees idle blocks beyond max_idle, smallest first; returns them so the
  // caller frees them outside the lock.
  std::vector<c10::DataPtr> trim() {
    std::vector<c10::DataPtr> out;
    if (idle.size() <= max_idle) return out;
    std::sort(idle.begin(), idle.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    while (idle.size() > max_idle) {
      held -= idle.back().first;
      out.push_back(std::move(idle.back().second));
      idle.pop_back();
    }
    return out;
  }
};

// The context of a lent block: the raw block and the pool it returns to.
struct BufferPool::Lent {
  std::shared_ptr<State> state;
  c10::DataPtr raw;
  std::size_t bytes;
};

void BufferPool::give_back(void* context) {
  std::unique_ptr<Lent> lent(static_cast<Lent*>(context));
  std::vector<c10::DataPtr> to_free;
  {
    std::lock_guard<std::mutex> lock(lent->state->mu);
    if (lent->state->open) {
      lent->state->idle.emplace_back(lent->bytes, std::move(lent->raw));
      to_free = lent->state->trim();
    } else {
      lent->state->held -= lent->bytes;
    }
  }
  // lent->raw (when the pool is closed) and to_free are freed here, unlocked.
}

BufferPool::BufferPool(std::size_t max_idle) : state_(std::make_shared<State>()) {
  state_->max_idle = max_idle;
}

BufferPool::~BufferPool() {
  std::vector<std::pair<std::size_t, c10::DataPtr>> idle;
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->open = false;
  for (auto& [bytes, ptr] : state_->idle) state_->held -= bytes;
  idle.swap(state_->idle);
}

c10::DataPtr BufferPool::allocate(std::size_t bytes) {
  c10::DataPtr raw;
  std::size_t size = bytes;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto best = state_->idle.end();
    for (auto it = state_->idle.begin(); it != state_->idle.end(); ++it) {
      if (it->first >= bytes && (best == state_->idle.end() || it->first < best->first)) best = it;
    }
    if (best != state_->idle.end()) {
      size = best->first;
      raw = std::move(best->second);
      state_->idle.erase(best);
    }
  }
  if (!raw) {
    raw = c10::GetCPUAllocator()->allocate(bytes);  // may throw (a memory cap)
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->held += bytes;
  }
  void* data = raw.get();
  auto* lent = new Lent{state_, std::move(raw), size};
  return c10::DataPtr(data, lent, &give_back, c10::Device(c10::kCPU));
}

torch::Tensor BufferPool::empty(std::int64_t numel, torch::ScalarType dtype) {
  const std::size_t bytes = static_cast<std::size_t>(numel) * c10::elementSize(dtype);
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, allocate(bytes), nullptr, false);
  return torch::empty({0}, torch::TensorOptions().dtype(dtype)).set_(storage, 0, {numel}, {1});
}

void BufferPool::set_max_idle(std::size_t n) {
  std::vector<c10::DataPtr> to_free;
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->max_idle = n;
  to_free = state_->trim();
}

std::size_t BufferPool::held_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->held;
}

std::size_t BufferPool::idle_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::size_t n = 0;
  for (const auto& [bytes, ptr] : state_->idle) n += bytes;
  return n;
}

}  // namespace kiln::parallel::zero
