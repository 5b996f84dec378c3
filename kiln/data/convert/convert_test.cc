// Converters: IDX (gzip) -> dataset, text -> token windows; malformed input
// is an error naming the file and what is wrong.
#include <zlib.h>

#include <cstring>
#include <fstream>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "kiln/data/convert/fashion_mnist.h"
#include "kiln/data/convert/idx_file.h"
#include "kiln/data/convert/text_corpus.h"
#include "kiln/data/shard.h"
#include "kiln/data/testing/test_dataset.h"

namespace kiln::data::convert {
namespace {

using testing::ScratchDir;

void put_be32(std::vector<std::uint8_t>* out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<std::uint8_t>(v >> s));
}

// Writes a gzip IDX file of unsigned bytes with `dims`; element i is f(i).
void write_idx(const std::string& path, std::vector<std::uint32_t> dims,
               std::uint8_t (*f)(std::size_t), std::size_t truncate_elements = 0) {
  std::vector<std::uint8_t> bytes{0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  std::size_t n = 1;
  for (auto d : dims) {
    put_be32(&bytes, d);
    n *= d;
  }
  for (std::size_t i = 0; i < n - truncate_elements; ++i) bytes.push_back(f(i));
  gzFile g = gzopen(path.c_str(), "wb");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(g);
}

std::uint8_t pixel(std::size_t i) { return static_cast<std::uint8_t>(i * 7 + 3); }
std::uint8_t label(std::size_t i) { return static_cast<std::uint8_t>(i % 10); }
std::uint8_t bad_label(std::size_t i) { return i == 3 ? 11 : 0; }

// A fake dataset-fashion-mnist directory: `n` train and `n/2` test images of 4x3.
std::string fake_source(const ScratchDir& dir, std::uint32_t n) {
  std::string src = dir.path() + "/src";
  ::mkdir(src.c_str(), 0755);
  write_idx(src + "/train-images-idx3-ubyte.gz", {n, 4, 3}, pixel);
  write_idx(src + "/train-labels-idx1-ubyte.gz", {n}, label);
  write_idx(src + "/t10k-images-idx3-ubyte.gz", {n / 2, 4, 3}, pixel);
  write_idx(src + "/t10k-labels-idx1-ubyte.gz", {n / 2}, label);
  return src;
}

// Reads sample `i` of the dataset in `dir` (index + shard reader).
Sample read_sample(const DatasetIndex& index, const std::string& dir, std::uint64_t i) {
  const ShardInfo& sh = index.shards[index.shard_of(i)];
  auto reader = ShardReader::open(dir + "/" + sh.file);
  EXPECT_TRUE(reader.is_ok()) << reader.status().to_string();
  std::vector<std::uint8_t> record;
  EXPECT_TRUE(reader->read(i - sh.first_sample, &record).is_ok());
  auto s = decode_sample(index.schema, record);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return *s;
}

TEST(FashionMnist, ConvertsBothSplitsSampleForSample) {
  ScratchDir dir;
  std::string src = fake_source(dir, 100);
  auto out = convert_fashion_mnist(dir.path() + "/out", {.source_dir = src, .shard_bytes = 256});
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  EXPECT_EQ(out->train.num_samples, 100u);
  EXPECT_EQ(out->test.num_samples, 50u);
  EXPECT_GT(out->train.shards.size(), 1u);  // 256-byte shards: several
  for (std::uint64_t i : {0ull, 37ull, 99ull}) {
    Sample s = read_sample(out->train, dir.path() + "/out/train", i);
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[0].shape, (std::vector<std::int64_t>{1, 4, 3}));
    for (std::size_t p = 0; p < 12; ++p) EXPECT_EQ(s[0].data[p], pixel(i * 12 + p));
    EXPECT_EQ(s[1].i64, static_cast<std::int64_t>(label(i)));
  }
}

TEST(FashionMnist, MissingPackageNamesIt) {
  ScratchDir dir;
  auto out = convert_fashion_mnist(dir.path() + "/out", {.source_dir = dir.path() + "/nowhere"});
  EXPECT_EQ(out.status().code(), Code::kNotFound);
  EXPECT_NE(out.status().message().find("dataset-fashion-mnist"), std::string::npos);
}

TEST(FashionMnist, LabelOutOfRangeNamesFileAndSample) {
  ScratchDir dir;
  std::string src = fake_source(dir, 10);
  write_idx(src + "/train-labels-idx1-ubyte.gz", {10}, bad_label);
  auto out = convert_fashion_mnist(dir.path() + "/out", {.source_dir = src});
  EXPECT_EQ(out.status().code(), Code::kInvalidArgument);
  EXPECT_NE(out.status().message().find("train-labels-idx1-ubyte.gz: label 11 of sample 3"),
            std::string::npos) << out.status().to_string();
}

TEST(Idx, TruncatedAndBadHeadersAreNamed) {
  ScratchDir dir;
  std::string p = dir.path() + "/short.gz";
  write_idx(p, {10, 2, 2}, pixel, /*truncate_elements=*/5);
  auto r = read_idx(p);
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().to_string();

  std::string q = dir.path() + "/notidx";
  std::ofstream(q) << "hello world, not an IDX file";
  r = read_idx(q);  // zlib reads a plain file as is
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not an IDX file"), std::string::npos);

  EXPECT_EQ(read_idx(dir.path() + "/absent.gz").status().code(), Code::kNotFound);
}

TEST(Idx, ReadsTheRealFashionMnistLabelsWhenInstalled) {
  std::string labels = std::string(kFashionMnistDir) + "/t10k-labels-idx1-ubyte.gz";
  struct stat st {};
  if (::stat(labels.c_str(), &st) != 0) GTEST_SKIP() << labels << " absent";
  auto r = read_idx(labels);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->dims, std::vector<std::uint32_t>{10000});
  std::vector<int> per_class(10);
  for (auto l : r->data) ++per_class.at(l);
  for (int c : per_class) EXPECT_EQ(c, 1000);  // the test split is balanced
}

