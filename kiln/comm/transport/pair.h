// Pair: the connection to one peer, the only thing algorithms talk to.
//
// Messages on a pair are matched in posting order: the k-th send on one side
// is the k-th receive on the other, and their lengths must agree (a mismatch
// fails the receive with an error naming both lengths). Posting never blocks;
// buffers stay owned by the caller and must live until the request is done.
// Post and progress are called from the communicator's one executing thread;
// a transport may also complete requests from its own progress thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/status.h"
#include "kiln/comm/reduce.h"
#include "kiln/comm/shared_buffer.h"
#include "kiln/comm/transport/request.h"

namespace kiln::comm::transport {

class Pair {
 public:
  virtual ~Pair() = default;

  virtual void post_send(const void* data, std::size_t len, Request* req) = 0;
  virtual void post_recv(void* dst, std::size_t len, Request* req) = 0;
  // Receives len bytes and folds them in as they arrive:
  // dst = local OP incoming. dst may equal local.
  virtual void post_recv_reduce(void* dst, const void* local, std::size_t len,
                                const Reducer& reducer, Request* req) = 0;

  // Moves data without blocking; returns whether anything moved.
  virtual bool progress() = 0;

  // When the waiter is blocked on this pair: an error if the peer is known to
  // be gone (process exited, connection closed), else ok.
  virtual Status check_alive() = 0;

  // Fails every pending request with `why` and stops using the connection.
  virtual void abort(const Status& why) = 0;

  virtual bool is_shm() const = 0;

  // The peer's SharedBuffer region (as the peer's find_shared_region
  // described it), mapped into this process: valid while the peer keeps the
  // buffer and this pair lives. Only pairs to peers on this host can.
  virtual Result<void*> map_peer_region(const SharedRegion& region) {
    (void)region;
    return failed_precondition(fmt::format("{} is not on this host: its memory cannot be mapped", peer_name_));
  }
  // Unmaps this pair's mappings of the peer's in-place shares
  // (shared_in_place.h) whose serials are not in `live`: the peer no longer
  // holds that memory, and the mapping would keep its pages allocated.
  virtual void forget_peer_in_place_regions_except(const std::vector<std::uint64_t>& live) {
    (void)live;
  }
  // Cross-memory attach (Note [Single-copy allreduce through the kernel],
  // kiln/comm/algo/cma.cc): copies `bytes` from the peer's virtual address
  // `remote` into `local`. Only pairs to peers on this host can; a refusal by
  // the kernel (EPERM, ENOSYS) is failed_precondition, a peer gone aborted.
  virtual Status read_peer_memory(std::uint64_t remote, void* local, std::size_t bytes) {
    (void)remote, (void)local, (void)bytes;
    return failed_precondition(
        fmt::format("{} is not on this host: its memory cannot be read", peer_name_));
  }
  int peer_rank() const { return peer_rank_; }
  // "rank 3 (host-b, pid 4242)": for error messages.
  const std::string& peer_name() const { return peer_name_; }

 protected:
  Pair(int peer_rank, std::string peer_name)
      : peer_rank_(peer_rank), peer_name_(std::move(peer_name)) {}

 private:
  int peer_rank_;
  std::string peer_name_;
};

}  // namespace kiln::comm::transport
