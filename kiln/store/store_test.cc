// The Store contract, run against every implementation.
#include "kiln/store/store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "kiln/store/etcd/etcd_store.h"
#include "kiln/store/etcd/testing/etcd_server.h"
#include "kiln/store/file_store.h"
#include "kiln/store/internal/test_util.h"
#include "kiln/store/memory_store.h"
#include "kiln/store/prefix_store.h"
#include "kiln/store/tcp/client.h"
#include "kiln/store/tcp/server.h"

namespace kiln::store {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Each backend opens any number of clients onto one shared store.
struct MemoryBackend {
  std::shared_ptr<Store> store = std::make_shared<MemoryStore>();
  std::shared_ptr<Store> open() { return store; }
};

struct FileBackend {
  internal::TempDir dir;
  std::shared_ptr<Store> open() {
    auto s = FileStore::open(dir.path());
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return std::move(s).value();
  }
};

struct PrefixBackend {
  std::shared_ptr<Store> base = std::make_shared<MemoryStore>();
  std::shared_ptr<Store> open() { return std::make_shared<PrefixStore>("round7", base); }
};

struct TcpBackend {
  tcp::TcpStoreServer server;
  TcpBackend() {
    Status s = server.start("127.0.0.1", 0);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
  }
  std::shared_ptr<Store> open() {
    auto s =
        tcp::TcpStore::connect("127.0.0.1", server.port(),
                               {.connect_timeout = seconds(10), .default_timeout = seconds(30)});
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return std::move(s).value();
  }
};

// A real single-member etcd on loopback per test; the store keeps its keys
// under a prefix, as a job's would.
struct EtcdBackend {
  std::unique_ptr<etcd::testing::EtcdServer> server;
  std::string skip_reason;
  EtcdBackend() {
    if (!etcd::testing::EtcdServer::installed()) {
      skip_reason = etcd::testing::EtcdServer::kNotInstalled;
      return;
    }
    auto s = etcd::testing::EtcdServer::start();
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    if (s.is_ok()) server = std::move(s).value();
  }
  std::shared_ptr<Store> open() {
    if (server == nullptr) return nullptr;
    auto s = etcd::EtcdStore::open({.endpoints = {server->endpoint()},
                                    .prefix = "/kiln/test/",
                                    .default_timeout = seconds(30)});
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return std::move(s).value();
  }
};

template <typename Backend>
class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A backend that needs an outside program (etcd) says when it is absent.
    if constexpr (requires { backend_.skip_reason; }) {
      if (!backend_.skip_reason.empty()) GTEST_SKIP() << backend_.skip_reason;
    }
    store_ = backend_.open();
    ASSERT_NE(store_, nullptr);
  }
  Backend backend_;
  std::shared_ptr<Store> store_;
};

using Backends =
    ::testing::Types<MemoryBackend, FileBackend, PrefixBackend, TcpBackend, EtcdBackend>;
class BackendNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, MemoryBackend>) return "Memory";
    if (std::is_same_v<T, FileBackend>) return "File";
    if (std::is_same_v<T, PrefixBackend>) return "Prefix";
    if (std::is_same_v<T, EtcdBackend>) return "Etcd";
    return "Tcp";
  }
};
TYPED_TEST_SUITE(StoreTest, Backends, BackendNames);

TYPED_TEST(StoreTest, SetThenGetReturnsLatestValue) {
  Store& s = *this->store_;
  ASSERT_TRUE(s.set("k", "one").is_ok());
  ASSERT_TRUE(s.set("k", "two").is_ok());
  auto v = s.get("k", Deadline::after(seconds(5)));
  ASSERT_TRUE(v.is_ok()) << v.status().to_string();
  EXPECT_EQ(*v, "two");
}

