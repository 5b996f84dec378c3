// VerifyPolicy::kOncePerFile: a file verified in full is not hashed again,
// while a replaced, rewritten or truncated file is still caught.
#include "kiln/data/verified_shards.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/data/shard.h"
#include "kiln/data/shard_cache.h"
#include "kiln/data/testing/test_dataset.h"

namespace kiln::data {
namespace {

using testing::ScratchDir;

// Reads every record; the first error, or ok.
Status read_all(const ShardReader& r) {
  for (std::uint64_t i = 0; i < r.records(); ++i) {
    auto rec = r.record(i);
    if (!rec) return rec.status();
  }
  return Status::ok();
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return st;
}

// Flips one payload byte of record 0 in place (the inode stays).
void flip_in_place(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid());
  std::uint8_t byte;
  ASSERT_EQ(::pread(fd.get(), &byte, 1, 8 + 8 + 3), 1);
  byte ^= 0x40;
  ASSERT_EQ(::pwrite(fd.get(), &byte, 1, 8 + 8 + 3), 1);
}

void set_mtime(const std::string& path, const struct timespec& mtime) {
  const struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

class VerifiedShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VerifiedShards::process().clear();
    path = dir.path() + "/s.kds";
    want = testing::write_test_shard(path, 5);
  }
  // Reads every record under kOncePerFile, so the file becomes verified.
  void read_through_once() {
    auto r = ShardReader::open(path, VerifyPolicy::kOncePerFile);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    ASSERT_TRUE(read_all(*r).is_ok());
  }
  ScratchDir dir;
  std::string path;
  std::vector<std::vector<std::uint8_t>> want;
};

TEST_F(VerifiedShardsTest, SecondReaderOfAFullyVerifiedFileSkipsHashing) {
  {
    auto first = ShardReader::open(path, VerifyPolicy::kOncePerFile);
    ASSERT_TRUE(first.is_ok()) << first.status().to_string();
    EXPECT_TRUE(first->hashes_records());
    // All but the last record: not yet verified in full.
    for (std::uint64_t i = 0; i + 1 < first->records(); ++i) ASSERT_TRUE(first->record(i).is_ok());
    auto early = ShardReader::open(path, VerifyPolicy::kOncePerFile);
    ASSERT_TRUE(early.is_ok());
    EXPECT_TRUE(early->hashes_records());
    ASSERT_TRUE(first->record(first->records() - 1).is_ok());
    ASSERT_TRUE(first->record(0).is_ok());  // reading one twice counts it once
  }
  EXPECT_TRUE(VerifiedShards::process().contains(FileIdentity::of(stat_of(path))));
  auto second = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(second.is_ok());
  EXPECT_FALSE(second->hashes_records());
  std::vector<std::uint8_t> rec;
  for (std::uint64_t i = 0; i < second->records(); ++i) {
    ASSERT_TRUE(second->read(i, &rec).is_ok());
    EXPECT_EQ(rec, want[i]);
  }
  // kEveryRead ignores what the process knows.
  auto every = ShardReader::open(path, VerifyPolicy::kEveryRead);
  ASSERT_TRUE(every.is_ok());
  EXPECT_TRUE(every->hashes_records());
}

TEST_F(VerifiedShardsTest, AFailedRecordNeverMakesTheFileTrusted) {
  flip_in_place(path);
  auto r = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(read_all(*r).code(), Code::kDataLoss);
  for (std::uint64_t i = 1; i < r->records(); ++i) EXPECT_TRUE(r->record(i).is_ok());
  auto again = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(again->hashes_records());
  EXPECT_EQ(again->record(0).status().code(), Code::kDataLoss);
}

TEST_F(VerifiedShardsTest, CorruptReplacementAtANewInodeIsCaught) {
  ASSERT_NO_FATAL_FAILURE(read_through_once());
  // Same size, same mtime, corrupt, renamed over the verified file.
  struct stat before = stat_of(path);
  std::string tmp = path + ".tmp";
  auto bytes = read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  ASSERT_TRUE(write_file_atomic(tmp, *bytes).is_ok());
  flip_in_place(tmp);
  set_mtime(tmp, before.st_mtim);
  ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0);
  ASSERT_NE(stat_of(path).st_ino, before.st_ino);
  auto r = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(r->hashes_records());
  Status s = read_all(*r);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("record 0"), std::string::npos) << s.to_string();
}

