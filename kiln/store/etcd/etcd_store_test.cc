// EtcdStore beyond the generic contract (kiln/store/store_test.cc runs that
// against a real etcd too): key layout under the prefix, etcd down and back,
// an unreachable endpoint, malformed gateway replies, and the codecs.
#include "kiln/store/etcd/etcd_store.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "kiln/base/socket.h"
#include "kiln/store/etcd/base64.h"
#include "kiln/store/etcd/json_codec.h"
#include "kiln/store/etcd/testing/etcd_server.h"

namespace kiln::store::etcd {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::EtcdServer;

std::unique_ptr<EtcdStore> open_store(const std::string& endpoint, std::string prefix,
                                      milliseconds timeout = seconds(30)) {
  auto s = EtcdStore::open(
      {.endpoints = {endpoint}, .prefix = std::move(prefix), .default_timeout = timeout});
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return s.is_ok() ? std::move(s).value() : nullptr;
}

class EtcdStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
    auto server = EtcdServer::start();
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    etcd_ = std::move(server).value();
    store_ = open_store(etcd_->endpoint(), "/kiln/job1/");
    ASSERT_NE(store_, nullptr);
  }
  std::unique_ptr<EtcdServer> etcd_;
  std::unique_ptr<EtcdStore> store_;
};

TEST_F(EtcdStoreTest, KeysLiveUnderThePrefix) {
  ASSERT_TRUE(store_->set("rank/0", "addr").is_ok());
  // The raw etcd key is the prefix followed by the store key.
  auto raw = store_->client()->call("kv/range", {{"key", base64_encode("/kiln/job1/rank/0")}},
                                    Deadline::after(seconds(5)), Retry::kAlways);
  ASSERT_TRUE(raw.is_ok()) << raw.status().to_string();
  auto kvs = parse_kvs(*raw, "test");
  ASSERT_TRUE(kvs.is_ok()) << kvs.status().to_string();
  ASSERT_EQ(kvs->size(), 1u);
  EXPECT_EQ(kvs->front().value, "addr");
  // Another job's store on the same etcd does not see it.
  auto other = open_store(etcd_->endpoint(), "/kiln/job2/");
  EXPECT_FALSE(*other->check(std::vector<std::string>{"rank/0"}));
  ASSERT_TRUE(other->set("rank/0", "elsewhere").is_ok());
  EXPECT_EQ(*store_->get("rank/0", Deadline::after(seconds(5))), "addr");
}

TEST_F(EtcdStoreTest, WaitNeedsEveryKeyPresentAtOnce) {
  ASSERT_TRUE(store_->set("a", "1").is_ok());
  auto writer = open_store(etcd_->endpoint(), "/kiln/job1/");
  std::vector<std::string> keys{"a", "b"};
  auto waited = std::async(std::launch::async,
                           [&] { return store_->wait(keys, Deadline::after(seconds(20))); });
  ASSERT_TRUE(*writer->erase("a"));
  ASSERT_TRUE(writer->set("b", "2").is_ok());
  // "a" went away before "b" came: the wait must go on.
  EXPECT_EQ(waited.wait_for(milliseconds(300)), std::future_status::timeout);
  ASSERT_TRUE(writer->set("a", "again").is_ok());
  Status s = waited.get();
  EXPECT_TRUE(s.is_ok()) << s.to_string();
}

TEST_F(EtcdStoreTest, AwaitChangeWakesOnAChangeUnderThePrefixOnly) {
  auto rev = store_->revision(Deadline::after(seconds(5)));
  ASSERT_TRUE(rev.is_ok()) << rev.status().to_string();
  // Nothing changed: it waits out its deadline.
  Status quiet = store_->await_change(*rev, Deadline::after(milliseconds(200)));
  EXPECT_EQ(quiet.code(), Code::kDeadlineExceeded) << quiet.to_string();
  // Another job's keys are not this store's changes.
  auto other = open_store(etcd_->endpoint(), "/kiln/job10/");
  ASSERT_TRUE(other->set("gen", "1").is_ok());
  quiet = store_->await_change(*rev, Deadline::after(milliseconds(200)));
  EXPECT_EQ(quiet.code(), Code::kDeadlineExceeded) << quiet.to_string();
  // A change made after the revision but before the wait began is not missed.
  ASSERT_TRUE(store_->set("gen", "1").is_ok());
  Status s = store_->await_change(*rev, Deadline::after(seconds(10)));
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  // A waiter blocks until someone else changes a key (here, erases one).
  auto now = store_->revision(Deadline::after(seconds(5)));
  ASSERT_TRUE(now.is_ok());
  auto waiter = std::async(
      std::launch::async, [&] { return store_->await_change(*now, Deadline::after(seconds(20))); });
  EXPECT_EQ(waiter.wait_for(milliseconds(200)), std::future_status::timeout);
  auto writer = open_store(etcd_->endpoint(), "/kiln/job1/");
  ASSERT_TRUE(*writer->erase("gen"));
  s = waiter.get();
  EXPECT_TRUE(s.is_ok()) << s.to_string();
}

