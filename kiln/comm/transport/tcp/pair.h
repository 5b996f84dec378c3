// tcp::Pair: a peer on another host, over one non-blocking TCP socket.
//
// Each message travels as a 16-byte header (magic, length) and its payload,
// written straight from the caller's buffer and read straight into the
// destination; reductions read into a small per-pair staging buffer and fold
// it in, element-aligned, as it arrives. Progress comes from two places: the
// waiting thread polls (lowest latency while it spins) and the Device's epoll
// thread drives the socket when nobody polls (so transfers continue while the
// waiter sleeps or computes).
//
// Threading: post/progress from the executing thread, on_ready from the
// epoll thread, abort from any thread; all state is guarded by mu_.
#pragma once

#include <deque>
#include <mutex>
#include <vector>

#include "kiln/comm/transport/doorbell.h"
#include "kiln/comm/transport/pair.h"
#include "kiln/comm/transport/tcp/socket.h"

namespace kiln::comm::transport::tcp {

inline constexpr std::uint32_t kMessageMagic = 0x4b4d5347;  // "KMSG"

struct MessageHeader {
  std::uint32_t magic;
  std::uint32_t reserved;
  std::uint64_t length;
};
static_assert(sizeof(MessageHeader) == 16);

class TcpPair final : public Pair {
 public:
  TcpPair(int peer_rank, std::string peer_name, Fd fd, Doorbell* bell);
  ~TcpPair() override;

  void post_send(const void* data, std::size_t len, Request* req) override;
  void post_recv(void* dst, std::size_t len, Request* req) override;
  void post_recv_reduce(void* dst, const void* local, std::size_t len, const Reducer& reducer,
                        Request* req) override;
  bool progress() override;
  Status check_alive() override;
  void abort(const Status& why) override;
  bool is_shm() const override { return false; }

  int fd() const { return fd_.get(); }
  // Called by the epoll thread when the socket is readable or writable.
  void on_ready();

 private:
  struct SendOp {
    MessageHeader header;
    const char* data;
    std::size_t len;
    std::size_t sent;  // counts header bytes first
    Request* req;
  };
  struct RecvOp {
    char* dst;
    const char* local;  // null: plain receive
    std::size_t len;
    std::size_t got;  // payload bytes folded in or landed
    MessageHeader header;
    std::size_t header_got;
    Reducer reducer;
    Request* req;
  };

  bool drive_locked();  // requires mu_
  bool write_locked();
  bool read_locked();
  void fail_all_locked(const Status& why);
  void wake_when_available_locked(std::size_t bytes);

  std::mutex mu_;
  Fd fd_;                      // guarded by mu_ (closed on abort)
  Doorbell* bell_;             // the owning context's doorbell
  std::deque<SendOp> sends_;   // guarded by mu_
  std::deque<RecvOp> recvs_;   // guarded by mu_
  std::vector<char> staging_;  // guarded by mu_; reduction input
  std::size_t staged_ = 0;     // bytes in staging_ not yet folded (< one element)
  Status error_;               // guarded by mu_; sticky
  int rcvlowat_ = 1;           // guarded by mu_; Note [Receive low-water mark]
};

}  // namespace kiln::comm::transport::tcp
