// S3ObjectStore against a scripted S3 endpoint (cpp-httplib): replies s3rver
// cannot be made to send. 5xx and 429 are retried and then succeed or fail
// naming the object and the attempts; 4xx fail at once naming the S3 error
// code; a server that stops answering mid-request is a timeout, retried.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "kiln/objstore/s3/s3_delete.h"
#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::objstore::s3 {
namespace {

using std::chrono::milliseconds;

// Options for a local test endpoint on `port`: test credentials and quick
// retries (`max_attempts`, 5-20 ms backoff).
S3Options local_options(int port, int max_attempts) {
  S3Options o;
  o.endpoint = "http://127.0.0.1:" + std::to_string(port);
  o.access_key_id = o.secret_access_key = "test";
  o.max_attempts = max_attempts;
  o.backoff_base_ms = 5;
  o.backoff_cap_ms = 20;
  return o;
}

// Serves GET /bucket/<key> with `reply(attempt)` (attempt counts from 1).
class ScriptedS3 {
 public:
  using Reply = std::function<void(int attempt, httplib::Response&)>;
  explicit ScriptedS3(Reply reply) : reply_(std::move(reply)) {
    server_.Get(R"(/bucket/(.*))",
                [this](const httplib::Request&, httplib::Response& res) { reply_(++calls_, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    Deadline ready = Deadline::after_seconds(5);
    while (!server_.is_running() && !ready.expired()) std::this_thread::sleep_for(milliseconds(1));
    EXPECT_TRUE(server_.is_running());
  }
  ~ScriptedS3() {
    server_.stop();
    thread_.join();
  }
  std::unique_ptr<S3ObjectStore> store(int max_attempts, std::int64_t request_timeout_ms = 5000) {
    S3Options o = local_options(port_, max_attempts);
    o.request_timeout_ms = request_timeout_ms;
    return S3ObjectStore::open("s3://bucket/ds", o).value();
  }
  int calls() const { return calls_.load(); }

 private:
  Reply reply_;
  httplib::Server server_;
  int port_ = 0;
  std::atomic<int> calls_{0};
  std::thread thread_;
};

void s3_error(httplib::Response& res, int status, const std::string& code) {
  res.status = status;
  res.set_content("<?xml version=\"1.0\"?><Error><Code>" + code + "</Code><Message>scripted " +
                      code + "</Message></Error>",
                  "application/xml");
}

Deadline soon() { return Deadline::after_seconds(20); }

TEST(S3Faults, ServerErrorsAreRetriedThenSucceed) {
  ScriptedS3 s3([](int attempt, httplib::Response& res) {
    if (attempt == 1) return s3_error(res, 503, "SlowDown");
    if (attempt == 2) return s3_error(res, 500, "InternalError");
    res.set_content("payload", "application/octet-stream");
  });
  auto store = s3.store(4);
  auto got = store->get("obj", soon());
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, "payload");
  EXPECT_EQ(s3.calls(), 3);
  EXPECT_EQ(store->stats().retries.load(), 2u);
}

TEST(S3Faults, PersistentServerErrorFailsNamingObjectAttemptsAndCode) {
  ScriptedS3 s3([](int, httplib::Response& res) { s3_error(res, 503, "SlowDown"); });
  auto got = s3.store(3)->get("shard-00002.kds", soon());
  ASSERT_EQ(got.status().code(), Code::kUnavailable) << got.status().to_string();
  const std::string& m = got.status().message();
  EXPECT_NE(m.find("s3://bucket/ds/shard-00002.kds"), std::string::npos) << m;
  EXPECT_NE(m.find("3 attempts"), std::string::npos) << m;
  EXPECT_NE(m.find("SlowDown"), std::string::npos) << m;
  EXPECT_EQ(s3.calls(), 3);
}

TEST(S3Faults, ClientErrorsAreNotRetriedAndNameTheS3Code) {
  ScriptedS3 s3([](int, httplib::Response& res) { s3_error(res, 403, "AccessDenied"); });
  auto got = s3.store(5)->get("obj", soon());
  ASSERT_EQ(got.status().code(), Code::kFailedPrecondition) << got.status().to_string();
  EXPECT_NE(got.status().message().find("AccessDenied"), std::string::npos)
      << got.status().to_string();
  EXPECT_EQ(s3.calls(), 1);
}

TEST(S3Faults, HungRequestTimesOutAndIsRetried) {
  // The first reply comes only after the client's 300 ms request timeout.
  ScriptedS3 s3([](int attempt, httplib::Response& res) {
    if (attempt == 1) std::this_thread::sleep_for(milliseconds(1500));
    res.set_content("late but fine", "application/octet-stream");
  });
  auto store = s3.store(3, /*request_timeout_ms=*/300);
  auto got = store->get("obj", soon());
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, "late but fine");
  EXPECT_EQ(store->stats().retries.load(), 1u);
}

// A multipart endpoint whose part 2 is refused: the streaming writer must
// fail naming the part, upload no part after the failure is known, and
// abort the upload (DELETE ?uploadId) so no parts are left to bill.
TEST(S3Faults, AFailedPartAbortsTheStreamingUpload) {
  httplib::Server server;
  std::atomic<int> parts{0}, aborts{0}, completes{0};
  server.Post(R"(/bucket/(.*))", [&](const httplib::Request& req, httplib::Response& res) {
    if (req.has_param("uploads")) {
      res.set_content(
          "<InitiateMultipartUploadResult><UploadId>u-1</UploadId>"
          "</InitiateMultipartUploadResult>",
          "application/xml");
    } else {
      ++completes;
      res.set_content("<CompleteMultipartUploadResult/>", "application/xml");
    }
  });
  server.Put(R"(/bucket/(.*))", [&](const httplib::Request& req, httplib::Response& res) {
    ++parts;
    if (req.get_param_value("partNumber") == "2") return s3_error(res, 403, "AccessDenied");
    res.set_header("ETag", "\"e" + req.get_param_value("partNumber") + "\"");
  });
  server.Delete(R"(/bucket/(.*))", [&](const httplib::Request& req, httplib::Response& res) {
    if (req.get_param_value("uploadId") == "u-1") ++aborts;
    res.status = 204;
  });
  int port = server.bind_to_any_port("127.0.0.1");
  std::thread t([&] { server.listen_after_bind(); });
  Deadline ready = Deadline::after_seconds(5);
  while (!server.is_running() && !ready.expired()) std::this_thread::sleep_for(milliseconds(1));

  S3Options o = local_options(port, 2);
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 1;  // parts in order, so part 2 fails before 4 could start
  auto store = S3ObjectStore::open("s3://bucket/ckpt", o).value();
  auto w = store->open_writer("step-1/shard-00000.bin", soon());
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string chunk(1 << 20, 'x');
  Status s;
  for (int i = 0; i < 30 && s.is_ok(); ++i) s = (*w)->append(chunk.data(), chunk.size());
  if (s.is_ok()) s = (*w)->commit();
  EXPECT_EQ(s.code(), Code::kFailedPrecondition) << s.to_string();
  EXPECT_NE(s.message().find("upload part 2 of s3://bucket/ckpt/step-1/shard-00000.bin"),
            std::string::npos)
      << s.to_string();
  (*w)->abort();
  EXPECT_EQ(aborts.load(), 1);
  EXPECT_EQ(completes.load(), 0);
  EXPECT_LE(parts.load(), 3) << "parts kept going up after one was refused";
  server.stop();
  t.join();
}

// An endpoint that honours If-None-Match: * on PUT (Note [Conditional
// writes]): 412 PreconditionFailed where the key holds an object; the first
// `conflicts` conditional PUTs get 409 ConditionalRequestConflict.
struct ConditionalEndpoint {
  explicit ConditionalEndpoint(int conflicts) : conflicts_left(conflicts) {
    server.Put(R"(/bucket/(.*))", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> l(mu);
      const std::string key = req.matches[1];
      if_none_match.push_back(req.get_header_value("If-None-Match"));
      if (req.get_header_value("If-None-Match") == "*") {
        if (conflicts_left > 0) {
          --conflicts_left;
          return s3_error(res, 409, "ConditionalRequestConflict");
        }
        if (objects.contains(key)) return s3_error(res, 412, "PreconditionFailed");
      }
      objects[key] = req.body;
      res.set_header("ETag", "\"e\"");
    });
    port = server.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { server.listen_after_bind(); });
    Deadline ready = Deadline::after_seconds(5);
    while (!server.is_running() && !ready.expired()) std::this_thread::sleep_for(milliseconds(1));
  }
  ~ConditionalEndpoint() {
    server.stop();
    thread.join();
  }
  httplib::Server server;
  int port = 0;
  std::thread thread;
  std::mutex mu;
  int conflicts_left;                          // guarded by mu
  std::map<std::string, std::string> objects;  // guarded by mu
  std::vector<std::string> if_none_match;      // guarded by mu: each PUT's header
};

