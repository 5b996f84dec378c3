// Byte-plane coded messages on tcp pairs (Note [Coding payloads for slow
// links]): the codec restores every bit, the receiver gets (and reduces) the
// bytes that were sent, and a corrupt or cut-short coded message fails with
// an error naming the peer and the chunk.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kiln/comm/transport/tcp/pair.h"
#include "kiln/comm/transport/waiting_callers.h"
#include "kiln/comm/transport/tcp/plane_codec.h"
#include "kiln/comm/transport/tcp/socket.h"

namespace kiln::comm::transport::tcp {
namespace {

// Gradient-like float32 values: magnitudes over a few decades, both signs,
// so the high byte plane compresses the way real gradients' does.
std::vector<float> gradient_like(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1e-3f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Gradient-like values with some high bytes outside the commonest 15 (huge
// and tiny magnitudes), so the nibble code escapes some bytes.
std::vector<float> with_outliers(std::size_t n, unsigned seed) {
  std::vector<float> v = gradient_like(n, seed);
  for (std::size_t i = 0; i < n; i += 97) v[i] = static_cast<float>(i) * 1e12f;
  for (std::size_t i = 5; i < n; i += 89) v[i] = -1e-30f / static_cast<float>(i);
  return v;
}

TEST(PlaneCodec, RestoresEveryBitOfFloatsAndOfRandomWords) {
  PlaneCodec codec;
  std::vector<char> coded(PlaneCodec::bound(PlaneCodec::kChunkWords));
  std::mt19937 rng(7);
  for (HighPlane coder : {HighPlane::kZstd, HighPlane::kNibble, HighPlane::kWords}) {
    for (std::size_t words :
         {std::size_t{1}, std::size_t{1000}, std::size_t{1001}, PlaneCodec::kChunkWords}) {
      std::vector<float> floats = gradient_like(words, 1);
      std::vector<float> outliers = with_outliers(words, 3);
      std::vector<std::uint32_t> noise(words), constant(words, 0x3c000000u);
      for (auto& w : noise) w = rng();
      const char* random = reinterpret_cast<const char*>(noise.data());
      for (const char* src : {reinterpret_cast<const char*>(floats.data()),
                              reinterpret_cast<const char*>(outliers.data()), random,
                              reinterpret_cast<const char*>(constant.data())}) {
        std::size_t n = codec.encode(src, words, coded.data(), coder);
        ASSERT_LE(n, PlaneCodec::bound(words));
        CodedChunkHeader h;
        std::memcpy(&h, coded.data(), sizeof(h));
        ASSERT_EQ(h.words, words);
        ASSERT_EQ(n, sizeof(h) + *coded_body_bytes(h, words, "test"));
        std::vector<char> back(words * 4);
        ASSERT_TRUE(codec.decode(h, coded.data() + sizeof(h), back.data(), "test").is_ok());
        EXPECT_EQ(std::memcmp(back.data(), src, words * 4), 0)
            << words << " words, coder " << static_cast<int>(coder);
        // Coded as asked, except random high bytes (stored: no smaller
        // coded); words as they are always go as they are.
        if (words > 100) {
          EXPECT_EQ(h.high == coder, coder == HighPlane::kWords || src != random) << words;
        }
        if (coder == HighPlane::kWords) {
          EXPECT_EQ(n, sizeof(h) + words * 4);
          EXPECT_EQ(std::memcmp(coded.data() + sizeof(h), src, words * 4), 0);
        }
      }
    }
  }
  // Gradients' high plane compresses, most with zstd.
  std::vector<float> g = gradient_like(PlaneCodec::kChunkWords, 2);
  const auto* gc = reinterpret_cast<const char*>(g.data());
  std::size_t zstd = codec.encode(gc, g.size(), coded.data(), HighPlane::kZstd);
  std::size_t nibbles = codec.encode(gc, g.size(), coded.data(), HighPlane::kNibble);
  EXPECT_LT(zstd, 0.9 * g.size() * 4);
  EXPECT_LT(nibbles, 0.9 * g.size() * 4);
  EXPECT_LE(zstd, nibbles);
}

TEST(PlaneCodec, NibbleCodedPlanesWithTooFewOrTooManyEscapesAreDataLoss) {
  PlaneCodec codec;
  const std::size_t words = 4096;
  std::vector<float> v = with_outliers(words, 4);
  std::vector<char> coded(PlaneCodec::bound(words));
  std::size_t n = codec.encode(reinterpret_cast<const char*>(v.data()), words, coded.data(),
                               HighPlane::kNibble);
  CodedChunkHeader h;
  std::memcpy(&h, coded.data(), sizeof(h));
  ASSERT_EQ(h.high, HighPlane::kNibble);
  const char* body = coded.data() + sizeof(h);
  std::vector<char> back(words * 4);
  for (int delta : {-1, +1}) {  // one escaped byte missing, one too many
    CodedChunkHeader bad = h;
    bad.high_len = static_cast<std::uint32_t>(static_cast<int>(h.high_len) + delta);
    std::vector<char> b(body, body + (n - sizeof(h)));
    b.push_back(0);
    Status s = codec.decode(bad, b.data(), back.data(), "chunk 2 from rank 3");
    EXPECT_EQ(s.code(), Code::kDataLoss) << delta;
    EXPECT_NE(s.message().find("chunk 2 from rank 3"), std::string::npos) << s.to_string();
  }
  // A size no nibble-coded plane of that many words can have; an unknown coding.
  const auto w = static_cast<std::uint32_t>(words);
  EXPECT_FALSE(coded_body_bytes({w, 100, HighPlane::kNibble}, words, "x").is_ok());
  EXPECT_FALSE(coded_body_bytes({w, 100, HighPlane{7}}, words, "x").is_ok());
}

TEST(PlaneCodec, RejectsImpossibleHeadersAndUndecodableHighPlanes) {
  auto body = coded_body_bytes({100, 101, HighPlane::kZstd}, 100, "chunk 3 from rank 1");
  ASSERT_FALSE(body.is_ok());
  EXPECT_NE(body.status().message().find("chunk 3 from rank 1"), std::string::npos);
  EXPECT_FALSE(coded_body_bytes({100, 99, HighPlane::kStored}, 100, "x").is_ok());
  // Words as they are: no high plane of their own, four bytes a word.
  EXPECT_EQ(*coded_body_bytes(PlaneCodec::words_header(100), 100, "x"), 400u);
  EXPECT_FALSE(coded_body_bytes({100, 100, HighPlane::kWords}, 100, "x").is_ok());
  // A short chunk mid-message; one larger than a chunk.
  EXPECT_FALSE(coded_body_bytes({50, 10, HighPlane::kZstd}, 100, "x").is_ok());
  EXPECT_FALSE(
      coded_body_bytes({PlaneCodec::kChunkWords + 1, 10, HighPlane::kZstd}, ~0u, "x").is_ok());
  PlaneCodec codec;
  std::vector<char> garbage(3 * 64 + 20, 'x');
  Status s = codec.decode({64, 20, HighPlane::kZstd}, garbage.data(), std::vector<char>(256).data(), "chunk 0 of m");
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_NE(s.message().find("chunk 0 of m"), std::string::npos) << s.to_string();
}

// Two connected TcpPairs on loopback, driven by polling (no Device).
struct Connected {
  Doorbell bell;
  std::unique_ptr<TcpPair> a, b;
  Connected() {
    auto listener = listen_on("127.0.0.1");
    EXPECT_TRUE(listener.is_ok());
    auto client = connect_to(listener->second, Deadline::after(std::chrono::seconds(10)));
    auto server = accept_one(listener->first.get(), Deadline::after(std::chrono::seconds(10)));
    EXPECT_TRUE(client.is_ok() && server.is_ok());
    a = std::make_unique<TcpPair>(1, "rank 1 (test)", std::move(*client), &bell);
    b = std::make_unique<TcpPair>(0, "rank 0 (test)", std::move(*server), &bell);
  }
};

// Polls until both requests are done (or 30 s pass).
void drive(TcpPair& x, TcpPair& y, Request& r1, Request& r2) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(r1.done() && r2.done()) && std::chrono::steady_clock::now() < end) {
    x.progress();
    y.progress();
  }
  ASSERT_TRUE(r1.done() && r2.done()) << "timed out";
}

class CodedTcpPairWith : public ::testing::TestWithParam<const char*> {};

TEST_P(CodedTcpPairWith, ReceiverGetsAndReducesExactlyTheBytesSent) {
  ::setenv("KILN_TCP_CODE", "on", 1);
  ::setenv("KILN_TCP_CODER", GetParam(), 1);
  Connected c;
  ::unsetenv("KILN_TCP_CODE");
  ::unsetenv("KILN_TCP_CODER");
  // Several chunks and a short last one.
  const std::size_t n = 3 * PlaneCodec::kChunkWords + 12345;
  std::vector<float> sent = gradient_like(n, 3), local = gradient_like(n, 4);
  std::vector<float> got(n), sum(n);
  Request s1, r1;
  c.a->post_send(sent.data(), n * 4, &s1);
  c.b->post_recv(got.data(), n * 4, &r1);
  drive(*c.a, *c.b, s1, r1);
  ASSERT_TRUE(r1.status().is_ok()) << r1.status().to_string();
  EXPECT_EQ(std::memcmp(got.data(), sent.data(), n * 4), 0);

  Request s2, r2;
  c.a->post_send(sent.data(), n * 4, &s2);
  c.b->post_recv_reduce(sum.data(), local.data(), n * 4,
                        Reducer{DataType::kFloat32, ReduceOp::kSum}, &r2);
  drive(*c.a, *c.b, s2, r2);
  ASSERT_TRUE(r2.status().is_ok()) << r2.status().to_string();
  for (std::size_t i = 0; i < n; ++i) {
    float want = local[i] + sent[i];
    ASSERT_EQ(std::memcmp(&sum[i], &want, 4), 0) << "element " << i;
  }
  auto stats = c.a->code_stats();
  const std::string coder = GetParam();
  EXPECT_EQ(stats.messages, 2u);
  EXPECT_EQ(stats.raw_bytes, 2 * n * 4);
  const std::uint64_t chunks = 2 * 4;  // per message: 3 whole chunks and a short one
  if (coder == "words") {  // each chunk's header, nothing else added or taken
    EXPECT_EQ(stats.wire_bytes, stats.raw_bytes + chunks * sizeof(CodedChunkHeader));
  } else {
    EXPECT_LT(stats.wire_bytes, 0.9 * stats.raw_bytes);
  }
  EXPECT_EQ(stats.zstd_chunks, coder == "zstd" ? chunks : 0);
  EXPECT_EQ(stats.nibble_chunks, coder == "nibble" ? chunks : 0);
  EXPECT_EQ(stats.words_chunks, coder == "words" ? chunks : 0);
  EXPECT_EQ(stats.stored_chunks, 0u);

  // Small messages (the latency path) and sizes that are not whole words
  // travel as they are.
  std::vector<char> small(4096, 'k'), odd(kMinCodedBytes + 2, 'o');
  for (auto* v : {&small, &odd}) {
    std::vector<char> back(v->size());
    Request s3, r3;
    c.a->post_send(v->data(), v->size(), &s3);
    c.b->post_recv(back.data(), back.size(), &r3);
    drive(*c.a, *c.b, s3, r3);
    EXPECT_TRUE(r3.status().is_ok());
    EXPECT_EQ(back, *v);
  }
  EXPECT_EQ(c.a->code_stats().messages, 2u);
}

INSTANTIATE_TEST_SUITE_P(Coders, CodedTcpPairWith, ::testing::Values("zstd", "nibble", "words"));

TEST(CodedTcpPair, AutoCodesOnlyWhileTheLinkIsSlowerThanTheThreshold) {
  const std::size_t n = PlaneCodec::kChunkWords;
  std::vector<float> sent = gradient_like(n, 5), got(n);
  // MB/s (loopback is above, then below) and idle cores (none needed: zstd;
  // more than any host has: the words as they are, Note [Coding only with a
  // spare core]).
  // A thread blocked on a collective frees a core at once (Note [A waiting
  // caller's core is spare]).
  struct Case {
    const char* below;
    const char* idle;
    unsigned coded, zstd, words;
    bool caller_waits = false;
  };
  for (Case k : {Case{"0.000001", "0", 0, 0, 0}, Case{"1000000000", "0", 2, 2, 0},
                 Case{"1000000000", "100000", 2, 0, 2},
                 Case{"1000000000", "100000", 2, 2, 0, /*caller_waits=*/true}}) {
    std::optional<CallerWaiting> waiting;
    if (k.caller_waits) waiting.emplace();
    const char* below = k.below;
    ::setenv("KILN_TCP_CODE", "auto", 1);
    ::setenv("KILN_TCP_CODE_BELOW_MBPS", below, 1);
    ::setenv("KILN_TCP_CODE_MIN_IDLE_CORES", k.idle, 1);
    Connected c;
    ::unsetenv("KILN_TCP_CODE");
    ::unsetenv("KILN_TCP_CODE_BELOW_MBPS");
    ::unsetenv("KILN_TCP_CODE_MIN_IDLE_CORES");
    for (int i = 0; i < 3; ++i) {  // the first measures the link, uncoded
      Request s, r;
      c.a->post_send(sent.data(), n * 4, &s);
      c.b->post_recv(got.data(), n * 4, &r);
      drive(*c.a, *c.b, s, r);
      ASSERT_TRUE(r.status().is_ok());
      ASSERT_EQ(std::memcmp(got.data(), sent.data(), n * 4), 0);
    }
    auto stats = c.a->code_stats();
    const std::string what = fmt::format("{} MB/s, {} cores, caller {}", below, k.idle,
                                         k.caller_waits ? "waits" : "computes");
    EXPECT_EQ(stats.messages, k.coded) << what;
    EXPECT_EQ(stats.zstd_chunks, k.zstd) << what;
    EXPECT_EQ(stats.words_chunks, k.words) << what;
    EXPECT_EQ(stats.stored_chunks, 0u) << "auto never splits a chunk it then stores";
    EXPECT_EQ(stats.nibble_chunks, 0u) << "auto never picks the nibble code";
  }
}

// A raw socket speaking for the peer, and a TcpPair receiving from it.
struct RawPeer {
  Doorbell bell;
  int raw = -1;
  std::unique_ptr<TcpPair> pair;
  std::string script;    // what the peer writes
  bool hang_up = false;  // close after writing the script
  RawPeer() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    raw = sv[0];
    pair = std::make_unique<TcpPair>(1, "rank 1 (host-b, pid 42)", Fd(sv[1]), &bell);
  }
  ~RawPeer() { ::close(raw); }
  void write(const void* p, std::size_t n) { script.append(static_cast<const char*>(p), n); }
  // Writes the script from another thread (it outgrows the socket's
  // buffer) while receiving `len` bytes (into *got, if given); returns the
  // receive's status.
  Status receive(std::size_t len, std::vector<char>* got = nullptr) {
    std::thread writer([this] {
      std::size_t at = 0;
      while (at < script.size()) {
        ssize_t w = ::send(raw, script.data() + at, script.size() - at, MSG_NOSIGNAL);
        if (w <= 0) return;  // the receiver gave up and closed
        at += static_cast<std::size_t>(w);
      }
      if (hang_up) ::shutdown(raw, SHUT_WR);
    });
    std::vector<char> dst(len);
    Request r;
    pair->post_recv(dst.data(), len, &r);
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!r.done() && std::chrono::steady_clock::now() < end) pair->progress();
    EXPECT_TRUE(r.done());
    pair.reset();  // closes its end, so a writer still writing stops
    writer.join();
    if (got != nullptr) *got = std::move(dst);
    return r.done() ? r.status() : Status::ok();
  }
};

