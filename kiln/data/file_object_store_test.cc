// file:// store: the calls the S3 tier added (ranges, head, list, remove)
// behave as on S3.
#include <gtest/gtest.h>

#include <fstream>

#include "kiln/data/object_store.h"
#include "kiln/data/testing/test_dataset.h"

namespace kiln::data {
namespace {

Deadline soon() { return Deadline::after_seconds(10); }

TEST(FileObjectStore, RangeHeadListRemove) {
  testing::ScratchDir dir;
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

}  // namespace
}  // namespace kiln::data
