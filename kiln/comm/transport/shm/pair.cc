#include "kiln/comm/transport/shm/pair.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace kiln::comm::transport::shm {

ShmPair::ShmPair(int peer_rank, std::string peer_name, std::shared_ptr<Segment> mine,
                 std::shared_ptr<Segment> theirs, std::uint32_t my_local, std::uint32_t peer_local,
                 int peer_pid, std::size_t streaming_bytes)
    : Pair(peer_rank, std::move(peer_name)),
      mine_(std::move(mine)),
      theirs_(std::move(theirs)),
      out_(theirs_->fifo(my_local)),
      in_(mine_->fifo(peer_local)),
      out_index_(my_local),
      in_index_(peer_local),
      peer_bell_(&theirs_->header()->doorbell),
      peer_pid_(peer_pid),
      streaming_bytes_(streaming_bytes) {
  // A pidfd turns "is the peer still alive" into a poll, immune to pid reuse.
  pidfd_.reset(static_cast<int>(syscall(SYS_pidfd_open, peer_pid, 0)));
}

ShmPair::~ShmPair() {
  for (auto& [serial, m] : peer_mappings_) munmap(m.base, m.bytes);
}

// Note [Peer mappings]: a peer's SharedBuffer is mapped on first use and kept
// (a large buffer costs a page-table fill to map), keyed by the serial the
// peer gave it, since the peer reuses fd numbers after a free. A mapping of
// a buffer the peer has since freed keeps its pages alive, so at most
// kMaxPeerMappings stay; the least recently used goes first. Not the oldest
// serial: a collective maps its send region and then its recv region, and
// the recv's mapping must not unmap the send's, which may be the oldest
// (a buffer allocated once and reused, as a model's gradient buckets).
// Memory shared in place (Note [Sharing user memory in place]) is the
// user's, freed whenever the user likes: its owner lists the in-place
// serials it still holds in every direct allreduce's offer, and the others'
// mappings go then (forget_peer_in_place_regions_except).
constexpr std::size_t kMaxPeerMappings = 64;

Result<void*> ShmPair::map_peer_region(const SharedRegion& region) {
  auto it = peer_mappings_.find(region.serial);
  if (it == peer_mappings_.end()) {
    const std::string path = fmt::format("/proc/{}/fd/{}", peer_pid_, region.fd);
    Fd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) {
      return errno_status(fmt::format("map {}'s shared buffer {}", peer_name(), path), errno);
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != region.buffer_bytes) {
      return data_loss(fmt::format("{}'s shared buffer {} is {} bytes, not the {} it announced",
                                   peer_name(), path, st.st_size, region.buffer_bytes));
    }
    void* base = mmap(nullptr, region.buffer_bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (base == MAP_FAILED) {
      return errno_status(fmt::format("map {}'s shared buffer {} ({} bytes)", peer_name(), path,
                                      region.buffer_bytes),
                          errno);
    }
    if (peer_mappings_.size() >= kMaxPeerMappings) {
      auto lru = std::min_element(
          peer_mappings_.begin(), peer_mappings_.end(),
          [](const auto& a, const auto& b) { return a.second.last_use < b.second.last_use; });
      munmap(lru->second.base, lru->second.bytes);
      peer_mappings_.erase(lru);
    }
    it = peer_mappings_
             .emplace(region.serial, PeerMapping{base, region.buffer_bytes, region.in_place, 0})
             .first;
  }
  it->second.last_use = ++use_clock_;
  if (region.offset > it->second.bytes) {
    return invalid_argument(fmt::format("{}'s shared buffer region starts at {}, past its {} bytes",
                                        peer_name(), region.offset, it->second.bytes));
  }
  return static_cast<char*>(it->second.base) + region.offset;
}

void ShmPair::forget_peer_in_place_regions_except(const std::vector<std::uint64_t>& live) {
  std::erase_if(peer_mappings_, [&live](const auto& entry) {
    const auto& [serial, m] = entry;
    if (!m.in_place || std::find(live.begin(), live.end(), serial) != live.end()) return false;
    munmap(m.base, m.bytes);
    return true;
  });
}

void ShmPair::post_send(const void* data, std::size_t len, Request* req) {
  req->pair = this;
  if (aborted_.load(std::memory_order_acquire)) return req->fail(abort_status_);
  if (len == 0) return req->complete();
  sends_.push_back({static_cast<const char*>(data), len, 0, req});
  progress_sends();
}

void ShmPair::post_recv(void* dst, std::size_t len, Request* req) {
  req->pair = this;
  if (aborted_.load(std::memory_order_acquire)) return req->fail(abort_status_);
  if (len == 0) return req->complete();
  recvs_.push_back({static_cast<char*>(dst), nullptr, len, 0, {}, req});
}

void ShmPair::post_recv_reduce(void* dst, const void* local, std::size_t len,
                               const Reducer& reducer, Request* req) {
  req->pair = this;
  if (aborted_.load(std::memory_order_acquire)) return req->fail(abort_status_);
  if (len == 0) return req->complete();
  recvs_.push_back(
      {static_cast<char*>(dst), static_cast<const char*>(local), len, 0, reducer, req});
}