TEST(CodedTcpPair, OneMessageMayMixChunksOfWordsAndCodedChunks) {
  // The sender decides per chunk (Note [Coding only with a spare core]).
  const std::size_t words = 3 * PlaneCodec::kChunkWords;
  std::vector<float> floats = gradient_like(words, 8);
  const char* src = reinterpret_cast<const char*>(floats.data());
  PlaneCodec codec;
  std::vector<char> chunk(PlaneCodec::bound(PlaneCodec::kChunkWords));
  RawPeer p;
  MessageHeader h{kMessageMagic, kCodedMessage, words * 4};
  p.write(&h, sizeof(h));
  for (HighPlane coder : {HighPlane::kWords, HighPlane::kZstd, HighPlane::kWords}) {
    std::size_t n = codec.encode(src, PlaneCodec::kChunkWords, chunk.data(), coder);
    p.write(chunk.data(), n);
    src += PlaneCodec::kChunkWords * 4;
  }
  std::vector<char> got;
  Status s = p.receive(words * 4, &got);
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(std::memcmp(got.data(), floats.data(), words * 4), 0);
}

TEST(CodedTcpPair, CorruptOrCutShortCodedMessagesFailNamingPeerAndChunk) {
  const std::size_t len = 2 * PlaneCodec::kChunkWords * 4;
  std::vector<float> floats = gradient_like(len / 4, 6);
  PlaneCodec codec;
  std::vector<char> chunk(PlaneCodec::bound(PlaneCodec::kChunkWords));
  std::size_t first = codec.encode(reinterpret_cast<const char*>(floats.data()),
                                   PlaneCodec::kChunkWords, chunk.data());
  MessageHeader h{kMessageMagic, kCodedMessage, len};
  {  // the second chunk's high plane corrupted
    RawPeer p;
    p.write(&h, sizeof(h));
    p.write(chunk.data(), first);
    std::vector<char> bad(chunk.begin(), chunk.begin() + first);
    for (std::size_t i = sizeof(CodedChunkHeader) + 3 * PlaneCodec::kChunkWords; i < first; ++i)
      bad[i] ^= 0x5a;
    p.write(bad.data(), bad.size());
    Status s = p.receive(len);
    EXPECT_EQ(s.code(), Code::kDataLoss) << s.to_string();
    EXPECT_NE(s.message().find("rank 1 (host-b, pid 42)"), std::string::npos) << s.to_string();
    EXPECT_NE(s.message().find(fmt::format("chunk at byte {}", len / 2)), std::string::npos)
        << s.to_string();
  }
  {  // cut short in the middle of the first chunk
    RawPeer p;
    p.write(&h, sizeof(h));
    p.write(chunk.data(), first / 2);
    p.hang_up = true;
    Status s = p.receive(len);
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("rank 1 (host-b, pid 42) closed the connection in the middle of a "
                               "coded message"),
              std::string::npos)
        << s.to_string();
  }
  {  // a chunk header that does not fit the message
    RawPeer p;
    p.write(&h, sizeof(h));
    CodedChunkHeader wrong{7, 7, HighPlane::kStored};
    p.write(&wrong, sizeof(wrong));
    Status s = p.receive(len);
    EXPECT_EQ(s.code(), Code::kDataLoss);
    EXPECT_NE(s.message().find("impossible header"), std::string::npos) << s.to_string();
  }
  {  // words as they are claiming a high plane of their own
    RawPeer p;
    p.write(&h, sizeof(h));
    CodedChunkHeader wrong{static_cast<std::uint32_t>(PlaneCodec::kChunkWords), 12,
                           HighPlane::kWords};
    p.write(&wrong, sizeof(wrong));
    Status s = p.receive(len);
    EXPECT_EQ(s.code(), Code::kDataLoss);
    EXPECT_NE(s.message().find("impossible header for the chunk at byte 0"), std::string::npos)
        << s.to_string();
  }
  {  // words as they are, cut short in the second chunk
    RawPeer p;
    p.write(&h, sizeof(h));
    for (std::size_t c = 0; c < 2; ++c) {
      CodedChunkHeader wh = PlaneCodec::words_header(PlaneCodec::kChunkWords);
      p.write(&wh, sizeof(wh));
      p.write(floats.data() + c * PlaneCodec::kChunkWords, c == 0 ? len / 2 : len / 4);
    }
    p.hang_up = true;
    Status s = p.receive(len);
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find(fmt::format("(the chunk at byte {} of a {}-byte message from rank 1 "
                                           "(host-b, pid 42) cut short)",
                                           len / 2, len)),
              std::string::npos)
        << s.to_string();
  }
  {  // the coded flag on a message too small to be coded
    RawPeer p;
    MessageHeader small{kMessageMagic, kCodedMessage, 4096};
    p.write(&small, sizeof(small));
    Status s = p.receive(4096);
    EXPECT_EQ(s.code(), Code::kDataLoss);
    EXPECT_NE(s.message().find("garbage on the connection from rank 1"), std::string::npos);
  }
}

}  // namespace
}  // namespace kiln::comm::transport::tcp