TEST_F(EtcdStoreTest, AwaitChangeIsUnavailableWhenEtcdGoesAway) {
  auto rev = store_->revision(Deadline::after(seconds(5)));
  ASSERT_TRUE(rev.is_ok()) << rev.status().to_string();
  etcd_->crash();
  Status s = store_->await_change(*rev, Deadline::after(seconds(2)));
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.code(), Code::kDataLoss) << s.to_string();
  EXPECT_NE(s.to_string().find("await_change"), std::string::npos) << s.to_string();
}

TEST_F(EtcdStoreTest, CallsAreUnavailableWhileEtcdIsDownAndWorkAfterRestart) {
  ASSERT_TRUE(store_->set("k", "before").is_ok());
  etcd_->crash();
  store_->set_default_timeout(milliseconds(300));
  auto start = Clock::now();
  Status set = store_->set("k", "during");
  EXPECT_EQ(set.code(), Code::kUnavailable) << set.to_string();
  EXPECT_NE(set.message().find("store set 'k'"), std::string::npos) << set.message();
  EXPECT_NE(set.message().find(etcd_->endpoint()), std::string::npos) << set.message();
  EXPECT_EQ(store_->add("n", 1).status().code(), Code::kUnavailable);
  EXPECT_EQ(store_->compare_set("k", "before", "x").status().code(), Code::kUnavailable);
  EXPECT_EQ(store_->erase("k").status().code(), Code::kUnavailable);
  EXPECT_EQ(store_->check(std::vector<std::string>{"k"}).status().code(), Code::kUnavailable);
  auto got = store_->get("missing", Deadline::after(milliseconds(300)));
  EXPECT_EQ(got.status().code(), Code::kUnavailable) << got.status().to_string();
  EXPECT_NE(got.status().message().find("store get 'missing'"), std::string::npos)
      << got.status().message();
  EXPECT_LT(Clock::now() - start, seconds(5));

  ASSERT_TRUE(etcd_->restart().is_ok()) << etcd_->log_tail();
  store_->set_default_timeout(seconds(30));
  EXPECT_EQ(*store_->get("k", Deadline::after(seconds(5))), "before");
  EXPECT_TRUE(store_->set("k", "after").is_ok());
  EXPECT_EQ(*store_->add("n", 2), 2);
}

TEST_F(EtcdStoreTest, BlockingGetOutlivesAnEtcdRestart) {
  auto got = std::async(std::launch::async,
                        [&] { return store_->get("late", Deadline::after(seconds(20))); });
  ASSERT_TRUE(etcd_->restart().is_ok()) << etcd_->log_tail();
  ASSERT_TRUE(open_store(etcd_->endpoint(), "/kiln/job1/")->set("late", "here").is_ok());
  auto v = got.get();
  ASSERT_TRUE(v.is_ok()) << v.status().to_string();
  EXPECT_EQ(*v, "here");
}

TEST(EtcdStoreUnreachable, CallsFailBoundedNamingTheEndpoint) {
  std::uint16_t port = 0;
  {
    auto fd = net::listen_tcp("127.0.0.1", 0, 1, &port);  // closed again: nobody listens
    ASSERT_TRUE(fd.is_ok());
  }
  auto store = open_store(net::host_port("127.0.0.1", port), "", milliseconds(200));
  auto start = Clock::now();
  Status s = store->set("k", "v");
  auto took = Clock::now() - start;
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.to_string();
  EXPECT_NE(s.message().find(net::host_port("127.0.0.1", port)), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("kv/put"), std::string::npos) << s.message();
  EXPECT_GE(took, milliseconds(150));
  EXPECT_LT(took, seconds(2));
  auto got = store->get("k", Deadline::after(milliseconds(200)));
  EXPECT_EQ(got.status().code(), Code::kUnavailable) << got.status().to_string();
}