// The second put_if_absent of a key is refused (AlreadyExists) and leaves
// the first object; a plain put still replaces it.
TEST(S3Faults, APutIfAbsentOfAKeyThatHoldsAnObjectIsAlreadyExists) {
  ConditionalEndpoint s3(/*conflicts=*/0);
  auto store = S3ObjectStore::open("s3://bucket/ckpt", local_options(s3.port, 2)).value();
  ASSERT_TRUE(store->put_if_absent("step-4/manifest.json", "first", soon()).is_ok());
  Status again = store->put_if_absent("step-4/manifest.json", "second", soon());
  EXPECT_EQ(again.code(), Code::kAlreadyExists) << again.to_string();
  EXPECT_NE(again.message().find("s3://bucket/ckpt/step-4/manifest.json"), std::string::npos)
      << again.to_string();
  std::lock_guard<std::mutex> l(s3.mu);
  EXPECT_EQ(s3.objects["ckpt/step-4/manifest.json"], "first");
  EXPECT_EQ(s3.if_none_match, (std::vector<std::string>{"*", "*"}));
}

// 409 ConditionalRequestConflict (a write of the key raced this one) is
// retried, as S3 asks; the retry stores the object.
TEST(S3Faults, AConditionalPutThatRacedAnotherWriteIsRetried) {
  ConditionalEndpoint s3(/*conflicts=*/1);
  auto store = S3ObjectStore::open("s3://bucket/ckpt", local_options(s3.port, 3)).value();
  Status s = store->put_if_absent("step-4/manifest.json", "m", soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(store->stats().retries.load(), 1u);
  std::lock_guard<std::mutex> l(s3.mu);
  EXPECT_EQ(s3.objects["ckpt/step-4/manifest.json"], "m");
}

// A scripted endpoint for remove_many: POST /bucket?delete answers with
// `batch` (given the request); DELETE /bucket/<key> with `single`.
struct DeleteEndpoint {
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  DeleteEndpoint(Handler batch, Handler single) {
    server.Post("/bucket", [this, batch](const httplib::Request& req, httplib::Response& res) {
      ++posts;
      bodies.push_back(req.body);
      md5_headers.push_back(req.get_header_value("Content-MD5"));
      batch(req, res);
    });
    server.Delete(R"(/bucket/(.*))",
                  [this, single](const httplib::Request& req, httplib::Response& res) {
                    deleted.push_back(req.matches[1]);
                    single(req, res);
                  });
    port = server.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { server.listen_after_bind(); });
    Deadline ready = Deadline::after_seconds(5);
    while (!server.is_running() && !ready.expired()) std::this_thread::sleep_for(milliseconds(1));
  }
  ~DeleteEndpoint() {
    server.stop();
    thread.join();
  }
  std::unique_ptr<S3ObjectStore> store() {
    S3Options o = local_options(port, 2);
    o.upload_parallelism = 1;  // single DELETEs in order
    return S3ObjectStore::open("s3://bucket/ckpt", o).value();
  }
  httplib::Server server;
  int port = 0;
  std::thread thread;
  // Written by the server's threads, read after the client's calls returned.
  std::atomic<int> posts{0};
  std::vector<std::string> bodies, md5_headers, deleted;
};

