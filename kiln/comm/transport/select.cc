#include "kiln/comm/transport/select.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/base/auth/handshake.h"
#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/comm/transport/shm/pair.h"
#include "kiln/comm/transport/tcp/device.h"
#include "kiln/comm/transport/tcp/pair.h"

namespace kiln::comm::transport {
namespace {

const Knob<std::string> kHostId{"KILN_HOST_ID", "",
                                "override the host identity that decides which peers share memory"};
const Knob<std::string> kCommAddr{"KILN_COMM_ADDR", "",
                                  "IPv4 address to listen on and advertise for tcp connections"};
const Knob<std::int64_t> kShmStreamingBytes{
    "KILN_SHM_STREAMING_BYTES", 16 << 20,
    "shared-memory messages at least this large are written out with streaming (non-temporal) "
    "stores; 0 = never (Note [Streaming stores for large messages])"};

const Knob<std::int64_t> kShmSlotBytes{
    "KILN_SHM_SLOT_BYTES", 0,
    "bytes per shared-memory FIFO slot (a message moves through the FIFO in chunks of this size); "
    "0 = ConnectOptions::shm_slot_bytes (128 KiB)"};
const Knob<std::int64_t> kShmSlots{
    "KILN_SHM_SLOTS", 0,
    "slots per shared-memory FIFO (chunks in flight per direction); 0 = ConnectOptions::shm_slots "
    "(8)"};

constexpr std::uint64_t kHandshakeMagic = 0x4b494c4e434f4d4dull;  // "KILNCOMM"
// 2: an HMAC challenge-response follows the handshake.
// 3: messages may be byte-plane coded (tcp::kCodedMessage), which a version-2
//    peer would take for payload.
// 4: coded chunks' headers say how their high plane is coded (zstd or nibbles).
// 5: a coded chunk may carry its words as they are (tcp::HighPlane::kWords).
constexpr std::uint32_t kHandshakeVersion = 5;
// How long an accepted connection may take to identify and authenticate itself.
constexpr auto kPeerHandshakeTimeout = std::chrono::seconds(2);

struct Handshake {
  std::uint64_t magic;
  std::uint32_t version;
  std::int32_t from_rank;
  std::uint64_t tag_hash;
};

struct PeerInfo {
  std::string host_id;
  std::string hostname;
  int pid = 0;
  std::string endpoint;  // tcp "ip:port", empty if not listening
  std::string shm;       // segment name, empty if none
};

std::string read_first_line(const char* path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

std::string hostname() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

std::uint64_t hash_tag(const std::string& tag) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a; only needs to tell tags apart
  for (unsigned char c : tag) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string sanitize(std::string s) {
  for (char& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

// What a tcp connection's proof is bound to: this group, from one rank to
// another (see Note [Why the handshake is replay-safe]).
std::string auth_purpose(const std::string& tag, int from, int to) {
  return fmt::format("comm {} {}->{}", tag, from, to);
}

// The acceptor's side of the challenge-response on a new connection.
Status authenticate_peer(int fd, const std::string& token, const std::string& purpose,
                         Deadline deadline) {
  auth::Acceptor acceptor(token, purpose);
  KILN_ASSIGN_OR_RETURN(std::string challenge, acceptor.challenge());
  KILN_RETURN_IF_ERROR(net::send_all(fd, challenge, deadline));
  std::string proof(auth::kProofBytes, '\0');
  KILN_RETURN_IF_ERROR(net::recv_exact(fd, proof.data(), proof.size(), deadline));
  Status s = acceptor.check_proof(proof);
  // The verdict is best effort when refusing: the connection closes anyway.
  Status sent = net::send_all(fd, acceptor.verdict(s.is_ok()), deadline);
  return s.is_ok() ? sent : s;
}

// The initiator's side, right after sending the Handshake.
Status authenticate_to_peer(int fd, const std::string& token, const std::string& purpose,
                            Deadline deadline) {
  auth::Initiator initiator(token, purpose);
  std::string challenge(auth::kChallengeBytes, '\0');
  KILN_RETURN_IF_ERROR(net::recv_exact(fd, challenge.data(), challenge.size(), deadline)
                           .with_context("await authentication challenge"));
  KILN_ASSIGN_OR_RETURN(std::string proof, initiator.answer(challenge));
  KILN_RETURN_IF_ERROR(net::send_all(fd, proof, deadline));
  std::string verdict(auth::kVerdictBytes, '\0');
  KILN_RETURN_IF_ERROR(net::recv_exact(fd, verdict.data(), verdict.size(), deadline)
                           .with_context("await authentication verdict"));
  return initiator.check_verdict(verdict);
}

Status accept_peers(int listen_fd, int rank, const ConnectOptions& options,
                    std::uint64_t tag_hash, int expected, const std::vector<bool>& from_allowed,
                    std::vector<tcp::Fd>& out, Deadline deadline) {
  int accepted = 0;
  while (accepted < expected) {
    KILN_ASSIGN_OR_RETURN(tcp::Fd fd, tcp::accept_one(listen_fd, deadline));
    Handshake hs{};
    Deadline handshake_deadline = Deadline::after(kPeerHandshakeTimeout).min(deadline);
    Status s = net::recv_exact(fd.get(), reinterpret_cast<char*>(&hs), sizeof(hs),
                               handshake_deadline);
    std::string who = tcp::peer_address(fd.get());
    if (!s.is_ok() || hs.magic != kHandshakeMagic || hs.version != kHandshakeVersion ||
        hs.tag_hash != tag_hash || hs.from_rank < 0 ||
        hs.from_rank >= static_cast<int>(from_allowed.size()) || !from_allowed[hs.from_rank] ||
        out[hs.from_rank].valid()) {
      log()->warn("rank {}: rejected a connection from {}: not a peer of this group ({})", rank,
                  who, s.is_ok() ? "bad handshake" : s.message());
      continue;
    }
    s = authenticate_peer(fd.get(), options.token,
                          auth_purpose(options.tag, hs.from_rank, rank), handshake_deadline);
    if (!s.is_ok()) {
      log()->warn("rank {}: refused a connection from {} claiming to be rank {}: {}", rank, who,
                  hs.from_rank, s.message());
      continue;
    }
    out[hs.from_rank] = std::move(fd);
    ++accepted;
  }
  return Status::ok();
}

}  // namespace

Result<TransportMode> parse_transport_mode(const std::string& text) {
  if (text.empty() || text == "auto") return TransportMode::kAuto;
  if (text == "shm") return TransportMode::kShm;
  if (text == "tcp") return TransportMode::kTcp;
  return invalid_argument(fmt::format("KILN_TRANSPORT={:?}: expected auto, shm or tcp", text));
}

std::string local_host_id() {
  std::string forced = kHostId.get();
  if (!forced.empty()) return forced;
  struct stat st {};
  std::uint64_t netns = stat("/proc/self/ns/net", &st) == 0 ? st.st_ino : 0;
  return fmt::format("{}/{}/{}", hostname(), read_first_line("/proc/sys/kernel/random/boot_id"),
                     netns);
}

std::string describe_transports(Context& ctx) {
  int shm = 0, tcp = 0;
  for (int p = 0; p < ctx.size(); ++p) {
    if (!ctx.has_pair(p)) continue;
    (ctx.pair(p).is_shm() ? shm : tcp)++;
  }
  return fmt::format("shm:{} tcp:{}", shm, tcp);
}

Result<std::unique_ptr<Context>> connect_all(store::Store& store, int rank, int size,
                                             const ConnectOptions& options, Deadline deadline) {
  auto ctx = std::make_unique<Context>(rank, size);
  if (size == 1) return ctx;
  const std::string key_prefix = "comm/" + options.tag + "/";
  const std::uint64_t tag_hash = hash_tag(options.tag);

  // 1. Say who we are. Both the tcp listener and the shm segment exist before
  //    the key is published, so a peer can use them as soon as it reads it.
  PeerInfo me{local_host_id(), hostname(), static_cast<int>(getpid()), "", ""};
  std::string listen_address = options.listen_address;
  if (listen_address.empty()) listen_address = kCommAddr.get();
  if (listen_address.empty() && !options.route_hint.empty()) {
    auto routed = tcp::local_address_toward(options.route_hint);
    if (routed.is_ok()) listen_address = *routed;
  }
  if (listen_address.empty()) listen_address = "127.0.0.1";
  tcp::Fd listener;
  if (options.mode != TransportMode::kShm) {
    KILN_ASSIGN_OR_RETURN(auto bound, tcp::listen_on(listen_address));
    listener = std::move(bound.first);
    me.endpoint = bound.second.to_string();
  }
  KILN_RETURN_IF_ERROR(store.set(
      key_prefix + "peer/" + std::to_string(rank),
      nlohmann::json{{"host_id", me.host_id}, {"hostname", me.hostname}, {"pid", me.pid},
                     {"endpoint", me.endpoint}}.dump()));

  // 2. Learn who everyone is.
  std::vector<PeerInfo> peers(size);
  for (int r = 0; r < size; ++r) {
    auto value = store.get(key_prefix + "peer/" + std::to_string(r), deadline);
    if (!value.is_ok()) {
      return value.status().with_context(
          fmt::format("rank {} waiting for rank {} to join the group", rank, r));
    }
    auto j = nlohmann::json::parse(*value, nullptr, false);
    if (j.is_discarded() || !j.contains("host_id")) {
      return data_loss(fmt::format("rank {}'s address record in the store is malformed", r));
    }
    peers[r] = {j["host_id"], j["hostname"], j["pid"].get<int>(), j["endpoint"], ""};
  }

  // 3. Decide the transport of every peer.
  {
    std::vector<std::string> ids;
    std::vector<int> host_of(size);
    for (int r = 0; r < size; ++r) {
      auto it = std::find(ids.begin(), ids.end(), peers[r].host_id);
      host_of[r] = static_cast<int>(it - ids.begin());
      if (it == ids.end()) ids.push_back(peers[r].host_id);
    }
    ctx->set_hosts(std::move(host_of));
  }
  std::vector<int> local;  // ranks on this host, ascending
  for (int r = 0; r < size; ++r) {
    if (peers[r].host_id == me.host_id && options.mode != TransportMode::kTcp) local.push_back(r);
  }
  std::vector<bool> is_tcp(size, false);
  for (int r = 0; r < size; ++r) {
    if (r == rank) continue;
    bool same_host = std::find(local.begin(), local.end(), r) != local.end();
    if (!same_host && options.mode == TransportMode::kShm) {
      return failed_precondition(fmt::format(
          "KILN_TRANSPORT=shm but rank {} runs on another host ({})", r, peers[r].hostname));
    }
    is_tcp[r] = !same_host;
  }
  auto name_of = [&](int r) {
    if (is_tcp[r]) {
      return fmt::format("rank {} ({} at {}, pid {})", r, peers[r].hostname, peers[r].endpoint,
                         peers[r].pid);
    }
    return fmt::format("rank {} ({}, pid {})", r, peers[r].hostname, peers[r].pid);
  };

  // 4. Shared memory among local ranks.
  if (local.size() > 1) {
    auto my_local = static_cast<std::uint32_t>(std::find(local.begin(), local.end(), rank) - local.begin());
    std::string seg_name = fmt::format("/kiln-{}-r{}-p{}", sanitize(options.tag).substr(0, 80), rank, getpid());
    const std::int64_t slot_bytes = kShmSlotBytes.get(), slots = kShmSlots.get();
    shm::SegmentLayout layout{
        static_cast<std::uint32_t>(local.size()),
        slots > 0 ? static_cast<std::uint32_t>(std::min<std::int64_t>(slots, 1024))
                  : options.shm_slots,
        slot_bytes > 0
            ? static_cast<std::size_t>(std::clamp<std::int64_t>(slot_bytes, 4096, 64 << 20))
            : options.shm_slot_bytes};
    KILN_ASSIGN_OR_RETURN(auto mine_unique, shm::Segment::create(seg_name, layout, rank));
    std::shared_ptr<shm::Segment> mine = std::move(mine_unique);
    KILN_RETURN_IF_ERROR(store.set(key_prefix + "shm/" + std::to_string(rank), seg_name));
    std::vector<std::shared_ptr<shm::Segment>> theirs;
    for (std::uint32_t i = 0; i < local.size(); ++i) {
      int r = local[i];
      if (r == rank) continue;
      auto name = store.get(key_prefix + "shm/" + std::to_string(r), deadline);
      if (!name.is_ok()) return name.status().with_context(fmt::format("rank {} shared memory name", r));
      KILN_ASSIGN_OR_RETURN(auto seg, shm::Segment::open(*name, r));
      std::shared_ptr<shm::Segment> peer_seg = std::move(seg);
      theirs.push_back(peer_seg);
      std::int64_t streaming = kShmStreamingBytes.get();
      ctx->set_pair(r, std::make_unique<shm::ShmPair>(
                           r, name_of(r), mine, peer_seg, my_local, i, peers[r].pid,
                           streaming > 0 ? static_cast<std::size_t>(streaming) : SIZE_MAX));
    }
    // Once every local peer has mapped our segment, its name can go: nothing
    // is left in /dev/shm if a rank crashes later.
    KILN_RETURN_IF_ERROR(store.set(key_prefix + "shm-mapped/" + std::to_string(rank), "1"));
    std::vector<std::string> mapped;
    for (int r : local) mapped.push_back(key_prefix + "shm-mapped/" + std::to_string(r));
    KILN_RETURN_IF_ERROR(store.wait(mapped, deadline));
    mine->unlink();

    ctx->set_doorbell(&mine->header()->doorbell);
    // Note [Relayed aborts name the first rank]: a rank that aborts because
    // it saw a peer's abort passes that peer's rank on, not its own. Else a
    // rank that hears of the failure through a relay first ("rank 0 aborted
    // the group") blames a healthy relay instead of the rank that failed.
    auto relayed_from = std::make_shared<std::atomic<int>>(-1);
    ctx->set_remote_abort_probe([mine, relayed_from]() -> int {
      int by = static_cast<int>(mine->header()->aborted.load(std::memory_order_acquire)) - 1;
      if (by >= 0) relayed_from->store(by, std::memory_order_release);
      return by;
    });
    ctx->add_abort_hook([theirs, rank, relayed_from](const Status&) {
      const int first = relayed_from->load(std::memory_order_acquire);
      const auto name = static_cast<std::uint32_t>(first >= 0 ? first : rank) + 1;
      for (const auto& seg : theirs) {
        std::uint32_t none = 0;  // keep the first aborter's name
        seg->header()->aborted.compare_exchange_strong(none, name, std::memory_order_acq_rel);
        seg->header()->doorbell.ring();
      }
    });
    ctx->keep_alive(mine);
  }

  // 5. TCP to everyone else: the higher rank connects, the lower accepts.
  int expected_accepts = 0;
  std::vector<bool> accept_from(size, false);
  for (int r = rank + 1; r < size; ++r) {
    if (is_tcp[r]) {
      accept_from[r] = true;
      ++expected_accepts;
    }
  }
  bool any_tcp = std::any_of(is_tcp.begin(), is_tcp.end(), [](bool b) { return b; });
  if (any_tcp) {
    std::vector<tcp::Fd> fds(size);
    Status accept_status;
    std::thread acceptor([&] {
      accept_status = accept_peers(listener.get(), rank, options, tag_hash, expected_accepts,
                                   accept_from, fds, deadline);
    });
    Status connect_status;
    for (int r = 0; r < rank && connect_status.is_ok(); ++r) {
      if (!is_tcp[r]) continue;
      auto ep = tcp::parse_endpoint(peers[r].endpoint);
      if (!ep.is_ok()) {
        connect_status = ep.status();
        break;
      }
      auto fd = tcp::connect_to(*ep, deadline);
      if (!fd.is_ok()) {
        connect_status = fd.status().with_context(fmt::format("rank {} connecting to {}", rank, name_of(r)));
        break;
      }
      Handshake hs{kHandshakeMagic, kHandshakeVersion, rank, tag_hash};
      connect_status = net::send_all(
          fd->get(), std::string_view(reinterpret_cast<const char*>(&hs), sizeof(hs)), deadline);
      if (connect_status.is_ok()) {
        connect_status = authenticate_to_peer(fd->get(), options.token,
                                              auth_purpose(options.tag, rank, r), deadline);
      }
      if (!connect_status.is_ok()) {
        connect_status = connect_status.with_context(
            fmt::format("rank {} authenticating to {}", rank, name_of(r)));
        break;
      }
      fds[r] = std::move(*fd);
    }
    acceptor.join();
    KILN_RETURN_IF_ERROR(connect_status);
    KILN_RETURN_IF_ERROR(accept_status.with_context(fmt::format("rank {} accepting peers", rank)));
    KILN_ASSIGN_OR_RETURN(auto device_unique, tcp::Device::create());
    std::shared_ptr<tcp::Device> device = std::move(device_unique);
    for (int r = 0; r < size; ++r) {
      if (!is_tcp[r]) continue;
      auto pair = std::make_unique<tcp::TcpPair>(r, name_of(r), std::move(fds[r]), &ctx->doorbell());
      KILN_RETURN_IF_ERROR(device->watch(pair.get()));
      ctx->set_pair(r, std::move(pair));
    }
    device->start();
    ctx->keep_alive(device);
  }
  log()->debug("rank {} connected: {}", rank, describe_transports(*ctx));
  return ctx;
}

}  // namespace kiln::comm::transport