TYPED_TEST(StoreTest, ValuesAreBytes) {
  Store& s = *this->store_;
  const std::string binary("a\0b\xff\n", 5);
  ASSERT_TRUE(s.set("bin", binary).is_ok());
  ASSERT_TRUE(s.set("empty", "").is_ok());
  ASSERT_TRUE(s.set("odd key/with spaces:%2F", "x").is_ok());
  EXPECT_EQ(*s.get("bin", Deadline::after(seconds(5))), binary);
  EXPECT_EQ(*s.get("empty", Deadline::after(seconds(5))), "");
  EXPECT_EQ(*s.get("odd key/with spaces:%2F", Deadline::after(seconds(5))), "x");
  EXPECT_FALSE(*s.check(std::vector<std::string>{"odd key/with spaces:/"}));
}

TYPED_TEST(StoreTest, GetOfPresentKeySucceedsWithExpiredDeadline) {
  Store& s = *this->store_;
  ASSERT_TRUE(s.set("k", "v").is_ok());
  auto v = s.get("k", Deadline::after_ms(0));
  ASSERT_TRUE(v.is_ok()) << v.status().to_string();
  EXPECT_EQ(*v, "v");
}

TYPED_TEST(StoreTest, GetBlocksUntilAnotherClientSets) {
  std::shared_ptr<Store> writer = this->backend_.open();
  Result<std::string> got = internal_error("not run");
  std::thread reader([&] { got = this->store_->get("late", Deadline::after(seconds(20))); });
  ASSERT_TRUE(writer->set("late", "here").is_ok());
  reader.join();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, "here");
}

TYPED_TEST(StoreTest, GetTimesOutNamingTheKey) {
  auto start = Clock::now();
  auto v = this->store_->get("rank/3", Deadline::after(milliseconds(150)));
  auto took = Clock::now() - start;
  ASSERT_FALSE(v.is_ok());
  EXPECT_EQ(v.status().code(), Code::kDeadlineExceeded) << v.status().to_string();
  EXPECT_NE(v.status().message().find("get"), std::string::npos) << v.status().message();
  EXPECT_NE(v.status().message().find("rank/3'"), std::string::npos) << v.status().message();
  EXPECT_GE(took, milliseconds(150));
  EXPECT_LT(took, seconds(5));
}

TYPED_TEST(StoreTest, AddStartsAtZeroAndStoresDecimal) {
  Store& s = *this->store_;
  EXPECT_EQ(*s.add("n", 5), 5);
  EXPECT_EQ(*s.add("n", -7), -2);
  EXPECT_EQ(*s.add("n", 0), -2);
  EXPECT_EQ(*s.get("n", Deadline::after(seconds(5))), "-2");
  ASSERT_TRUE(s.set("n", "40").is_ok());
  EXPECT_EQ(*s.add("n", 2), 42);
}

TYPED_TEST(StoreTest, AddToNonIntegerIsInvalidArgument) {
  Store& s = *this->store_;
  ASSERT_TRUE(s.set("word", "hello").is_ok());
  auto r = s.add("word", 1);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("word'"), std::string::npos) << r.status().message();
  EXPECT_EQ(*s.get("word", Deadline::after(seconds(5))), "hello");
  ASSERT_TRUE(s.set("big", std::to_string(INT64_MAX)).is_ok());
  EXPECT_EQ(s.add("big", 1).status().code(), Code::kInvalidArgument);
}

TYPED_TEST(StoreTest, CompareSetSwapsOnlyOnMatch) {
  Store& s = *this->store_;
  std::vector<std::string> key{"leader"};
  // A missing key equals "", and a mismatch leaves it missing.
  EXPECT_EQ(*s.compare_set("leader", "someone", "me"), "");
  EXPECT_FALSE(*s.check(key));
  EXPECT_EQ(*s.compare_set("leader", "", "rank0"), "rank0");
  EXPECT_EQ(*s.compare_set("leader", "", "rank1"), "rank0");
  EXPECT_EQ(*s.compare_set("leader", "rank0", "rank2"), "rank2");
  EXPECT_EQ(*s.get("leader", Deadline::after(seconds(5))), "rank2");
}

