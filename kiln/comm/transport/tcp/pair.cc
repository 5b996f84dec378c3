#include "kiln/comm/transport/tcp/pair.h"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/comm/transport/tcp/idle_cores.h"
#include "kiln/comm/transport/waiting_callers.h"

namespace kiln::comm::transport::tcp {
namespace {
constexpr std::size_t kStagingBytes = 256 << 10;

const Knob<std::string> kCongestion{
    "KILN_TCP_CONGESTION", "cubic",
    "TCP congestion control of the tcp transport's connections; \"system\": the host's "
    "default (net.ipv4.tcp_congestion_control)"};

const Knob<std::string> kCode{
    "KILN_TCP_CODE", "auto",
    "byte-plane coding of large float32-sized messages on tcp pairs (Note [Coding payloads for "
    "slow links]): \"auto\" (when the pair's measured send rate is below "
    "KILN_TCP_CODE_BELOW_MBPS), \"on\", \"off\""};
const Knob<double> kCodeBelowMBps{
    "KILN_TCP_CODE_BELOW_MBPS", 300.0,
    "KILN_TCP_CODE=auto codes a pair's large messages while its uncoded send rate is below this, "
    "MB/s"};

// Note [Coding payloads for slow links]: on a link slower than a core can
// code, sending each large message of 4-byte words byte-plane coded (Note
// [Byte-plane coding of float32 payloads]) takes ~15% of the bytes off the
// wire for gradients, and the receiver gets exactly the bytes that were sent
// before coding, so every reduction's result is bit-identical. Coding costs
// CPU (encode ~0.85 GB/s, decode ~2.6 GB/s on one core here), which pays only
// where the link, not the CPU, limits: KILN_TCP_CODE=auto measures each
// pair's uncoded rate on its large sends and codes while that rate is below
// KILN_TCP_CODE_BELOW_MBPS (300 MB/s: 1 and 2.5 Gbit/s links, not 10 Gbit/s
// or loopback, where the coder would become the bottleneck; docs/perf.md,
// issue 24, has the measurements). Every kProbeEvery coded messages one goes
// uncoded to measure the link again. The decision is the sender's alone: each
// message says in its header whether it is coded, and receivers take both.
constexpr int kProbeEvery = 32;

const Knob<std::int64_t> kMaxRcvLowatKiB{
    "KILN_TCP_RCVLOWAT_KIB", 2048,
    "most bytes (KiB) a tcp pair lets arrive before its socket reports readable (Note [Receive "
    "low-water mark])"};

const Knob<double> kCodeMinIdleCores{
    "KILN_TCP_CODE_MIN_IDLE_CORES", 0.5,
    "coded chunks use zstd while the CPUs this process may run on had at least this many idle "
    "cores since the last look (/proc/stat, at most every 50 ms), else they carry their words as "
    "they are"};
const Knob<std::string> kCoder{
    "KILN_TCP_CODER", "auto",
    "how coded chunks' high byte plane is compressed: \"auto\" (zstd with a spare core, else "
    "the words as they are: Note [Coding only with a spare core]), \"zstd\", \"nibble\", "
    "\"words\""};

// Note [Coding only with a spare core]: a slow link is not enough for zstd.
// Where the ranks' compute fills every core (two ranks on a 2-core host,
// DDP's backward), zstd's CPU comes out of backward and costs more than the
// link time it saves (docs/perf.md, issue 24, session 7). So each chunk,
// not each message, asks the host: with a spare core (idle cores over the
// time since the last look, process-wide) its high plane goes through zstd;
// without one it carries its words as they are (Note [Chunks of words as they
// are]: not even split into planes). Per chunk because a large message is
// often posted while the cores are busy (a DDP bucket during backward) and
// then crosses a slow link for a second after they went idle (PyTorch DDP
// on the kiln backend, docs/perf.md, issue 21, session 8: half the bytes
// left uncoded under a per-message decision). The nibble code (Note [A high
// plane coded in nibbles]) is cheaper than zstd but still cost backward more
// than it saved there (issue 24, session 8), so it is only used when asked
// for (KILN_TCP_CODER=nibble). A thread of this process blocked on a
// collective also means a spare core, at once (Note [A waiting caller's core
// is spare]). Only cores this process may run on count (Note [Idle cores this
// process may use]).
HighPlane coder_choice() {
  std::string c = kCoder.get();
  if (c == "zstd") return HighPlane::kZstd;
  if (c == "nibble") return HighPlane::kNibble;
  if (c == "words") return HighPlane::kWords;
  if (c != "auto") {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      log()->warn("KILN_TCP_CODER={}: expected auto, zstd, nibble or words; using auto", c);
  }
  return HighPlane::kStored;  // auto
}

CodeMode code_mode() {
  std::string m = kCode.get();
  if (m == "on") return CodeMode::kOn;
  if (m == "off") return CodeMode::kOff;
  if (m != "auto") {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      log()->warn("KILN_TCP_CODE={}: expected auto, on or off; using auto", m);
  }
  return CodeMode::kAuto;
}

// Note [Congestion control of a collective's connections]: under BBR (a
// common host default, this one's too) a connection that has carried data
// for 10 s without seeing its idle round-trip time again drops to 4 packets
// in flight for 200 ms (ProbeRTT). A collective's connections are busy
// whenever a step communicates, so each enters ProbeRTT every 10 s of traffic
// with megabytes queued, and the whole group waits on that one direction
// (bench/torch_backend.sh over a 1 Gbit/s link: `ss -ti` shows cwnd 4 with
// 3 MB not sent; DDP steps of 1.87–2.08 s where cubic gives 1.68–1.70 s). A
// loss-based algorithm has no such phase, so the transport asks for cubic.
void set_congestion(int fd) {
  std::string name = kCongestion.get();
  if (name.empty() || name == "system") return;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(),
                   static_cast<socklen_t>(name.size())) != 0) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      log()->warn(
          "KILN_TCP_CONGESTION={}: {} (net.ipv4.tcp_available_congestion_control lists "
          "what this host has); the host's default stays",
          name, std::strerror(errno));
    }
  }
}
}  // namespace