// Note [Batch deletes]: one DeleteObjects request names every key (with
// the store's prefix, and the Content-MD5 S3 requires); the one key the
// reply says was not deleted is retried alone, and fails naming it.
TEST(S3Faults, DeleteObjectsRetriesTheKeysItCouldNotDeleteAlone) {
  DeleteEndpoint s3(
      [](const httplib::Request&, httplib::Response& res) {
        res.set_content(
            "<DeleteResult><Deleted><Key>ckpt/a</Key></Deleted><Error><Key>ckpt/b</Key>"
            "<Code>InternalError</Code><Message>scripted</Message></Error></DeleteResult>",
            "application/xml");
      },
      [](const httplib::Request&, httplib::Response& res) { s3_error(res, 403, "AccessDenied"); });
  Status s = s3.store()->remove_many({"a", "b", "c"}, soon());
  EXPECT_EQ(s.code(), Code::kFailedPrecondition) << s.to_string();
  EXPECT_NE(s.message().find("s3://bucket/ckpt/b"), std::string::npos) << s.to_string();
  EXPECT_NE(s.message().find("AccessDenied"), std::string::npos) << s.to_string();
  ASSERT_EQ(s3.posts.load(), 1);
  for (const char* key : {"<Key>ckpt/a</Key>", "<Key>ckpt/b</Key>", "<Key>ckpt/c</Key>"}) {
    EXPECT_NE(s3.bodies[0].find(key), std::string::npos) << s3.bodies[0];
  }
  EXPECT_EQ(s3.md5_headers[0], content_md5(s3.bodies[0]));
  EXPECT_EQ(s3.deleted, (std::vector<std::string>{"ckpt/b"}));
}

