// ChunkedUpload / get_chunks_to_file on a file:// store cut into small
// chunks: a stream comes back bit for bit, no more chunks are in flight
// than the store's UploadShape allows, a corrupt or missing chunk is named,
// and an aborted upload leaves nothing.
#include "kiln/objstore/chunked_objects.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "kiln/base/file.h"
#include "kiln/base/testing/temp_dir.h"
#include "kiln/base/xxh3.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::objstore {
namespace {

Deadline soon() { return Deadline::after_seconds(10); }

// A file:// store whose uploads come in `part` byte pieces, two at a time;
// counts the puts in flight at once and can fail one key's put.
class SmallParts final : public testing::ForwardingObjectStore {
 public:
  SmallParts(ObjectStore& inner, std::size_t part) : ForwardingObjectStore(inner), part_(part) {}
  UploadShape upload_shape() const override { return {part_, 2}; }
  Status put(const std::string& key, std::string_view bytes, Deadline d) override {
    int now = ++in_flight_;
    {
      std::lock_guard<std::mutex> l(mu_);
      most_in_flight_ = std::max(most_in_flight_, now);
    }
    Status s = key == fail_key_ ? unavailable("injected: put " + key) : inner_.put(key, bytes, d);
    --in_flight_;
    return s;
  }
  int most_in_flight() {
    std::lock_guard<std::mutex> l(mu_);
    return most_in_flight_;
  }
  std::string fail_key_;

 private:
  const std::size_t part_;
  std::atomic<int> in_flight_{0};
  std::mutex mu_;
  int most_in_flight_ = 0;
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

auto key_of() {
  return [](std::size_t i) { return fmt::format("s/chunk-{:03}", i); };
}

TEST(ChunkedUpload, AStreamComesBackBitForBitFromPartSizedChunks) {
  kiln::testing::TempDir dir;
  auto inner = open_object_store("file://" + dir.path() + "/root").value();
  SmallParts store(*inner, 1000);
  const std::string bytes = pattern(10500);
  ChunkedUpload up(store, key_of(), soon());
  // Appends of odd sizes, across chunk boundaries.
  for (std::size_t off = 0; off < bytes.size(); off += 777) {
    std::size_t n = std::min<std::size_t>(777, bytes.size() - off);
    ASSERT_TRUE(up.append(bytes.data() + off, n).is_ok());
  }
  auto chunks = up.finish();
  ASSERT_TRUE(chunks.is_ok()) << chunks.status().to_string();
  ASSERT_EQ(chunks->size(), 11u);
  for (std::size_t i = 0; i < chunks->size(); ++i) {
    const auto& c = (*chunks)[i];
    EXPECT_EQ(c.key, fmt::format("s/chunk-{:03}", i));
    EXPECT_EQ(c.bytes, i < 10 ? 1000u : 500u);
    EXPECT_EQ(c.xxh3, xxh3(bytes.data() + i * 1000, c.bytes));
  }
  EXPECT_LE(store.most_in_flight(), 2) << "more chunks in flight than the store's shape allows";
  EXPECT_EQ(store.list("s/", soon()).value().size(), 11u);

  const std::string dst = dir.path() + "/back";
  ASSERT_TRUE(get_chunks_to_file(store, *chunks, dst, soon()).is_ok());
  EXPECT_EQ(read_file(dst).value(), bytes);
}

TEST(ChunkedUpload, AnEmptyStreamIsOneEmptyChunk) {
  kiln::testing::TempDir dir;
  auto inner = open_object_store("file://" + dir.path() + "/root").value();
  SmallParts store(*inner, 1000);
  ChunkedUpload up(store, key_of(), soon());
  auto chunks = up.finish();
  ASSERT_TRUE(chunks.is_ok()) << chunks.status().to_string();
  ASSERT_EQ(chunks->size(), 1u);
  EXPECT_EQ((*chunks)[0].bytes, 0u);
  ASSERT_TRUE(get_chunks_to_file(store, *chunks, dir.path() + "/back", soon()).is_ok());
  EXPECT_EQ(read_file(dir.path() + "/back").value(), "");
}

TEST(ChunkedUpload, ACorruptOrMissingChunkIsNamed) {
  kiln::testing::TempDir dir;
  auto inner = open_object_store("file://" + dir.path() + "/root").value();
  SmallParts store(*inner, 1000);
  ChunkedUpload up(store, key_of(), soon());
  const std::string bytes = pattern(3000);
  ASSERT_TRUE(up.append(bytes.data(), bytes.size()).is_ok());
  auto chunks = up.finish().value();

  std::string flipped = pattern(1000);
  flipped[10] ^= 1;
  ASSERT_TRUE(inner->put("s/chunk-001", flipped, soon()).is_ok());
  Status corrupt = get_chunks_to_file(store, chunks, dir.path() + "/back", soon());
  EXPECT_EQ(corrupt.code(), Code::kDataLoss) << corrupt.to_string();
  EXPECT_NE(corrupt.message().find("s/chunk-001"), std::string::npos) << corrupt.to_string();

  ASSERT_TRUE(inner->put("s/chunk-001", flipped.substr(0, 999), soon()).is_ok());
  Status short_chunk = get_chunks_to_file(store, chunks, dir.path() + "/back", soon());
  EXPECT_EQ(short_chunk.code(), Code::kDataLoss) << short_chunk.to_string();

  ASSERT_TRUE(inner->remove("s/chunk-002", soon()).is_ok());
  chunks.erase(chunks.begin() + 1);  // only the missing one is wrong now
  Status missing = get_chunks_to_file(store, chunks, dir.path() + "/back", soon());
  EXPECT_EQ(missing.code(), Code::kNotFound) << missing.to_string();
}

TEST(ChunkedUpload, AFailedOrAbortedUploadLeavesNoChunks) {
  kiln::testing::TempDir dir;
  auto inner = open_object_store("file://" + dir.path() + "/root").value();
  SmallParts store(*inner, 1000);
  store.fail_key_ = "s/chunk-003";
  const std::string bytes = pattern(8000);
  {
    ChunkedUpload up(store, key_of(), soon());
    Status s = up.append(bytes.data(), bytes.size());
    auto done = s.is_ok() ? up.finish() : Result<std::vector<StoredChunk>>(s);
    ASSERT_FALSE(done.is_ok());
    EXPECT_NE(done.status().message().find("injected: put s/chunk-003"), std::string::npos)
        << done.status().to_string();
    up.abort();
  }
  EXPECT_TRUE(store.list("s/", soon()).value().empty()) << "a failed upload left chunks";

  store.fail_key_.clear();
  {
    ChunkedUpload up(store, key_of(), soon());
    ASSERT_TRUE(up.append(bytes.data(), bytes.size()).is_ok());
    // Destroyed unfinished: as abort().
  }
  EXPECT_TRUE(store.list("s/", soon()).value().empty()) << "an abandoned upload left chunks";
}

}  // namespace
}  // namespace kiln::objstore