TYPED_TEST(StoreTest, WaitReturnsOnceEveryKeyExists) {
  std::shared_ptr<Store> writer = this->backend_.open();
  std::vector<std::string> keys{"a", "b", "c"};
  ASSERT_TRUE(writer->set("a", "1").is_ok());
  Status waited = internal_error("not run");
  std::thread t([&] { waited = this->store_->wait(keys, Deadline::after(seconds(20))); });
  ASSERT_TRUE(writer->set("b", "2").is_ok());
  ASSERT_TRUE(writer->add("c", 1).is_ok());
  t.join();
  EXPECT_TRUE(waited.is_ok()) << waited.to_string();
  EXPECT_TRUE(this->store_->wait(std::vector<std::string>{}, Deadline::after_ms(0)).is_ok());
}

TYPED_TEST(StoreTest, WaitTimesOutNamingOnlyTheMissingKeys) {
  Store& s = *this->store_;
  ASSERT_TRUE(s.set("present", "1").is_ok());
  Status st = s.wait(std::vector<std::string>{"present", "absent"}, Deadline::after_ms(150));
  ASSERT_EQ(st.code(), Code::kDeadlineExceeded) << st.to_string();
  auto missing_at = st.message().find("still missing");
  ASSERT_NE(missing_at, std::string::npos) << st.message();
  std::string missing = st.message().substr(missing_at);
  EXPECT_NE(missing.find("absent'"), std::string::npos) << st.message();
  EXPECT_EQ(missing.find("present"), std::string::npos) << st.message();
}

TYPED_TEST(StoreTest, EraseReportsWhetherTheKeyExisted) {
  Store& s = *this->store_;
  ASSERT_TRUE(s.set("k", "v").is_ok());
  EXPECT_TRUE(*s.erase("k"));
  EXPECT_FALSE(*s.erase("k"));
  EXPECT_FALSE(*s.check(std::vector<std::string>{"k"}));
  EXPECT_EQ(s.get("k", Deadline::after_ms(20)).status().code(), Code::kDeadlineExceeded);
}

TYPED_TEST(StoreTest, CheckIsTrueOnlyWhenEveryKeyExists) {
  Store& s = *this->store_;
  std::vector<std::string> both{"x", "y"};
  EXPECT_FALSE(*s.check(both));
  ASSERT_TRUE(s.set("x", "").is_ok());
  EXPECT_FALSE(*s.check(both));
  ASSERT_TRUE(s.set("y", "").is_ok());
  EXPECT_TRUE(*s.check(both));
  EXPECT_TRUE(*s.check(std::vector<std::string>{}));
}

TYPED_TEST(StoreTest, EmptyKeyIsInvalidArgument) {
  Store& s = *this->store_;
  std::vector<std::string> keys{"ok", ""};
  EXPECT_EQ(s.set("", "v").code(), Code::kInvalidArgument);
  EXPECT_EQ(s.get("", Deadline::after_ms(10)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(s.add("", 1).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(s.compare_set("", "", "x").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(s.wait(keys, Deadline::after_ms(10)).code(), Code::kInvalidArgument);
  EXPECT_EQ(s.erase("").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(s.check(keys).status().code(), Code::kInvalidArgument);
}

TYPED_TEST(StoreTest, ConcurrentAddsFromManyClientsAreExact) {
  constexpr int kThreads = 16;
  constexpr int kAddsEach = 50;
  std::vector<std::shared_ptr<Store>> clients;
  for (int i = 0; i < kThreads; ++i) clients.push_back(this->backend_.open());
  std::vector<std::vector<std::int64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int j = 0; j < kAddsEach; ++j) {
        auto v = clients[i]->add("counter", 1);
        if (v.is_ok()) seen[i].push_back(*v);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(*this->store_->add("counter", 0), kThreads * kAddsEach);
  // Every add saw a distinct running total: none was lost or doubled.
  std::vector<std::int64_t> all;
  for (auto& v : seen) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kThreads * kAddsEach));
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], static_cast<std::int64_t>(i + 1));
}

TYPED_TEST(StoreTest, DefaultTimeoutOverloadsUseIt) {
  Store& s = *this->store_;
  s.set_default_timeout(milliseconds(50));
  EXPECT_EQ(s.get("never").status().code(), Code::kDeadlineExceeded);
  EXPECT_EQ(s.wait(std::vector<std::string>{"never"}).code(), Code::kDeadlineExceeded);
}

}  // namespace
}  // namespace kiln::store