TEST_F(VerifiedShardsTest, InPlaceRewriteWithANewMtimeIsCaught) {
  ASSERT_NO_FATAL_FAILURE(read_through_once());
  struct stat before = stat_of(path);
  flip_in_place(path);
  struct timespec later = before.st_mtim;
  later.tv_sec += 1;  // whatever the filesystem's timestamp granularity
  set_mtime(path, later);
  auto r = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(r->hashes_records());
  EXPECT_EQ(read_all(*r).code(), Code::kDataLoss);
}

TEST_F(VerifiedShardsTest, TruncationIsCaughtByFramingWhateverThePolicy) {
  ASSERT_NO_FATAL_FAILURE(read_through_once());
  struct stat before = stat_of(path);
  for (off_t cut : {before.st_size - 1, before.st_size - 30, off_t{100}, off_t{20}}) {
    ASSERT_EQ(::truncate(path.c_str(), cut), 0);
    set_mtime(path, before.st_mtim);  // even with the verified file's mtime
    for (auto policy : {VerifyPolicy::kOncePerFile, VerifyPolicy::kEveryRead}) {
      auto r = ShardReader::open(path, policy);
      EXPECT_EQ(r.status().code(), Code::kDataLoss) << cut << " " << r.status().to_string();
    }
  }
}

TEST_F(VerifiedShardsTest, EveryReadCatchesCorruptionThatKeepsTheIdentity) {
  ASSERT_NO_FATAL_FAILURE(read_through_once());
  // What the once-per-file policy trades away: a change that keeps inode,
  // size and mtime (here forged; in practice a flip on the medium).
  struct stat before = stat_of(path);
  flip_in_place(path);
  set_mtime(path, before.st_mtim);
  auto once = ShardReader::open(path, VerifyPolicy::kOncePerFile);
  ASSERT_TRUE(once.is_ok());
  EXPECT_FALSE(once->hashes_records());
  auto every = ShardReader::open(path, VerifyPolicy::kEveryRead);
  ASSERT_TRUE(every.is_ok());
  EXPECT_EQ(read_all(*every).code(), Code::kDataLoss);
}

TEST(VerifiedShards, ForgetsTheOldestBeyondItsCapacity) {
  VerifiedShards v(2);
  FileIdentity a{1, 1, 10, 5}, b{1, 2, 10, 5}, c{1, 3, 10, 5};
  v.add(a);
  v.add(b);
  v.add(a);  // already known: no reordering, no growth
  v.add(c);
  EXPECT_FALSE(v.contains(a));
  EXPECT_TRUE(v.contains(b));
  EXPECT_TRUE(v.contains(c));
  EXPECT_FALSE(v.contains({1, 2, 10, 6}));  // another mtime is another file
}

TEST(VerifiedShards, AVerifiedDownloadIsTrustedAndStaysSoWhenLeasedAgain) {
  VerifiedShards::process().clear();
  ScratchDir remote, local;
  DatasetIndex index = testing::write_test_dataset(remote.path() + "/ds", 40, 1000);
  auto store = std::move(objstore::open_object_store(remote.path())).value();
  ShardCache cache(store.get(), "ds", {.dir = local.path(), .capacity_bytes = 1 << 30});
  for (int round = 0; round < 2; ++round) {  // a download, then a hit (touches atime only)
    auto lease = cache.acquire(index.shards[0], Deadline::after_seconds(20));
    ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
    auto r = ShardReader::open(lease->path(), VerifyPolicy::kOncePerFile);
    ASSERT_TRUE(r.is_ok());
    EXPECT_FALSE(r->hashes_records()) << "round " << round;
    EXPECT_TRUE(read_all(*r).is_ok());
  }
  EXPECT_EQ(cache.stats().downloads.load(), 1u);
  EXPECT_EQ(cache.stats().hits.load(), 1u);
}

}  // namespace
}  // namespace kiln::data