TcpPair::TcpPair(int peer_rank, std::string peer_name, Fd fd, Doorbell* bell)
    : Pair(peer_rank, std::move(peer_name)),
      fd_(std::move(fd)),
      bell_(bell),
      code_mode_(code_mode()),
      code_below_bytes_per_s_(kCodeBelowMBps.get() * 1e6),
      code_min_idle_cores_(kCodeMinIdleCores.get()),
      coder_(coder_choice()) {
  (void)net::set_nonblocking(fd_.get());
  (void)net::set_nodelay(fd_.get());
  set_congestion(fd_.get());
}

TcpPair::~TcpPair() = default;

void TcpPair::post_send(const void* data, std::size_t len, Request* req) {
  req->pair = this;
  std::lock_guard lock(mu_);
  if (!error_.is_ok()) return req->fail(error_);
  bool coded = should_code_locked(len);
  sends_.push_back({{kMessageMagic, coded ? kCodedMessage : 0, len},
                    static_cast<const char*>(data),
                    len,
                    0,
                    req,
                    coded});
  write_locked();  // small messages usually leave right here
}

void TcpPair::post_recv(void* dst, std::size_t len, Request* req) {
  req->pair = this;
  std::lock_guard lock(mu_);
  if (!error_.is_ok()) return req->fail(error_);
  recvs_.push_back({static_cast<char*>(dst), nullptr, len, 0, {}, 0, {}, req});
}

void TcpPair::post_recv_reduce(void* dst, const void* local, std::size_t len,
                               const Reducer& reducer, Request* req) {
  req->pair = this;
  std::lock_guard lock(mu_);
  if (!error_.is_ok()) return req->fail(error_);
  if (staging_.empty()) staging_.resize(kStagingBytes);
  recvs_.push_back(
      {static_cast<char*>(dst), static_cast<const char*>(local), len, 0, {}, 0, reducer, req});
}

bool TcpPair::progress() {
  std::unique_lock lock(mu_, std::try_to_lock);
  if (!lock.owns_lock()) return false;  // the epoll thread is on it
  return drive_locked();
}

void TcpPair::on_ready() {
  bool completed;
  {
    std::lock_guard lock(mu_);
    completed = drive_locked();
  }
  if (completed) bell_->ring();
}

bool TcpPair::drive_locked() {
  if (!error_.is_ok()) return false;
  bool a = write_locked();
  bool b = read_locked();
  return a || b;
}

bool TcpPair::should_code_locked(std::size_t len) {
  if (!may_be_coded(len) || code_mode_ == CodeMode::kOff) return false;
  if (code_mode_ == CodeMode::kOn) return true;
  if (plain_rate_ <= 0 || plain_rate_ >= code_below_bytes_per_s_) return false;
  if (++coded_since_probe_ > kProbeEvery) {
    coded_since_probe_ = 0;
    return false;
  }
  return true;
}

