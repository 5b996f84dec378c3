// file:// store: the calls the S3 tier added (ranges, head, list, remove)
// behave as on S3.
#include "kiln/objstore/file_object_store.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <fstream>

#include "kiln/base/file.h"
#include "kiln/base/testing/fault_fs.h"
#include "kiln/base/testing/temp_dir.h"
#include "kiln/objstore/object_store.h"

namespace kiln::objstore {
namespace {

Deadline soon() { return Deadline::after_seconds(10); }

TEST(FileObjectStore, RangeHeadListRemove) {
  kiln::testing::TempDir dir;
  auto store = open_object_store("file://" + dir.path() + "/root/").value();
  std::ofstream(dir.path() + "/src") << "0123456789";
  ASSERT_TRUE(store->put_file("a/x", dir.path() + "/src", soon()).is_ok());
  ASSERT_TRUE(store->put_file("a/y", dir.path() + "/src", soon()).is_ok());
  ASSERT_TRUE(store->put_file("b", dir.path() + "/src", soon()).is_ok());
  std::ofstream(dir.path() + "/root/a/z.tmp.123") << "in flight";

  EXPECT_EQ(store->get_range("a/x", 3, 4, soon()).value(), "3456");
  EXPECT_EQ(store->get_range("a/x", 8, 100, soon()).value(), "89");
  EXPECT_EQ(store->get_range("a/x", 11, 1, soon()).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(store->head("a/x", soon()).value().bytes, 10u);
  EXPECT_EQ(store->head("nope", soon()).status().code(), Code::kNotFound);

  auto all = store->list("", soon()).value();
  ASSERT_EQ(all.size(), 3u) << "temp names of puts in flight are not objects";
  EXPECT_EQ(all[0].key, "a/x");
  EXPECT_EQ(all[2].key, "b");
  auto a = store->list("a/", soon()).value();
  EXPECT_EQ(a.size(), 2u);
  EXPECT_TRUE(store->list("zzz/", soon()).value().empty());

  ASSERT_TRUE(store->remove("a/x", soon()).is_ok());
  EXPECT_TRUE(store->remove("a/x", soon()).is_ok());
  EXPECT_EQ(store->list("a/", soon()).value().size(), 1u);
}

// put_if_absent stores only where no object is (link(2)), leaves no temp
// file either way, and a plain put still replaces.
TEST(FileObjectStore, PutIfAbsentNeverReplaces) {
  kiln::testing::TempDir dir;
  auto store = open_object_store("file://" + dir.path() + "/root").value();
  ASSERT_TRUE(store->put_if_absent("step-4/manifest.json", "first", soon()).is_ok());
  Status again = store->put_if_absent("step-4/manifest.json", "second", soon());
  EXPECT_EQ(again.code(), Code::kAlreadyExists) << again.to_string();
  EXPECT_EQ(store->get("step-4/manifest.json", soon()).value(), "first");
  EXPECT_EQ(list_dir(dir.path() + "/root/step-4").value(),
            (std::vector<std::string>{"manifest.json"}))
      << "a temp file was left";
  ASSERT_TRUE(store->put("step-4/manifest.json", "third", soon()).is_ok());
  EXPECT_EQ(store->get("step-4/manifest.json", soon()).value(), "third");
}

// The put's bytes are fsynced before the rename publishes them: when that
// fsync fails, no object appears (a crash could otherwise leave a published
// but empty object, e.g. a checkpoint's "manifest last" commit), and an
// existing object keeps its old bytes.
TEST(FileObjectStore, PutFsyncsBeforeItPublishes) {
  kiln::testing::TempDir dir;
  kiln::testing::FaultFs fs(Fs::posix());
  auto store = make_file_object_store(dir.path() + "/root", &fs);
  std::ofstream(dir.path() + "/v1") << "v1";
  std::ofstream(dir.path() + "/v2") << "v2";

  fs.fail(kiln::testing::FsOp::kSync, "new", EIO);
  Status s = store->put_file("new", dir.path() + "/v1", soon());
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("put file://" + dir.path() + "/root/new"), std::string::npos)
      << s.to_string();
  EXPECT_EQ(store->head("new", soon()).status().code(), Code::kNotFound);

  ASSERT_TRUE(store->put_file("old", dir.path() + "/v1", soon()).is_ok());
  fs.fail(kiln::testing::FsOp::kSync, "old", EIO);
  EXPECT_FALSE(store->put_file("old", dir.path() + "/v2", soon()).is_ok());
  EXPECT_EQ(store->get("old", soon()).value(), "v1");
  EXPECT_EQ(list_dir(dir.path() + "/root").value(), (std::vector<std::string>{"old"}))
      << "the failed puts' temp files are gone";

  // And the directory entry itself is made durable once the rename is done.
  fs.fail(kiln::testing::FsOp::kSyncDir, dir.path() + "/root", EIO);
  EXPECT_FALSE(store->put_file("old", dir.path() + "/v2", soon()).is_ok());
  EXPECT_EQ(fs.injected(), 3);
}

TEST(FileObjectStore, StreamingWriterCommitsAtomically) {
  kiln::testing::TempDir dir;
  auto store = make_file_object_store(dir.path() + "/root");
  auto w = store->open_writer("step-1/shard.bin", soon());
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  ASSERT_TRUE((*w)->append("abc", 3).is_ok());
  ASSERT_TRUE((*w)->append("def", 3).is_ok());
  EXPECT_EQ(store->head("step-1/shard.bin", soon()).status().code(), Code::kNotFound);
  EXPECT_TRUE(store->list("", soon()).value().empty()) << "the temp file is no object";
  ASSERT_TRUE((*w)->commit().is_ok());
  EXPECT_EQ(store->get("step-1/shard.bin", soon()).value(), "abcdef");

  auto dropped = store->open_writer("step-1/other.bin", soon()).value();
  ASSERT_TRUE(dropped->append("x", 1).is_ok());
  dropped.reset();  // uncommitted: aborted
  EXPECT_EQ(list_dir(dir.path() + "/root/step-1").value(), (std::vector<std::string>{"shard.bin"}));

  ASSERT_TRUE(store->put("small", "manifest", soon()).is_ok());
  EXPECT_EQ(store->get("small", soon()).value(), "manifest");
}

// A writer's temp file is its pending upload until it commits; aborting it
// (as a cleanup does for a writer that died) removes the temp file only.
TEST(FileObjectStore, PendingUploadsAreTheWritersTempFiles) {
  kiln::testing::TempDir dir;
  auto store = make_file_object_store(dir.path() + "/root");
  auto a = store->open_writer("step-1/a.bin", soon()).value();
  auto b = store->open_writer("step-2/b.bin", soon()).value();
  ASSERT_TRUE(a->append("abc", 3).is_ok());
  ASSERT_TRUE(b->append("def", 3).is_ok());
  auto pending = store->list_pending_uploads("step-", soon());
  ASSERT_TRUE(pending.is_ok()) << pending.status().to_string();
  ASSERT_EQ(pending->size(), 2u);
  EXPECT_EQ((*pending)[0].key, "step-1/a.bin");
  EXPECT_EQ((*pending)[1].key, "step-2/b.bin");
  EXPECT_EQ(store->list_pending_uploads("step-2/", soon()).value().size(), 1u);

  ASSERT_TRUE(store->abort_pending_upload((*pending)[0], soon()).is_ok());
  EXPECT_TRUE(store->abort_pending_upload((*pending)[0], soon()).is_ok()) << "already gone";
  EXPECT_FALSE(a->commit().is_ok()) << "an aborted upload cannot be published";
  ASSERT_TRUE(b->commit().is_ok());
  EXPECT_TRUE(store->list_pending_uploads("", soon()).value().empty());
  EXPECT_EQ(store->get("step-2/b.bin", soon()).value(), "def");
  // Only a temp file inside the root can be aborted.
  EXPECT_EQ(store->abort_pending_upload({"step-2/b.bin", "step-2/b.bin"}, soon()).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(store->abort_pending_upload({"x", "../x.tmp.h.1.0"}, soon()).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(store->get("step-2/b.bin", soon()).value(), "def");
}

}  // namespace
}  // namespace kiln::objstore
