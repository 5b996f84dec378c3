// shm::Pair: a peer in the same host, reached through shared memory.
//
// Each direction is a FIFO of fixed-size slots in the receiver's segment.
// The sender copies chunks of a message into free slots; the receiver reads
// each slot in place — copying it out, or folding it straight into the
// destination for reductions (no staging copy) — and frees it. Slots are
// small enough to stay in cache, so a message streams through the FIFO in
// pipelined chunks without touching main memory twice.
//
// Threading: post/progress only from the communicator's executing thread;
// abort() from any thread (it sets a flag that progress() acts on).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>

#include "kiln/base/fd.h"
#include "kiln/comm/transport/pair.h"
#include "kiln/comm/transport/shm/segment.h"

namespace kiln::comm::transport::shm {

class ShmPair final : public Pair {
 public:
  // `mine`/`theirs`: this rank's and the peer's segments; FIFOs are indexed by
  // the sender's local rank. Received messages of at least `streaming_bytes`
  // land with streaming stores (Note [Streaming stores for large messages]).
  ShmPair(int peer_rank, std::string peer_name, std::shared_ptr<Segment> mine,
          std::shared_ptr<Segment> theirs, std::uint32_t my_local, std::uint32_t peer_local,
          int peer_pid, std::size_t streaming_bytes = SIZE_MAX);
  ~ShmPair() override;

  void post_send(const void* data, std::size_t len, Request* req) override;
  void post_recv(void* dst, std::size_t len, Request* req) override;
  void post_recv_reduce(void* dst, const void* local, std::size_t len, const Reducer& reducer,
                        Request* req) override;
  bool progress() override;
  Status check_alive() override;
  void abort(const Status& why) override;
  bool is_shm() const override { return true; }
  Result<void*> map_peer_region(const SharedRegion& region) override;
  void forget_peer_in_place_regions_except(const std::vector<std::uint64_t>& live) override;
  Status read_peer_memory(std::uint64_t remote, void* local, std::size_t bytes) override;

 private:
  // A peer that exited: aborts every operation with it.
  Status peer_gone() const;
  struct SendOp {
    const char* data;
    std::size_t len;
    std::size_t off;
    Request* req;
  };
  struct RecvOp {
    char* dst;
    const char* local;  // null: plain copy
    std::size_t len;
    std::size_t off;
    Reducer reducer;
    Request* req;
  };

  bool progress_sends();
  bool progress_recvs();
  void fail_all(const Status& why);

  std::shared_ptr<Segment> mine_;
  std::shared_ptr<Segment> theirs_;
  FifoHeader* out_;  // in the peer's segment
  FifoHeader* in_;   // in mine
  std::uint32_t out_index_;
  std::uint32_t in_index_;
  std::uint64_t out_tail_ = 0;  // our copy of out_->tail (we are its only writer)
  std::uint64_t in_head_ = 0;   // our copy of in_->head
  Doorbell* peer_bell_;
  int peer_pid_;
  Fd pidfd_;  // invalid where pidfd_open is not available
  std::size_t streaming_bytes_;

  // The peer's SharedBuffers mapped so far, by serial (Note [Peer mappings]).
  struct PeerMapping {
    void* base;
    std::size_t bytes;
    bool in_place;
    std::uint64_t last_use;  // use_clock_ at its latest map_peer_region
  };
  std::map<std::uint64_t, PeerMapping> peer_mappings_;
  std::uint64_t use_clock_ = 0;

  std::deque<SendOp> sends_;
  std::deque<RecvOp> recvs_;
  std::atomic<bool> abort_claimed_{false};
  std::atomic<bool> aborted_{false};
  Status abort_status_;  // written before aborted_ is set
};

}  // namespace kiln::comm::transport::shm