void TcpPair::note_send_rate_locked(const SendOp& op) {
  if (op.coded || !may_be_coded(op.len)) return;
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.started).count();
  if (s <= 0) return;
  double rate = static_cast<double>(op.len) / s;
  plain_rate_ = plain_rate_ <= 0 ? rate : 0.5 * (plain_rate_ + rate);
}

TcpPair::CodeStats TcpPair::code_stats() {
  std::lock_guard lock(mu_);
  return code_stats_;
}

// Sends op's header, then its chunks, each coded when the previous one has
// left; the socket's buffer keeps the link busy while the next is coded. A
// chunk of words as they are (Note [Chunks of words as they are]) leaves
// straight from op's memory behind its header.
bool TcpPair::write_coded_locked(SendOp& op) {
  constexpr std::size_t kHdr = sizeof(MessageHeader);
  if (!codec_) codec_ = std::make_unique<PlaneCodec>();
  if (coded_out_.empty()) coded_out_.resize(PlaneCodec::bound(PlaneCodec::kChunkWords) + kHdr);
  while (true) {
    if (coded_out_sent_ == coded_out_len_ + direct_len_) {  // the chunk left: code the next
      op.sent += chunk_words_ * 4;
      chunk_words_ = 0;
      if (op.sent == op.len) return true;
      std::size_t words = std::min(PlaneCodec::kChunkWords, (op.len - op.sent) / 4);
      std::size_t at = 0;
      if (op.sent == 0) {  // the message header leaves with the first chunk
        std::memcpy(coded_out_.data(), &op.header, kHdr);
        at = kHdr;
      }
      HighPlane coder = coder_;
      if (coder == HighPlane::kStored) {  // auto
        // Note [A waiting caller's core is spare]: no need to ask the host.
        const bool spare_core =
            callers_waiting() > 0 || idle_cores_recently() >= code_min_idle_cores_;
        coder = spare_core ? HighPlane::kZstd : HighPlane::kWords;
      }
      if (coder == HighPlane::kWords) {
        const CodedChunkHeader h = PlaneCodec::words_header(words);
        std::memcpy(coded_out_.data() + at, &h, sizeof(h));
        coded_out_len_ = at + sizeof(h);
        direct_ = op.data + op.sent;
        direct_len_ = 4 * words;
      } else {
        coded_out_len_ =
            at + codec_->encode(op.data + op.sent, words, coded_out_.data() + at, coder);
        direct_len_ = 0;
      }
      coded_out_sent_ = 0;
      chunk_words_ = words;
      code_stats_.raw_bytes += words * 4;
      code_stats_.wire_bytes += coded_out_len_ + direct_len_ - at;
      if (coder == HighPlane::kZstd) ++code_stats_.zstd_chunks;
      if (coder == HighPlane::kNibble) ++code_stats_.nibble_chunks;
      if (coder == HighPlane::kStored) ++code_stats_.stored_chunks;
      if (coder == HighPlane::kWords) ++code_stats_.words_chunks;
    }
    iovec iov[2];
    int n = 0;
    if (coded_out_sent_ < coded_out_len_) {
      iov[n++] = {coded_out_.data() + coded_out_sent_, coded_out_len_ - coded_out_sent_};
      if (direct_len_ > 0) iov[n++] = {const_cast<char*>(direct_), direct_len_};
    } else {
      const std::size_t done = coded_out_sent_ - coded_out_len_;
      iov[n++] = {const_cast<char*>(direct_) + done, direct_len_ - done};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n);
    ssize_t w = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) return false;
      fail_all_locked(errno_status(fmt::format("send to {}", peer_name()), errno));
      return false;
    }
    coded_out_sent_ += static_cast<std::size_t>(w);
    if (coded_out_sent_ < coded_out_len_ + direct_len_) return false;  // the socket buffer is full
  }
}

bool TcpPair::write_locked() {
  bool completed = false;
  while (!sends_.empty() && error_.is_ok()) {
    SendOp& op = sends_.front();
    if (op.started == std::chrono::steady_clock::time_point{})
      op.started = std::chrono::steady_clock::now();
    if (op.coded) {
      if (!write_coded_locked(op)) {
        if (!error_.is_ok()) return true;
        break;
      }
      ++code_stats_.messages;
      op.req->complete();
      sends_.pop_front();
      completed = true;
      continue;
    }
    iovec iov[2];
    int n = 0;
    constexpr std::size_t kHdr = sizeof(MessageHeader);
    if (op.sent < kHdr) {
      iov[n++] = {reinterpret_cast<char*>(&op.header) + op.sent, kHdr - op.sent};
      if (op.len > 0) iov[n++] = {const_cast<char*>(op.data), op.len};
    } else {
      iov[n++] = {const_cast<char*>(op.data) + (op.sent - kHdr), op.len - (op.sent - kHdr)};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n);
    ssize_t w = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      fail_all_locked(errno_status(fmt::format("send to {}", peer_name()), errno));
      return true;
    }
    op.sent += static_cast<std::size_t>(w);
    if (op.sent < kHdr + op.len) break;  // the socket buffer is full
    note_send_rate_locked(op);
    op.req->complete();
    sends_.pop_front();
    completed = true;
  }
  return completed;
}