// A fake gateway: `reply` gives the HTTP status and body for each method
// ("kv/txn"); it counts the calls to each.
class FakeGateway {
 public:
  using Reply = std::function<std::pair<int, std::string>(const std::string& method)>;
  explicit FakeGateway(Reply reply) : reply_(std::move(reply)) {
    server_.Post(R"(/v3/(.*))", [this](const httplib::Request& req, httplib::Response& res) {
      std::string method = req.matches[1];
      {
        std::lock_guard lock(mu_);
        ++calls_[method];
      }
      auto [status, body] = reply_(method);
      res.status = status;
      res.set_content(body, "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // Requests made before listen() starts would wait in the backlog anyway;
    // this keeps a failed bind from hanging the test.
    Deadline ready = Deadline::after(seconds(5));
    while (!server_.is_running() && !ready.expired()) std::this_thread::sleep_for(milliseconds(1));
    EXPECT_TRUE(server_.is_running());
  }
  FakeGateway(int status, std::string body)
      : FakeGateway([=](const std::string&) { return std::make_pair(status, body); }) {}
  ~FakeGateway() {
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const {
    return net::host_port("127.0.0.1", static_cast<std::uint16_t>(port_));
  }
  int calls(const std::string& method) {
    std::lock_guard lock(mu_);
    return calls_[method];
  }

 private:
  Reply reply_;
  httplib::Server server_;
  int port_ = 0;
  std::mutex mu_;
  std::map<std::string, int> calls_;  // guarded by mu_
  std::thread thread_;
};

TEST(EtcdStoreMalformed, RepliesThatAreNotTheGatewaysAreDataLoss) {
  FakeGateway junk(200, "<html>not json</html>");
  auto store = open_store(junk.endpoint(), "", seconds(5));
  EXPECT_EQ(store->set("k", "v").code(), Code::kDataLoss);
  EXPECT_EQ(store->erase("k").status().code(), Code::kDataLoss);

  FakeGateway wrong(200, R"({"header":{"revision":"7"},"kvs":[{"key":"!!!","mod_revision":"3"}]})");
  auto store2 = open_store(wrong.endpoint(), "", seconds(5));
  auto v = store2->add("k", 1);
  EXPECT_EQ(v.status().code(), Code::kDataLoss) << v.status().to_string();
  EXPECT_NE(v.status().message().find("store add 'k'"), std::string::npos) << v.status().message();
  auto g = store2->get("k", Deadline::after(seconds(5)));
  EXPECT_EQ(g.status().code(), Code::kDataLoss) << g.status().to_string();
}

TEST(EtcdStoreMalformed, ServerErrorsAreRetriedThenUnavailable) {
  const std::string no_leader =
      R"({"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14})";
  FakeGateway busy([&](const std::string& method) {
    if (method == "kv/range")
      return std::make_pair(200, std::string(R"({"header":{"revision":"3"}})"));
    return std::make_pair(503, no_leader);
  });
  auto store = open_store(busy.endpoint(), "", milliseconds(300));
  Status s = store->set("k", "v");
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.to_string();
  EXPECT_NE(s.message().find("no leader"), std::string::npos) << s.message();
  EXPECT_GT(busy.calls("kv/put"), 1);
  // add's swap may have been applied when etcd answers 5xx: never repeated.
  auto added = store->add("n", 1);
  EXPECT_EQ(added.status().code(), Code::kUnavailable) << added.status().to_string();
  EXPECT_NE(added.status().message().find("not retried"), std::string::npos)
      << added.status().message();
  EXPECT_EQ(busy.calls("kv/txn"), 1);
}

TEST(EtcdStoreMalformed, ClientErrorsKeepTheirGrpcCode) {
  FakeGateway missing(
      404, R"({"error":"x","message":"etcdserver: requested lease not found","code":5})");
  auto store = open_store(missing.endpoint(), "", seconds(5));
  Status s = store->set("k", "v");
  EXPECT_EQ(s.code(), Code::kNotFound) << s.to_string();
  EXPECT_NE(s.message().find("requested lease not found"), std::string::npos) << s.message();
  EXPECT_EQ(missing.calls("kv/put"), 1);
}

TEST(EtcdCodec, Base64RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  for (std::size_t n = 0; n <= all.size(); n += (n < 8 ? 1 : 37)) {
    std::string bytes = all.substr(0, n);
    auto back = base64_decode(base64_encode(bytes), "test");
    ASSERT_TRUE(back.is_ok()) << back.status().to_string();
    EXPECT_EQ(*back, bytes);
  }
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(*base64_decode("Zg==", "t"), "f");
  EXPECT_EQ(*base64_decode("", "t"), "");
}

TEST(EtcdCodec, Base64RejectsWhatIsNotBase64) {
  for (std::string bad : {"Zm9", "Zm9v ", " Zm9v", "Zm=v", "Z===", "Zm9v\n", "Zm-_"}) {
    auto r = base64_decode(bad, "field 'value'");
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << "'" << bad << "'";
    EXPECT_NE(r.status().message().find("field 'value'"), std::string::npos);
  }
}

TEST(EtcdCodec, Int64FieldsAreDecimalStringsOrAbsent) {
  Json j = {{"a", "42"}, {"b", 7}, {"c", "4x"}, {"d", true}};
  EXPECT_EQ(*json_int64(j, "a", "t"), 42);
  EXPECT_EQ(*json_int64(j, "b", "t"), 7);
  EXPECT_EQ(*json_int64(j, "absent", "t"), 0);
  EXPECT_EQ(json_int64(j, "c", "t").status().code(), Code::kDataLoss);
  EXPECT_EQ(json_int64(j, "d", "t").status().code(), Code::kDataLoss);
}

TEST(EtcdStoreTls, AnUnreadableTlsFileIsNamedAtOpen) {
  EtcdStoreOptions o;
  o.endpoints = {"https://127.0.0.1:1"};
  o.tls.ca_file = "/nonexistent/kiln-etcd-ca.pem";
  auto store = EtcdStore::open(o);
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), Code::kNotFound) << store.status().to_string();
  EXPECT_NE(store.status().message().find("kiln-etcd-ca.pem"), std::string::npos);
}

}  // namespace
}  // namespace kiln::store::etcd
