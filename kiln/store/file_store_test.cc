#include "kiln/store/file_store.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "kiln/store/internal/test_util.h"

namespace kiln::store {
namespace {

using internal::TempDir;

std::unique_ptr<FileStore> open_store(const std::string& dir) {
  auto s = FileStore::open(dir);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return s.is_ok() ? std::move(s).value() : nullptr;
}

// Each child process opens its own FileStore and adds to one counter; only
// the flock on the lock file keeps the read-modify-write atomic.
TEST(FileStore, ProcessesIncrementOneCounterExactly) {
  TempDir dir;
  constexpr int kProcesses = 3;
  constexpr int kAddsEach = 100;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto store = FileStore::open(dir.path());
      if (!store.is_ok()) ::_exit(2);
      for (int i = 0; i < kAddsEach; ++i) {
        if (!(*store)->add("counter", 1).is_ok()) ::_exit(3);
      }
      ::_exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  auto store = open_store(dir.path());
  EXPECT_EQ(*store->add("counter", 0), kProcesses * kAddsEach);
}

TEST(FileStore, ReadersNeverSeeATornValue) {
  TempDir dir;
  auto writer = open_store(dir.path());
  auto reader = open_store(dir.path());
  const std::string a(256 * 1024, 'a');
  const std::string b(256 * 1024, 'b');
  ASSERT_TRUE(writer->set("blob", a).is_ok());
  std::atomic<bool> done{false};
  std::thread t([&] {
    for (int i = 0; i < 50; ++i) EXPECT_TRUE(writer->set("blob", i % 2 ? a : b).is_ok());
    done = true;
  });
  int reads = 0;
  while (!done || reads == 0) {
    auto v = reader->get("blob", Deadline::after_seconds(5));
    ++reads;
    EXPECT_TRUE(v.is_ok()) << v.status().to_string();
    if (!v.is_ok()) break;
    EXPECT_TRUE(*v == a || *v == b) << "torn value of " << v->size() << " bytes";
  }
  t.join();
  // Only the lock file and key files remain: no temp file leaked.
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    std::string name = entry.path().filename().string();
    EXPECT_TRUE(name == ".lock" || name.starts_with("k-")) << name;
  }
}

TEST(FileStore, FileNamesAreSafeDistinctAndBounded) {
  std::set<std::string> names;
  std::vector<std::string> keys{"a/b",
                                "a%2Fb",
                                "..",
                                "rank 3",
                                std::string(1000, 'x'),
                                std::string(1000, 'x') + "y",
                                std::string("\0", 1)};
  for (const auto& k : keys) {
    std::string name = FileStore::file_name(k);
    EXPECT_EQ(name.find('/'), std::string::npos) << name;
    EXPECT_LE(name.size(), 255u) << name;
    EXPECT_TRUE(names.insert(name).second) << "collision on " << name;
  }
  TempDir dir;
  auto store = open_store(dir.path());
  for (const auto& k : keys) ASSERT_TRUE(store->set(k, k).is_ok()) << k.size();
  for (const auto& k : keys) EXPECT_EQ(*store->get(k, Deadline::after_ms(100)), k);
}

TEST(FileStore, OpenCreatesTheDirectoryAndReportsBadPaths) {
  TempDir dir;
  std::string nested = dir.path() + "/a/b/c";
  ASSERT_NE(open_store(nested), nullptr);
  EXPECT_TRUE(std::filesystem::is_directory(nested));
  std::string file = dir.path() + "/plain";
  ASSERT_TRUE(FileStore::open(dir.path()).is_ok());
  {
    auto f = std::fopen(file.c_str(), "w");
    std::fclose(f);
  }
  auto bad = FileStore::open(file + "/sub");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find(file), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace kiln::store