bool ShmPair::progress_sends() {
  bool moved = false;
  const std::uint32_t nslots = theirs_->layout().nslots;
  const std::size_t slot_bytes = theirs_->layout().slot_bytes;
  while (!sends_.empty()) {
    SendOp& op = sends_.front();
    std::uint64_t head = out_->head.load(std::memory_order_acquire);
    while (op.off < op.len && out_tail_ - head < nslots) {
      SlotHeader* slot = theirs_->slot(out_index_, out_tail_);
      std::size_t n = std::min(slot_bytes, op.len - op.off);
      slot->message_len = op.len;
      slot->chunk_bytes = n;
      std::memcpy(Segment::slot_data(slot), op.data + op.off, n);
      out_->tail.store(++out_tail_, std::memory_order_release);
      peer_bell_->ring();
      op.off += n;
      moved = true;
      if (out_tail_ - head >= nslots) head = out_->head.load(std::memory_order_acquire);
    }
    if (op.off < op.len) break;
    op.req->complete();
    sends_.pop_front();
  }
  return moved;
}

bool ShmPair::progress_recvs() {
  bool moved = false;
  while (!recvs_.empty()) {
    RecvOp& op = recvs_.front();
    std::uint64_t tail = in_->tail.load(std::memory_order_acquire);
    while (op.off < op.len && in_head_ < tail) {
      SlotHeader* slot = mine_->slot(in_index_, in_head_);
      std::size_t n = slot->chunk_bytes;
      if (slot->message_len != op.len || n > op.len - op.off) {
        Status s = invalid_argument(fmt::format(
            "message size mismatch with {}: it sent {} bytes where this rank expected {} "
            "(the ranks issued different operations or counts)",
            peer_name(), slot->message_len, op.len));
        abort(s);
        fail_all(s);
        return true;
      }
      const void* src = Segment::slot_data(slot);
      const bool stream = op.len >= streaming_bytes_;  // Note [Streaming stores for large messages]
      if (op.local != nullptr) {
        if (stream) {
          op.reducer.streaming(op.dst + op.off, op.local + op.off, src, n, /*fence=*/false);
        } else {
          op.reducer(op.dst + op.off, op.local + op.off, src, n);
        }
      } else if (stream) {
        copy_streaming(op.dst + op.off, src, n, /*fence=*/false);
      } else {
        std::memcpy(op.dst + op.off, src, n);
      }
      in_->head.store(++in_head_, std::memory_order_release);
      peer_bell_->ring();
      op.off += n;
      moved = true;
      if (in_head_ == tail) tail = in_->tail.load(std::memory_order_acquire);
    }
    if (op.off < op.len) break;
    // The chunks landed unfenced: one fence for the message, before anyone
    // learns it is complete (Note [Streaming stores for large messages]).
    if (op.len >= streaming_bytes_) streaming_fence();
    op.req->complete();
    recvs_.pop_front();
  }
  return moved;
}

bool ShmPair::progress() {
  if (aborted_.load(std::memory_order_acquire)) {
    fail_all(abort_status_);
    return true;
  }
  bool a = progress_sends();
  bool b = progress_recvs();
  return a || b;
}

Status ShmPair::read_peer_memory(std::uint64_t remote, void* local, std::size_t bytes) {
  if (aborted_.load(std::memory_order_acquire)) return abort_status_;
  auto* to = static_cast<char*>(local);
  while (bytes > 0) {
    iovec mine{to, bytes};
    iovec theirs{reinterpret_cast<void*>(remote), bytes};
    const ssize_t n = process_vm_readv(peer_pid_, &mine, 1, &theirs, 1, 0);
    if (n > 0) {
      to += n;
      remote += static_cast<std::uint64_t>(n);
      bytes -= static_cast<std::size_t>(n);
      continue;
    }
    const int err = n == 0 ? EFAULT : errno;
    if (err == EINTR) continue;
    if (err == ESRCH) {
      return peer_gone();
    }
    const std::string what = fmt::format("read {} bytes of {}'s memory at {:#x} (process_vm_readv)",
                                         bytes, peer_name(), remote);
    if (err == EPERM || err == ENOSYS || err == EACCES) {
      return failed_precondition(fmt::format("{}: refused: {}", what, std::strerror(err)));
    }
    return errno_status(what, err);
  }
  return Status::ok();
}

Status ShmPair::peer_gone() const {
  return aborted(fmt::format("{} exited (process {} is gone)", peer_name(), peer_pid_));
}

Status ShmPair::check_alive() {
  bool dead = false;
  if (pidfd_.valid()) {
    pollfd p{pidfd_.get(), POLLIN, 0};
    dead = poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
  } else {
    dead = kill(peer_pid_, 0) != 0 && errno == ESRCH;
  }
  if (dead) {
    return peer_gone();
  }
  return Status::ok();
}

void ShmPair::abort(const Status& why) {
  if (abort_claimed_.exchange(true, std::memory_order_acq_rel)) return;  // first reason wins
  abort_status_ = why;
  aborted_.store(true, std::memory_order_release);
}

void ShmPair::fail_all(const Status& why) {
  for (auto& op : sends_) op.req->fail(why);
  for (auto& op : recvs_) op.req->fail(why);
  sends_.clear();
  recvs_.clear();
}

}  // namespace kiln::comm::transport::shm
