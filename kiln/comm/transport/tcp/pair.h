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
// Large messages of 4-byte words may travel byte-plane coded (Note [Coding
// payloads for slow links]): same bytes at the receiver, fewer on the wire.
//
// Threading: post/progress from the executing thread, on_ready from the
// epoll thread, abort from any thread; all state is guarded by mu_.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "kiln/comm/transport/doorbell.h"
#include "kiln/comm/transport/pair.h"
#include "kiln/comm/transport/tcp/plane_codec.h"
#include "kiln/comm/transport/tcp/socket.h"

namespace kiln::comm::transport::tcp {

inline constexpr std::uint32_t kMessageMagic = 0x4b4d5347;  // "KMSG"

struct MessageHeader {
  std::uint32_t magic;
  std::uint32_t flags;  // 0, or kCodedMessage
  std::uint64_t length;  // payload bytes as the receiver gets them (before coding)
};
static_assert(sizeof(MessageHeader) == 16);

// The payload is a sequence of PlaneCodec chunks (CodedChunkHeader + body).
inline constexpr std::uint32_t kCodedMessage = 1;

// Messages the sender may code: large enough that a chunk's coding cost is
// negligible against its header and the extra read, and whole 4-byte words.
// The receiver reads the header of such a message on its own, so smaller
// ones (the 4 KiB latency path) keep their single read.
inline constexpr std::size_t kMinCodedBytes = 256 << 10;
inline bool may_be_coded(std::size_t len) { return len >= kMinCodedBytes && len % 4 == 0; }

// KILN_TCP_CODE: when large messages travel coded.
enum class CodeMode { kAuto, kOn, kOff };

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
  // Messages sent so far coded, and their bytes before and after coding
  // (for tests and benchmarks).
  struct CodeStats {
    std::uint64_t messages = 0, raw_bytes = 0, wire_bytes = 0;
    // Chunks by the coder asked for (stored: planes split, high plane as it
    // is; words: no planes, Note [Chunks of words as they are]).
    std::uint64_t zstd_chunks = 0, nibble_chunks = 0, stored_chunks = 0, words_chunks = 0;
  };
  CodeStats code_stats();
  // Called by the epoll thread when the socket is readable or writable.
  void on_ready();

 private:
  struct SendOp {
    MessageHeader header;
    const char* data;
    std::size_t len;
    std::size_t sent;  // counts header bytes first; coded: payload bytes whose chunk left
    Request* req;
    bool coded = false;
    std::chrono::steady_clock::time_point started{};  // first write attempt
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
    // Coded messages: the chunk being read (its header, then its body in
    // coded_in_).
    CodedChunkHeader chunk{};
    std::size_t chunk_got = 0;  // header + body bytes of this chunk read
    std::size_t body_len = 0;   // valid once the chunk header is in
  };

  bool drive_locked();  // requires mu_
  bool write_locked();
  bool read_locked();
  bool write_coded_locked(SendOp& op);  // true once op's last chunk left
  // Reads and decodes op's chunks until the socket runs dry (false) or the
  // message is complete (true); errors fail every request.
  bool read_coded_locked(RecvOp& op);
  bool should_code_locked(std::size_t len);
  void note_send_rate_locked(const SendOp& op);
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

  // Coding (Note [Coding payloads for slow links]); all guarded by mu_.
  CodeMode code_mode_;
  double code_below_bytes_per_s_;
  double code_min_idle_cores_;
  HighPlane coder_;  // kStored: auto (Note [Coding only with a spare core])
  std::unique_ptr<PlaneCodec> codec_;  // made on first use
  // The chunk being sent: coded_out_len_ bytes of coded_out_, then
  // direct_len_ bytes from the caller's memory at direct_ (words as they
  // are); coded_out_sent_ counts both. chunk_words_: its words, 0 if none.
  std::vector<char> coded_out_;
  std::size_t coded_out_len_ = 0, coded_out_sent_ = 0;
  const char* direct_ = nullptr;
  std::size_t direct_len_ = 0, chunk_words_ = 0;
  std::vector<char> coded_in_;  // the body of the chunk being received
  std::vector<char> decoded_;   // a decoded chunk on its way into a reduction
  double plain_rate_ = 0;       // bytes/s of recent uncoded large sends; 0: none yet
  int coded_since_probe_ = 0;   // coded messages since the last uncoded one
  CodeStats code_stats_;
};

}  // namespace kiln::comm::transport::tcp