TEST(Text, WindowsChainAndEveryTokenIsATargetOnce) {
  ScratchDir dir;
  std::string a = dir.path() + "/a.txt", b = dir.path() + "/b.txt";
  std::string ta(1000, 'x'), tb;
  for (int i = 0; i < 1000; ++i) ta[i] = static_cast<char>('a' + i % 26);
  for (int i = 0; i < 301; ++i) tb.push_back(static_cast<char>(i % 256));
  std::ofstream(a, std::ios::binary) << ta;
  std::ofstream(b, std::ios::binary) << tb;
  std::string all = ta + tb;  // 1301 tokens
  auto out = convert_text(dir.path() + "/out", {a, b}, {.seq_len = 10, .eval_fraction = 0.1});
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  // (1301 - 1) / 10 = 130 windows: 13 test, 117 train.
  EXPECT_EQ(out->train.num_samples, 117u);
  EXPECT_EQ(out->test.num_samples, 13u);
  for (std::uint64_t w : {0ull, 50ull, 116ull}) {
    Sample s = read_sample(out->train, dir.path() + "/out/train", w);
    ASSERT_EQ(s[0].shape, std::vector<std::int64_t>{11});
    std::int32_t tok[11];
    std::memcpy(tok, s[0].data.data(), sizeof tok);
    for (int k = 0; k < 11; ++k) EXPECT_EQ(tok[k], static_cast<std::uint8_t>(all[w * 10 + k]));
  }
  Sample last = read_sample(out->test, dir.path() + "/out/test", 12);
  std::int32_t tok[11];
  std::memcpy(tok, last[0].data.data(), sizeof tok);
  EXPECT_EQ(tok[10], static_cast<std::uint8_t>(all[129 * 10 + 10]));
}

TEST(Text, RejectsBadOptionsAndShortCorpora) {
  ScratchDir dir;
  std::string a = dir.path() + "/a.txt";
  std::ofstream(a) << "tiny";
  EXPECT_EQ(convert_text(dir.path() + "/o", {a}, {.seq_len = 128}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(convert_text(dir.path() + "/o", {a}, {.tokenizer = "bpe"}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(convert_text(dir.path() + "/o", {dir.path() + "/none"}, {}).status().code(),
            Code::kNotFound);
}

}  // namespace
}  // namespace kiln::data::convert
