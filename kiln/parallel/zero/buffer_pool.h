// BufferPool: CPU memory blocks that a sharded wrapper takes and gives back
// every step (stage 3's gathered parameters, stages 2-3's reduction
// staging), kept instead of freed.
//
// Why: a multi-MiB block from malloc is usually fresh mmap'd memory, faulted
// in page by page on first touch. On the 2-core VM of docs/perf.md one such
// 16 MiB block cost 140 ms of faults against 1.5 ms reused, on the training
// thread (staging) or the communication thread (a gather's receive), every
// unit of every step. The CUDA caching allocator spares FSDP the same cost.
//
// A block handed out is an ordinary c10::DataPtr from the CPU allocator in
// use (the counting allocator included, so a memory cap sees pooled blocks
// as held); its deleter gives it back to the pool, which keeps at most
// `max_idle` idle blocks (the largest) and frees the rest. The pool state is
// shared with the blocks, so a block may outlive the BufferPool object.
//
// Thread-safe: blocks may be taken and given back from any thread.
#pragma once

#include <cstddef>
#include <memory>

#include <c10/core/Allocator.h>
#include <torch/torch.h>

namespace kiln::parallel::zero {

class BufferPool {
 public:
  explicit BufferPool(std::size_t max_idle);
  ~BufferPool();  // frees the idle blocks; blocks in use are freed when given back
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A block of at least `bytes`: the smallest idle one that is large enough,
  // else a new one of exactly `bytes` (which may throw, as the allocator does
  // past a memory cap). Given back when the DataPtr is destroyed.
  c10::DataPtr allocate(std::size_t bytes);
  // A 1-D tensor of `numel` elements over a block (uninitialised).
  torch::Tensor empty(std::int64_t numel, torch::ScalarType dtype);

  void set_max_idle(std::size_t n);
  // Bytes of every block the pool made and has not freed, idle or in use.
  std::size_t held_bytes() const;
  std::size_t idle_bytes() const;

 private:
  struct State;
  struct Lent;
  static void give_back(void* lent);
  std::shared_ptr<State> state_;
};

}  // namespace kiln::parallel::zero
