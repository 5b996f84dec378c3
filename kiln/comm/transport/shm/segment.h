// Segment: one rank's POSIX shared-memory region, holding its doorbell, the
// group abort flag, and one inbound FIFO per local peer (the receiver owns
// the FIFOs it reads; senders map the receiver's segment to write them).
//
// Layout (all offsets fixed by SegmentLayout):
//   SegmentHeader | Fifo[0] | Fifo[1] | ... (one per local peer index)
//   Fifo = FifoHeader | slots[nslots] × (SlotHeader + slot_bytes)
// The name is unlinked once every peer has mapped it, so a crash leaks
// nothing in /dev/shm.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/status.h"
#include "kiln/comm/transport/doorbell.h"

namespace kiln::comm::transport::shm {

inline constexpr std::uint64_t kSegmentMagic = 0x4b494c4e53484d31ull;  // "KILNSHM1"

struct alignas(64) SegmentHeader {
  std::uint64_t magic;
  std::uint32_t nfifos;
  std::uint32_t nslots;
  std::uint64_t slot_bytes;
  std::int32_t owner_rank;
  std::int32_t owner_pid;
  alignas(64) Doorbell doorbell;
  alignas(64) std::atomic<std::uint32_t> aborted;  // 1 + the rank that aborted the group; 0 = none
};

struct alignas(64) FifoHeader {
  alignas(64) std::atomic<std::uint64_t> tail;  // slots written; only the sender stores
  alignas(64) std::atomic<std::uint64_t> head;  // slots consumed; only the receiver stores
};

struct alignas(64) SlotHeader {
  std::uint64_t message_len;  // length of the whole message this chunk belongs to
  std::uint64_t chunk_bytes;  // payload bytes in this slot
};

struct SegmentLayout {
  std::uint32_t nfifos;
  std::uint32_t nslots;
  std::uint64_t slot_bytes;

  std::size_t slot_stride() const { return sizeof(SlotHeader) + slot_bytes; }
  std::size_t fifo_stride() const { return sizeof(FifoHeader) + nslots * slot_stride(); }
  std::size_t total() const { return sizeof(SegmentHeader) + nfifos * fifo_stride(); }
  std::size_t fifo_offset(std::uint32_t i) const { return sizeof(SegmentHeader) + i * fifo_stride(); }
};

class Segment {
 public:
  // Creates and maps this rank's segment (pre-faulted: first-touch page
  // faults would otherwise land in the first collectives).
  static Result<std::unique_ptr<Segment>> create(const std::string& name, SegmentLayout layout,
                                                 int owner_rank);
  // Maps a peer's segment and checks its header.
  static Result<std::unique_ptr<Segment>> open(const std::string& name, int expected_owner);
  ~Segment();

  SegmentHeader* header() const { return static_cast<SegmentHeader*>(base_); }
  const SegmentLayout& layout() const { return layout_; }
  FifoHeader* fifo(std::uint32_t i) const {
    return reinterpret_cast<FifoHeader*>(static_cast<char*>(base_) + layout_.fifo_offset(i));
  }
  SlotHeader* slot(std::uint32_t fifo_index, std::uint64_t seq) const {
    char* first = reinterpret_cast<char*>(fifo(fifo_index)) + sizeof(FifoHeader);
    return reinterpret_cast<SlotHeader*>(first + (seq % layout_.nslots) * layout_.slot_stride());
  }
  static void* slot_data(SlotHeader* s) { return s + 1; }

  const std::string& name() const { return name_; }
  // Removes the name from /dev/shm; mappings stay valid.
  void unlink();

 private:
  Segment(std::string name, void* base, std::size_t size, SegmentLayout layout, bool owner)
      : name_(std::move(name)), base_(base), size_(size), layout_(layout), owner_(owner) {}
  std::string name_;
  void* base_;
  std::size_t size_;
  SegmentLayout layout_;
  bool owner_;
  bool unlinked_ = false;
};

}  // namespace kiln::comm::transport::shm