bool TcpPair::read_coded_locked(RecvOp& op) {
  constexpr std::size_t kChunkHdr = sizeof(CodedChunkHeader);
  if (!codec_) codec_ = std::make_unique<PlaneCodec>();
  if (coded_in_.empty()) coded_in_.resize(PlaneCodec::bound(PlaneCodec::kChunkWords));
  if (op.local != nullptr && decoded_.empty()) decoded_.resize(PlaneCodec::kChunkWords * 4);
  auto where = [&] {
    return fmt::format("the chunk at byte {} of a {}-byte message from {}", op.got, op.len,
                       peer_name());
  };
  while (op.got < op.len) {
    char* into;
    std::size_t want;
    if (op.chunk_got < kChunkHdr) {
      into = reinterpret_cast<char*>(&op.chunk) + op.chunk_got;
      want = kChunkHdr - op.chunk_got;
    } else {
      const std::size_t body_got = op.chunk_got - kChunkHdr;
      // Words as they are (Note [Chunks of words as they are]) land where
      // they belong; only a reduction needs them beside its input first.
      into = op.chunk.high == HighPlane::kWords && op.local == nullptr
                 ? op.dst + op.got + body_got
                 : coded_in_.data() + body_got;
      want = op.body_len - body_got;
    }
    ssize_t r = ::read(fd_.get(), into, want);
    if (r == 0) {
      fail_all_locked(unavailable(
          fmt::format("{} closed the connection in the middle of a coded message ({} cut short)",
                      peer_name(), where())));
      return false;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        // The chunks after this one bring at least 3/4 of their words'
        // bytes (the low planes, or all of them), whatever their coding.
        const std::size_t this_chunk = std::min(PlaneCodec::kChunkWords * 4, op.len - op.got);
        wake_when_available_locked(want + 3 * (op.len - op.got - this_chunk) / 4);
        return false;
      }
      fail_all_locked(errno_status(fmt::format("receive from {}", peer_name()), errno));
      return false;
    }
    op.chunk_got += static_cast<std::size_t>(r);
    if (op.chunk_got < kChunkHdr) continue;
    if (op.chunk_got == kChunkHdr && op.body_len == 0) {
      auto body = coded_body_bytes(op.chunk, (op.len - op.got) / 4, where());
      if (!body.is_ok()) {
        fail_all_locked(body.status());
        return false;
      }
      op.body_len = *body;
    }
    if (op.chunk_got < kChunkHdr + op.body_len) continue;
    const std::size_t bytes = std::size_t{op.chunk.words} * 4;
    if (op.chunk.high == HighPlane::kWords) {
      if (op.local != nullptr) {
        op.reducer(op.dst + op.got, op.local + op.got, coded_in_.data(), bytes);
      }
    } else {
      char* out = op.local == nullptr ? op.dst + op.got : decoded_.data();
      if (Status s = codec_->decode(op.chunk, coded_in_.data(), out, where()); !s.is_ok()) {
        fail_all_locked(s);
        return false;
      }
      if (op.local != nullptr) op.reducer(op.dst + op.got, op.local + op.got, out, bytes);
    }
    op.got += bytes;
    op.chunk_got = 0;
    op.body_len = 0;
  }
  return true;
}

