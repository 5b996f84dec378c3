#include "kiln/ckpt/format.h"

#include <gtest/gtest.h>

#include "kiln/ckpt/state.h"

namespace kiln::ckpt {
namespace {

TEST(CkptFormat, DirectoryNames) {
  EXPECT_EQ(step_dir_name(42), "step-42");
  EXPECT_EQ(parse_step_dir_name("step-42"), 42);
  EXPECT_EQ(parse_step_dir_name("step-42.tmp"), std::nullopt);
  EXPECT_EQ(parse_step_dir_name("step-"), std::nullopt);
  EXPECT_EQ(parse_step_dir_name("step-4x"), std::nullopt);
  EXPECT_EQ(parse_step_dir_name("latest"), std::nullopt);
  EXPECT_EQ(parse_tmp_step_dir_name("step-7.tmp"), 7);
  EXPECT_EQ(parse_tmp_step_dir_name("step-7"), std::nullopt);
  EXPECT_EQ(shard_file_name(3), "shard-00003.bin");
}

Manifest sample() {
  Manifest m;
  m.step = 9;
  m.world_size = 2;
  m.time = "2026-01-01T00:00:00Z";
  for (int r = 0; r < 2; ++r) {
    ShardRecord s{r, shard_file_name(r), 124, {}};
    EntryRecord t{"w",
                  true,
                  TensorSpec{comm::DataType::kBFloat16, {10, 3}, r * 5, 5},
                  0,
                  30,
                  30,
                  Compression::kNone,
                  0xfedcba9876543210ull};
    EntryRecord b{"rng", false, {}, 30, 94, 100, Compression::kZstd, 1};
    s.entries = {t, b};
    m.shards.push_back(s);
  }
  return m;
}

TEST(CkptFormat, ManifestRoundTrip) {
  Manifest m = sample();
  auto back = parse_manifest(to_json(m), "test");
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(to_json(*back), to_json(m));
  EXPECT_EQ(back->shards[1].entries[0].spec.row_offset, 5);
  EXPECT_EQ(back->shards[1].entries[0].xxh3, 0xfedcba9876543210ull);
  EXPECT_EQ(back->shards[0].entries[1].compression, Compression::kZstd);
}

TEST(CkptFormat, MalformedManifestsAreDataLoss) {
  EXPECT_EQ(parse_manifest("{", "m").status().code(), Code::kDataLoss);
  EXPECT_EQ(parse_manifest("{}", "m").status().code(), Code::kDataLoss);
  Manifest m = sample();
  m.world_size = 3;  // but two shards
  EXPECT_EQ(parse_manifest(to_json(m), "m").status().code(), Code::kDataLoss);
  m = sample();
  m.shards[0].entries[1].stored_bytes = 1000;  // past the end of the file
  auto r = parse_manifest(to_json(m), "m");
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("rng"), std::string::npos) << r.status().message();
  m = sample();
  m.version = 99;
  EXPECT_EQ(parse_manifest(to_json(m), "m").status().code(), Code::kFailedPrecondition);
}

// A shard stored as chunk objects lists them, with sizes that add up to the
// shard's and checksums, and round-trips; a manifest without chunks has none.
TEST(CkptFormat, ChunkedShardsRoundTripAndMustCoverTheShard) {
  EXPECT_EQ(shard_chunk_name(3, 0x9f86d081884c7d65ull, 12),
            "shard-00003.9f86d081884c7d65.chunk-00012");
  EXPECT_NE(new_upload_attempt(), new_upload_attempt());
  Manifest m = sample();
  m.version = kChunkedFormatVersion;
  m.shards[1].chunks = {{shard_chunk_name(1, 5, 0), 100, 0x0123456789abcdefull},
                        {shard_chunk_name(1, 5, 1), 24, 7}};
  auto back = parse_manifest(to_json(m), "test");
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(to_json(*back), to_json(m));
  EXPECT_TRUE(back->shards[0].chunks.empty());
  ASSERT_EQ(back->shards[1].chunks.size(), 2u);
  EXPECT_EQ(back->shards[1].chunks[0].xxh3, 0x0123456789abcdefull);
  EXPECT_EQ(back->shards[1].chunks[1].bytes, 24u);

  Manifest short_chunks = m;
  short_chunks.shards[1].chunks[1].bytes = 23;  // one byte of the shard in no chunk
  auto r = parse_manifest(to_json(short_chunks), "m");
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().to_string();
  Manifest escaping = m;
  escaping.shards[1].chunks[0].file = "../elsewhere";
  EXPECT_EQ(parse_manifest(to_json(escaping), "m").status().code(), Code::kDataLoss);
  EXPECT_EQ(parse_object_layout("chunks").value(), ObjectLayout::kChunks);
  EXPECT_EQ(parse_object_layout("multipart").value(), ObjectLayout::kMultipart);
  EXPECT_EQ(parse_object_layout("parts").status().code(), Code::kInvalidArgument);
}

TEST(CkptState, EvenRowsCoverEverythingOnce) {
  for (int world = 1; world <= 8; ++world) {
    for (std::int64_t total : {0, 1, 7, 37, 64}) {
      std::int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        RowRange rr = even_rows(total, r, world);
        EXPECT_EQ(rr.offset, next);
        next += rr.count;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(CkptState, ViewRejectsBadEntries) {
  float x[4] = {};
  StateView v;
  EXPECT_TRUE(v.add_tensor("a", comm::DataType::kFloat32, {4}, 0, 4, x).is_ok());
  EXPECT_EQ(v.add_blob("a", x, 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(v.add_tensor("b", comm::DataType::kFloat32, {4}, 2, 3, x).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(v.add_tensor("c", comm::DataType::kFloat32, {}, 0, 0, x).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(v.add_blob("", x, 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(v.total_bytes(), 16u);
}

// Sizes in a manifest come from a file: ones that would overflow when added
// or multiplied are corrupt, not wrapped into range.
TEST(CkptFormat, SizesThatOverflowAreDataLoss) {
  auto entry = [](const std::string& fields) {
    return R"({"rank":0,"file":"shard-00000.bin","bytes":100,"entries":[{"name":"w",)" + fields +
           R"(,"compression":"none","xxh3":"01"}]})";
  };
  // offset + stored_bytes wraps to 10.
  auto wrapped = parse_shard_record(
      entry(R"("kind":"blob","offset":18446744073709551606,"stored_bytes":20,"raw_bytes":20)"),
      "m");
  EXPECT_EQ(wrapped.status().code(), Code::kDataLoss) << wrapped.status().to_string();
  EXPECT_NE(wrapped.status().message().find("ends past the file"), std::string::npos);
  // 2^32 x 2^32 x 4 bytes wraps a 64-bit product to 0, which raw_bytes claims.
  auto product = parse_shard_record(
      entry(R"("kind":"tensor","dtype":"float32","shape":[1,4294967296,4294967296],)"
            R"("row_offset":0,"rows":1,"offset":0,"stored_bytes":0,"raw_bytes":0)"),
      "m");
  EXPECT_EQ(product.status().code(), Code::kDataLoss) << product.status().to_string();
  // row_offset + rows past INT64_MAX.
  auto rows = parse_shard_record(
      entry(R"("kind":"tensor","dtype":"float32","shape":[9223372036854775807],)"
            R"("row_offset":9223372036854775807,"rows":9223372036854775807,"offset":0,)"
            R"("stored_bytes":0,"raw_bytes":0)"),
      "m");
  EXPECT_EQ(rows.status().code(), Code::kDataLoss) << rows.status().to_string();
  EXPECT_EQ(parse_manifest(std::string(kMaxManifestBytes + 1, ' '), "m").status().code(),
            Code::kDataLoss);
}

}  // namespace
}  // namespace kiln::ckpt