// Note [Keys in XML]: a key with a control character XML cannot carry is
// deleted alone, by a DELETE of its percent-encoded name; the rest go in the
// one DeleteObjects request, a carriage return as its entity code.
TEST(S3Faults, AKeyNoXmlCanCarryIsDeletedAlone) {
  DeleteEndpoint s3(
      [](const httplib::Request&, httplib::Response& res) {
        res.set_content("<DeleteResult/>", "application/xml");
      },
      [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  Status s = s3.store()->remove_many({"a", "b\x01c", "d\re"}, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  ASSERT_EQ(s3.posts.load(), 1);
  EXPECT_NE(s3.bodies[0].find("<Key>ckpt/a</Key>"), std::string::npos) << s3.bodies[0];
  EXPECT_NE(s3.bodies[0].find("<Key>ckpt/d&#13;e</Key>"), std::string::npos) << s3.bodies[0];
  EXPECT_EQ(s3.bodies[0].find('\x01'), std::string::npos) << "a control character in the XML";
  EXPECT_EQ(s3.deleted, (std::vector<std::string>{"ckpt/b\x01c"}));
}

// An endpoint without DeleteObjects (501 NotImplemented, not retried) gets
// one DELETE per key, and is not asked again.
TEST(S3Faults, AnEndpointWithoutDeleteObjectsGetsOneDeletePerKey) {
  DeleteEndpoint s3(
      [](const httplib::Request&, httplib::Response& res) { s3_error(res, 501, "NotImplemented"); },
      [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  auto store = s3.store();
  Status s = store->remove_many({"a", "b", "c"}, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  s = store->remove_many({"d"}, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(s3.posts.load(), 1);
  EXPECT_EQ(s3.deleted, (std::vector<std::string>{"ckpt/a", "ckpt/b", "ckpt/c", "ckpt/d"}));
}

// A 200 reply to DeleteObjects that is no DeleteResult (a proxy's page)
// tells nothing of which keys went: each is deleted alone, and the batch
// call stays in use for the next keys.
TEST(S3Faults, ADeleteObjectsReplyThatIsNoDeleteResultDeletesEachKeyAlone) {
  DeleteEndpoint s3(
      [](const httplib::Request&, httplib::Response& res) {
        res.status = 200;
        res.set_content("<html>gateway</html>", "text/html");
      },
      [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  auto store = s3.store();
  Status s = store->remove_many({"a", "b"}, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  s = store->remove_many({"c"}, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(s3.posts.load(), 2);
  EXPECT_EQ(s3.deleted, (std::vector<std::string>{"ckpt/a", "ckpt/b", "ckpt/c"}));
}

}  // namespace
}  // namespace kiln::objstore::s3