bool TcpPair::read_locked() {
  bool completed = false;
  while (!recvs_.empty() && error_.is_ok()) {
    RecvOp& op = recvs_.front();
    constexpr std::size_t kHdr = sizeof(MessageHeader);
    if (op.header_got == kHdr && op.header.flags == kCodedMessage) {
      if (!read_coded_locked(op)) {
        if (!error_.is_ok()) return true;
        break;
      }
      op.req->complete();
      recvs_.pop_front();
      completed = true;
      continue;
    }
    iovec iov[2];
    int n = 0;
    if (op.header_got < kHdr)
      iov[n++] = {reinterpret_cast<char*>(&op.header) + op.header_got, kHdr - op.header_got};
    std::size_t want = op.len - op.got;
    // A message the sender may have coded: its header comes alone, since
    // what follows it is either payload or chunks.
    if (n > 0 && may_be_coded(op.len)) {
    } else if (op.local == nullptr) {
      if (want > 0) iov[n++] = {op.dst + op.got, want};
    } else if (want > staged_) {
      std::size_t room = std::min(staging_.size() - staged_, want - staged_);
      iov[n++] = {staging_.data() + staged_, room};
    }
    if (n == 0) {  // nothing left to read; complete below
    } else {
      ssize_t r = ::readv(fd_.get(), iov, n);
      if (r == 0) {
        fail_all_locked(unavailable(fmt::format("{} closed the connection", peer_name())));
        return true;
      }
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) {
          wake_when_available_locked(kHdr - std::min(kHdr, op.header_got) + want - staged_);
          break;
        }
        fail_all_locked(errno_status(fmt::format("receive from {}", peer_name()), errno));
        return true;
      }
      std::size_t got = static_cast<std::size_t>(r);
      if (op.header_got < kHdr) {
        std::size_t h = std::min(got, kHdr - op.header_got);
        op.header_got += h;
        got -= h;
        const bool bad_flags = op.header.flags != 0 && (op.header.flags != kCodedMessage ||
                                                        !may_be_coded(op.header.length));
        if (op.header_got == kHdr &&
            (op.header.magic != kMessageMagic || bad_flags || op.header.length != op.len)) {
          Status s = op.header.magic != kMessageMagic || bad_flags
                         ? data_loss(fmt::format("garbage on the connection from {}", peer_name()))
                         : invalid_argument(fmt::format(
                               "message size mismatch with {}: it sent {} bytes where this rank "
                               "expected {} (the ranks issued different operations or counts)",
                               peer_name(), op.header.length, op.len));
          fail_all_locked(s);
          return true;
        }
      }
      if (op.local == nullptr) {
        op.got += got;
      } else {
        staged_ += got;
        std::size_t esize = dtype_size(op.reducer.dtype);
        std::size_t usable = staged_ - staged_ % esize;
        if (usable > 0) {
          op.reducer(op.dst + op.got, op.local + op.got, staging_.data(), usable);
          op.got += usable;
          std::memmove(staging_.data(), staging_.data() + usable, staged_ - usable);
          staged_ -= usable;
        }
      }
    }
    if (op.header_got < kHdr || op.got < op.len) continue;
    op.req->complete();
    recvs_.pop_front();
    completed = true;
  }
  return completed;
}

// Note [Receive low-water mark]: on a slow link, data trickles in a few
// packets at a time, and waking the progress thread for each costs more CPU
// than the copy itself — CPU that backward needs when DDP overlaps the two.
// SO_RCVLOWAT makes the socket report readable only once `bytes` (capped at
// KILN_TCP_RCVLOWAT_KIB) have arrived; never more than the current message
// still owes (for a coded one: at least 3/4 of its words' bytes), so the
// wake-up always comes. The cap was 256 KiB: 2 MiB halved the training
// thread's preemptions in a DDP step on a 1 Gbit/s link (docs/perf.md,
// issue 24, session 9), and a 2 MiB batch still leaves the socket's buffer
// (autotuned to several MiB) room to keep the link busy.
void TcpPair::wake_when_available_locked(std::size_t bytes) {
  static const std::size_t kMaxLowWater =
      static_cast<std::size_t>(std::clamp<std::int64_t>(kMaxRcvLowatKiB.get(), 1, 1 << 20)) << 10;
  int want = static_cast<int>(std::max<std::size_t>(1, std::min(bytes, kMaxLowWater)));
  if (want == rcvlowat_) return;
  if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0) rcvlowat_ = want;
}

Status TcpPair::check_alive() {
  std::lock_guard lock(mu_);
  return error_;
}

void TcpPair::abort(const Status& why) {
  {
    std::lock_guard lock(mu_);
    if (!error_.is_ok()) return;
    fail_all_locked(why);
    // Shutting down (not just closing) makes the peer see EOF at once, so a
    // failure here reaches the other side without waiting for its timeout.
    ::shutdown(fd_.get(), SHUT_RDWR);
  }
  bell_->ring();
}

void TcpPair::fail_all_locked(const Status& why) {
  if (error_.is_ok()) error_ = why;
  for (auto& op : sends_) op.req->fail(error_);
  for (auto& op : recvs_) op.req->fail(error_);
  sends_.clear();
  recvs_.clear();
}

}  // namespace kiln::comm::transport::tcp
