// Shard and index format: round trips, and corruption never yields a sample.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "kiln/data/checksum.h"
#include "kiln/base/file.h"
#include "kiln/data/shard.h"
#include "kiln/data/testing/test_dataset.h"

namespace kiln::data {
namespace {

using testing::ScratchDir;

TEST(SampleCodec, RoundTripsEveryKind) {
  std::vector<std::uint8_t> buf;
  ASSERT_TRUE(encode_sample(testing::test_schema(), testing::test_sample(7), &buf).is_ok());
  auto s = decode_sample(testing::test_schema(), buf);
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  EXPECT_EQ((*s)[0].i64, 7);
  EXPECT_EQ((*s)[1].data, testing::test_sample(7)[1].data);
  EXPECT_EQ((*s)[2].shape, std::vector<std::int64_t>{4});
  EXPECT_EQ((*s)[2].data, testing::test_sample(7)[2].data);
}

TEST(SampleCodec, RejectsSchemaMismatchAndTruncation) {
  std::vector<std::uint8_t> buf;
  Sample bad = testing::test_sample(1);
  bad[2].data.pop_back();
  Status st = encode_sample(testing::test_schema(), bad, &buf);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("'vec'"), std::string::npos) << st.message();
  buf.clear();
  ASSERT_TRUE(encode_sample(testing::test_schema(), testing::test_sample(1), &buf).is_ok());
  for (std::size_t n = 0; n < buf.size(); ++n) {
    auto r = decode_sample(testing::test_schema(), std::span(buf.data(), n));
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << n;
  }
}

TEST(SampleCodec, ViewsPointIntoTheEncodedBytes) {
  std::vector<std::uint8_t> buf;
  Sample want = testing::test_sample(7);
  ASSERT_TRUE(encode_sample(testing::test_schema(), want, &buf).is_ok());
  std::vector<FieldView> views;
  ASSERT_TRUE(decode_sample_view(testing::test_schema(), buf, &views).is_ok());
  ASSERT_EQ(views.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(views[i].kind, want[i].kind);
    if (want[i].kind == FieldKind::kInt64) {
      EXPECT_EQ(views[i].i64, want[i].i64);
      continue;
    }
    EXPECT_TRUE(std::equal(views[i].data.begin(), views[i].data.end(), want[i].data.begin(),
                           want[i].data.end()));
    EXPECT_GE(views[i].data.data(), buf.data());  // a view, not a copy
    EXPECT_LE(views[i].data.data() + views[i].data.size(), buf.data() + buf.size());
    EXPECT_TRUE(std::equal(views[i].shape().begin(), views[i].shape().end(),
                           want[i].shape.begin(), want[i].shape.end()));
  }
  for (std::size_t n = 0; n < buf.size(); ++n) {
    EXPECT_EQ(decode_sample_view(testing::test_schema(), std::span(buf.data(), n), &views).code(),
              Code::kDataLoss) << n;
  }
}

TEST(Shard, RoundTripAndRandomAccess) {
  ScratchDir dir;
  DatasetIndex idx = testing::write_test_dataset(dir.path(), 300, 4096);
  ASSERT_GT(idx.shards.size(), 3u);
  EXPECT_EQ(idx.num_samples, 300u);
  for (const auto& sh : idx.shards) {
    auto d = hash_file(dir.path() + "/" + sh.file);
    ASSERT_TRUE(d.is_ok());
    EXPECT_EQ(d->xxh3, sh.xxh3);
    EXPECT_EQ(d->bytes, sh.bytes);
  }
  const ShardInfo& sh = idx.shards[1];
  auto r = ShardReader::open(dir.path() + "/" + sh.file);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ(r->records(), sh.num_samples);
  std::vector<std::uint8_t> rec;
  for (std::uint64_t i = sh.num_samples; i-- > 0;) {
    ASSERT_TRUE(r->read(i, &rec).is_ok());
    auto s = decode_sample(idx.schema, rec);
    ASSERT_TRUE(s.is_ok());
    EXPECT_EQ((*s)[0].i64, static_cast<std::int64_t>(sh.first_sample + i));
  }
  EXPECT_EQ(r->read(sh.num_samples, &rec).code(), Code::kInvalidArgument);
  EXPECT_EQ(idx.shard_of(sh.first_sample), 1u);
  EXPECT_EQ(idx.shard_of(sh.first_sample - 1), 0u);
}

// Reads every record of a shard; returns false at the first error. A record
// that reads ok must be bit-identical to the original.
// No fsync: the flip test writes hundreds of copies.
void write_plain(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

bool read_all_or_fail(const std::string& path, const std::vector<std::vector<std::uint8_t>>& want) {
  auto r = ShardReader::open(path);
  if (!r) {
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().to_string();
    return false;
  }
  bool all = true;
  std::vector<std::uint8_t> rec;
  for (std::uint64_t i = 0; i < r->records(); ++i) {
    Status s = r->read(i, &rec);
    if (!s.is_ok()) {
      EXPECT_EQ(s.code(), Code::kDataLoss) << s.to_string();
      all = false;
      continue;
    }
    EXPECT_LT(i, want.size());
    if (i < want.size()) {
      EXPECT_EQ(rec, want[i]) << "corrupt record " << i << " read as valid";
    }
  }
  return all && r->records() == want.size();
}

TEST(Shard, EveryFlippedByteOrTruncationIsDetected) {
  ScratchDir dir;
  std::string path = dir.path() + "/s.kds";
  std::vector<std::vector<std::uint8_t>> want = testing::write_test_shard(path, 5);
  auto original = read_file(path);
  ASSERT_TRUE(original.is_ok());
  ASSERT_TRUE(read_all_or_fail(path, want));
  std::string bad = dir.path() + "/bad.kds";
  for (std::size_t pos = 0; pos < original->size(); ++pos) {
    std::string copy = *original;
    copy[pos] = static_cast<char>(copy[pos] ^ 0x10);
    write_plain(bad, copy);
    read_all_or_fail(bad, want);  // expectations inside: no corrupt record reads as valid
  }
  for (std::size_t len = 0; len < original->size(); len += 7) {
    write_plain(bad, original->substr(0, len));
    EXPECT_FALSE(read_all_or_fail(bad, want)) << "truncated to " << len;
  }
}

// An offset near 2^64 in a table whose checksum matches (a crafted file, not
// a flipped bit) must not wrap past the bounds check.
TEST(Shard, AnOffsetThatWrapsIsRejected) {
  ScratchDir dir;
  std::string path = dir.path() + "/s.kds";
  testing::write_test_shard(path, 5);
  auto bytes = kiln::read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  std::string crafted = *bytes;
  const std::size_t trailer = crafted.size() - kShardTrailerBytes;
  const std::size_t table = trailer - 5 * 8;
  std::uint64_t huge = ~std::uint64_t{0} - 3;
  std::memcpy(crafted.data() + table + 4 * 8, &huge, 8);
  std::uint64_t hash = xxh3({reinterpret_cast<const std::uint8_t*>(crafted.data()) + table, 5 * 8});
  std::memcpy(crafted.data() + trailer + 8, &hash, 8);
  std::string bad = dir.path() + "/crafted.kds";
  write_plain(bad, crafted);
  auto r = ShardReader::open(bad);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().to_string();
  EXPECT_NE(r.status().message().find("out of order or bounds"), std::string::npos);
}

TEST(Index, AnOversizedIndexIsRefusedBeforeParsing) {
  auto r = parse_index(std::string(kMaxIndexBytes + 1, ' '), "index.json");
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("limit"), std::string::npos);
}

TEST(Index, RoundTrips) {
  ScratchDir dir;
  DatasetIndex idx = testing::write_test_dataset(dir.path(), 50, 1024);
  auto text = read_file(dir.path() + "/index.json");
  ASSERT_TRUE(text.is_ok());
  auto parsed = parse_index(*text, "index.json");
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  EXPECT_EQ(index_to_json(*parsed), *text);
}

TEST(Index, MalformedFieldsAreNamed) {
  ScratchDir dir;
  DatasetIndex idx = testing::write_test_dataset(dir.path(), 50, 1024);
  ASSERT_GE(idx.shards.size(), 2u);
  std::string good = index_to_json(idx);
  auto expect_names = [&](std::string text, const std::string& field, Code code) {
    auto r = parse_index(text, "ds/index.json");
    ASSERT_FALSE(r.is_ok()) << field;
    EXPECT_EQ(r.status().code(), code) << r.status().to_string();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status().to_string();
    EXPECT_NE(r.status().message().find("ds/index.json"), std::string::npos);
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    auto at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  expect_names("{", "not valid JSON", Code::kInvalidArgument);
  expect_names(replace("\"version\": 1", "\"version\": 9"), "'version'", Code::kFailedPrecondition);
  expect_names(replace("\"num_samples\": 50", "\"num_samples\": 51"), "'num_samples'",
               Code::kInvalidArgument);
  expect_names(replace("\"kind\": \"bytes\"", "\"kind\": \"blob\""), "schema[1].kind",
               Code::kInvalidArgument);
  expect_names(replace("\"dtype\": \"float32\"", "\"dtype\": 3"), "schema[2].dtype",
               Code::kInvalidArgument);
  expect_names(replace("\"xxh3\": \"" + checksum_hex(idx.shards[1].xxh3) + "\"", "\"xxh3\": \"zz\""),
               "shards[1].xxh3", Code::kInvalidArgument);
  expect_names(replace("\"file\": \"shard-00001.kds\"", "\"file\": \"../etc\""), "shards[1].file",
               Code::kInvalidArgument);
  expect_names(replace("\"first_sample\": 0", "\"first_sample\": -1"), "shards[0].first_sample",
               Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::data
