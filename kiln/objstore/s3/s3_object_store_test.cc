// S3ObjectStore against a real s3rver on loopback: round trips (single and
// multipart PUT), ranges, HEAD, paginated listing, DELETE, the error codes
// 4xx replies map to, and bounded retries when the server is gone.
#include "kiln/objstore/s3/s3_object_store.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "kiln/base/file.h"
#include "kiln/base/testing/temp_dir.h"
#include "kiln/objstore/s3/s3_delete.h"
#include "kiln/objstore/s3/s3_xml.h"
#include "kiln/objstore/s3/testing/s3rver_test.h"

namespace kiln::objstore::s3 {
namespace {

using kiln::testing::TempDir;

Deadline soon() { return Deadline::after_seconds(20); }

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

class S3Store : public testing::S3rverTest {
 protected:
  std::unique_ptr<S3ObjectStore> open(const std::string& prefix, S3Options o) {
    return open_store(prefix, o);
  }
  std::unique_ptr<S3ObjectStore> open(const std::string& prefix) { return open_store(prefix); }

  TempDir tmp_;
};

TEST_F(S3Store, PutGetRangeHeadRemove) {
  auto store = open("ds");
  ASSERT_NE(store, nullptr);
  const std::string bytes = pattern(100000, 1);
  write(tmp_.path() + "/src", bytes);
  ASSERT_TRUE(store->put_file("dir/obj.bin", tmp_.path() + "/src", soon()).is_ok());

  ASSERT_TRUE(store->get_to_file("dir/obj.bin", tmp_.path() + "/dst", soon()).is_ok());
  EXPECT_EQ(read_file(tmp_.path() + "/dst").value(), bytes);
  EXPECT_EQ(store->get("dir/obj.bin", soon()).value(), bytes);
  EXPECT_EQ(store->get_range("dir/obj.bin", 99990, 5, soon()).value(), bytes.substr(99990, 5));
  // A range running past the end is cut at the end.
  EXPECT_EQ(store->get_range("dir/obj.bin", 99990, 100, soon()).value(), bytes.substr(99990));
  auto info = store->head("dir/obj.bin", soon());
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->bytes, bytes.size());

  ASSERT_TRUE(store->remove("dir/obj.bin", soon()).is_ok());
  EXPECT_EQ(store->head("dir/obj.bin", soon()).status().code(), Code::kNotFound);
  EXPECT_TRUE(store->remove("dir/obj.bin", soon()).is_ok()) << "removing twice is fine";
}

TEST_F(S3Store, MissingObjectIsNotFoundNamingKeyAndS3Code) {
  auto store = open("ds");
  ASSERT_NE(store, nullptr);
  auto got = store->get("nope.bin", soon());
  ASSERT_EQ(got.status().code(), Code::kNotFound) << got.status().to_string();
  EXPECT_NE(got.status().message().find("s3://kiln-test/ds/nope.bin"), std::string::npos)
      << got.status().to_string();
  EXPECT_NE(got.status().message().find("NoSuchKey"), std::string::npos)
      << got.status().to_string();

  auto other = S3ObjectStore::open("s3://no-such-bucket/x", s3_->options()).value();
  auto listed = other->list("", soon());
  EXPECT_EQ(listed.status().code(), Code::kNotFound);
  EXPECT_NE(listed.status().message().find("NoSuchBucket"), std::string::npos)
      << listed.status().to_string();
}

TEST_F(S3Store, MultipartUploadRoundTrip) {
  S3Options o = s3_->options();
  o.part_bytes = 5ull << 20;
  o.multipart_threshold_bytes = 5ull << 20;
  auto store = open("mp", o);
  ASSERT_NE(store, nullptr);
  // Two full parts and a short last one.
  const std::string bytes = pattern((10ull << 20) + 12345, 2);
  write(tmp_.path() + "/big", bytes);
  const auto requests_before = store->stats().requests.load();
  Status put = store->put_file("big.bin", tmp_.path() + "/big", soon());
  ASSERT_TRUE(put.is_ok()) << put.to_string();
  // initiate + 3 parts + complete.
  EXPECT_EQ(store->stats().requests.load() - requests_before, 5u);
  ASSERT_TRUE(store->get_to_file("big.bin", tmp_.path() + "/back", soon()).is_ok());
  EXPECT_TRUE(read_file(tmp_.path() + "/back").value() == bytes);
}

// Note [S3 streaming upload]: objects of every size class come back
// byte-exact, appended in odd-sized pieces, whatever the parallelism.
TEST_F(S3Store, StreamingWriterRoundTrips) {
  S3Options o = s3_->options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 3;
  auto store = open("w", o);
  ASSERT_NE(store, nullptr);
  const std::size_t part = o.part_bytes;
  for (std::size_t size : {std::size_t{0}, std::size_t{1000}, part, part + 1, 4 * part + 777}) {
    SCOPED_TRACE(fmt::format("{} bytes", size));
    const std::string bytes = pattern(size, static_cast<unsigned>(size % 1000 + 3));
    const std::string key = fmt::format("obj-{}", size);
    auto w = store->open_writer(key, soon());
    ASSERT_TRUE(w.is_ok()) << w.status().to_string();
    for (std::size_t off = 0; off < size;) {
      std::size_t n = std::min<std::size_t>(size - off, 777777);
      ASSERT_TRUE((*w)->append(bytes.data() + off, n).is_ok());
      off += n;
    }
    EXPECT_EQ(store->head(key, soon()).status().code(), Code::kNotFound)
        << "nothing is visible before commit";
    const auto requests_before = store->stats().requests.load();
    Status c = (*w)->commit();
    ASSERT_TRUE(c.is_ok()) << c.to_string();
    if (size <= part) {  // Note [One part is one PUT]
      EXPECT_EQ(store->stats().requests.load() - requests_before, 1u) << "one PUT";
    }
    EXPECT_EQ((*w)->bytes(), size);
    EXPECT_TRUE(store->get(key, soon()).value() == bytes);
  }
}

// The request log (S3RequestLog) names each request's kind, its body bytes
// and when it ran: a streaming upload is initiate, then its parts, then the
// completion after the last part; nothing is logged while it is off.
TEST_F(S3Store, TheRequestLogRecordsEachRequestsKindBytesAndTimes) {
  S3Options o = s3_->options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 2;
  auto store = open("log", o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->put("off", "not logged", soon()).is_ok());
  EXPECT_TRUE(store->request_log().take().empty());

  store->request_log().enable(true);
  const std::string bytes = pattern(2 * o.part_bytes + 10, 7);
  auto w = store->open_writer("big", soon());
  ASSERT_TRUE(w.is_ok());
  ASSERT_TRUE((*w)->append(bytes.data(), bytes.size()).is_ok());
  ASSERT_TRUE((*w)->commit().is_ok());
  ASSERT_TRUE(store->put("small", "tiny", soon()).is_ok());
  ASSERT_TRUE(store->head("small", soon()).is_ok());
  ASSERT_TRUE(store->list("", soon()).is_ok());
  ASSERT_TRUE(store->list_pending_uploads("", soon()).is_ok());
  ASSERT_TRUE(store->remove("small", soon()).is_ok());
  EXPECT_EQ(store->get("small", soon()).status().code(), Code::kNotFound);
  auto log = store->request_log().take();

  std::vector<std::string> kinds;
  for (const auto& r : log) kinds.emplace_back(request_kind_name(r.kind));
  ASSERT_EQ(kinds, (std::vector<std::string>{"initiate", "part", "part", "part", "complete", "put",
                                             "head", "list", "list_uploads", "delete", "get"}));
  std::uint64_t part_bytes = 0;
  for (std::size_t i = 1; i <= 3; ++i) {
    part_bytes += log[i].body_bytes;
    EXPECT_GE(log[i].start, log[0].end) << "parts after the initiation";
    EXPECT_LE(log[i].end, log[4].start) << "the completion after every part";
  }
  EXPECT_EQ(part_bytes, bytes.size());
  EXPECT_EQ(log[5].body_bytes, 4u);
  for (const auto& r : log) {
    EXPECT_LE(r.start, r.end);
    EXPECT_EQ(r.attempts, 1);
  }
  EXPECT_FALSE(log.back().ok) << "the GET of a removed object failed";
  EXPECT_TRUE(store->request_log().take().empty()) << "take() empties the log";
}

// Note [Batch deletes]: s3rver offers DeleteObjects, so a step's objects go
// in one request (keys absent already are no error), and only them.
TEST_F(S3Store, RemoveManyIsOneDeleteObjectsRequest) {
  auto store = open("many");
  ASSERT_NE(store, nullptr);
  std::vector<std::string> keys;
  for (int i = 0; i < 5; ++i) {
    keys.push_back("step-1/shard-00000.chunk-0000" + std::to_string(i));
    ASSERT_TRUE(store->put(keys.back(), "chunk", soon()).is_ok());
  }
  ASSERT_TRUE(store->put("step-2/manifest.json", "{}", soon()).is_ok());
  keys.push_back("step-1/never-stored");
  store->request_log().enable(true);
  Status s = store->remove_many(keys, soon());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  auto log = store->request_log().take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(request_kind_name(log[0].kind), "delete_many");
  auto left = store->list("", soon()).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].key, "step-2/manifest.json");
  EXPECT_TRUE(store->remove_many({}, soon()).is_ok());
}

TEST_F(S3Store, AnAbortedStreamPublishesNothing) {
  S3Options o = s3_->options();
  o.part_bytes = 5ull << 20;
  auto store = open("w", o);
  ASSERT_NE(store, nullptr);
  const std::string bytes = pattern(12ull << 20, 9);
  {
    auto w = store->open_writer("gone", soon()).value();
    ASSERT_TRUE(w->append(bytes.data(), bytes.size()).is_ok());
    w->abort();
    EXPECT_FALSE(w->commit().is_ok()) << "no commit after abort";
  }
  {
    auto w = store->open_writer("dropped", soon()).value();
    ASSERT_TRUE(w->append(bytes.data(), bytes.size()).is_ok());
  }  // destroyed uncommitted: aborted
  EXPECT_EQ(store->head("gone", soon()).status().code(), Code::kNotFound);
  EXPECT_EQ(store->head("dropped", soon()).status().code(), Code::kNotFound);
  EXPECT_TRUE(store->list("", soon()).value().empty());
  // Aborted on the server too: no parts are left.
  EXPECT_TRUE(store->list_pending_uploads("", soon()).value().empty());
}

// A writer killed mid-upload never aborts: its upload is left pending until
// someone lists and aborts it. Started here by hand (as a dead writer left
// it: initiated, one part up), since a live writer aborts when destroyed.
TEST_F(S3Store, AbandonedUploadsAreListedByPrefixAndAborted) {
  auto store = open("run");
  ASSERT_NE(store, nullptr);
  httplib::Client http("127.0.0.1", s3_->port());
  auto initiate = [&](const std::string& key) {
    auto r = http.Post(fmt::format("/{}/{}?uploads=", s3_->bucket(), key), "", "");
    EXPECT_TRUE(r && r->status == 200) << key;
    auto parsed = parse_upload_id(r ? r->body : "");
    EXPECT_TRUE(parsed.is_ok()) << parsed.status().to_string();
    const std::string id = parsed.is_ok() ? *parsed : "";
    const std::string part = pattern(1000, 3);
    auto p = http.Put(fmt::format("/{}/{}?partNumber=1&uploadId={}", s3_->bucket(), key, id), part,
                      "application/octet-stream");
    EXPECT_TRUE(p && p->status == 200) << key;
    return id;
  };
  const std::string a = initiate("run/step-1/shard-0");
  const std::string b = initiate("run/step-2/shard-1");
  initiate("other/step-1/shard-0");  // outside the store's prefix

  auto all = store->list_pending_uploads("", soon());
  ASSERT_TRUE(all.is_ok()) << all.status().to_string();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].key, "step-1/shard-0");
  EXPECT_EQ((*all)[0].id, a);
  EXPECT_EQ((*all)[1].key, "step-2/shard-1");
  EXPECT_EQ((*all)[1].id, b);
  ASSERT_EQ(store->list_pending_uploads("step-2/", soon()).value().size(), 1u);

  ASSERT_TRUE(store->abort_pending_upload((*all)[0], soon()).is_ok());
  EXPECT_TRUE(store->abort_pending_upload((*all)[0], soon()).is_ok()) << "already gone is ok";
  auto left = store->list_pending_uploads("", soon()).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].id, b);
  EXPECT_TRUE(store->list("", soon()).value().empty()) << "an upload is never an object";
}

// The server dies and comes back between parts and while one is in flight:
// the parts' retries (Note [S3 retries]) carry the upload through.
TEST_F(S3Store, StreamingUploadRidesOutAServerRestart) {
  S3Options o = s3_->options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 2;
  // s3rver (node) takes seconds to come back: retries must span that.
  o.max_attempts = 10;
  o.backoff_base_ms = 200;
  o.backoff_cap_ms = 2000;
  auto store = open("w", o);
  ASSERT_NE(store, nullptr);
  const std::string bytes = pattern(21ull << 20, 11);
  auto w = store->open_writer("survivor", soon()).value();
  const std::size_t half = bytes.size() / 2;
  ASSERT_TRUE(w->append(bytes.data(), half).is_ok());  // two parts handed over
  s3_->kill();
  ASSERT_TRUE(s3_->restart().is_ok()) << s3_->log_tail();
  Status a = w->append(bytes.data() + half, bytes.size() - half);
  ASSERT_TRUE(a.is_ok()) << a.to_string();
  Status c = w->commit();
  ASSERT_TRUE(c.is_ok()) << c.to_string();
  EXPECT_TRUE(store->get("survivor", soon()).value() == bytes);
}

TEST_F(S3Store, ListFollowsContinuationTokensAndStripsThePrefix) {
  S3Options o = s3_->options();
  o.list_page_keys = 3;
  auto store = open("root", o);
  auto sibling = open("rootless");  // shares the string prefix, not the directory
  ASSERT_NE(store, nullptr);
  write(tmp_.path() + "/x", "x");
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(store->put_file(fmt::format("a/{:02}", i), tmp_.path() + "/x", soon()).is_ok());
  }
  ASSERT_TRUE(store->put_file("b/0", tmp_.path() + "/x", soon()).is_ok());
  ASSERT_TRUE(sibling->put_file("a/99", tmp_.path() + "/x", soon()).is_ok());

  const auto requests_before = store->stats().requests.load();
  auto all = store->list("", soon());
  ASSERT_TRUE(all.is_ok()) << all.status().to_string();
  ASSERT_EQ(all->size(), 9u);
  EXPECT_EQ(store->stats().requests.load() - requests_before, 3u) << "9 keys in pages of 3";
  EXPECT_EQ((*all)[0].key, "a/00");
  EXPECT_EQ((*all)[0].bytes, 1u);
  EXPECT_EQ((*all)[8].key, "b/0");

  auto a = store->list("a/", soon());
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(a->size(), 8u);
  EXPECT_EQ(a->back().key, "a/07");
}

TEST_F(S3Store, ServerGoneFailsAfterBoundedAttemptsNamingObject) {
  S3Options o = s3_->options();
  o.max_attempts = 3;
  auto store = open("ds", o);
  ASSERT_NE(store, nullptr);
  s3_->kill();
  auto t0 = Clock::now();
  auto got = store->get("shard-00001.kds", Deadline::after_seconds(20));
  double took = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_EQ(got.status().code(), Code::kUnavailable) << got.status().to_string();
  const std::string& m = got.status().message();
  EXPECT_NE(m.find("s3://kiln-test/ds/shard-00001.kds"), std::string::npos) << m;
  EXPECT_NE(m.find("3 attempts"), std::string::npos) << m;
  EXPECT_EQ(store->stats().requests.load(), 3u);
  EXPECT_LT(took, 5.0) << "bounded by attempts, not by the 20 s deadline";
}

TEST_F(S3Store, RetriesRideOutARestart) {
  S3Options o = s3_->options();
  // ~15 s of retries: a node process starts in ~1 s, but in seconds on a
  // loaded machine.
  o.max_attempts = 150;
  o.backoff_cap_ms = 100;
  auto store = open("ds", o);
  ASSERT_NE(store, nullptr);
  write(tmp_.path() + "/v", "value");
  ASSERT_TRUE(store->put_file("k", tmp_.path() + "/v", soon()).is_ok());
  s3_->kill();
  // The GET retries while the restart (a fresh node process, ~1 s) runs.
  // The restart stays on this thread: s3rver dies with the thread that forked it.
  Result<std::string> got = unavailable("not run");
  std::thread reader([&] { got = store->get("k", soon()); });
  Status restarted = s3_->restart();
  reader.join();
  ASSERT_TRUE(restarted.is_ok()) << restarted.to_string();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, "value");
  EXPECT_GT(store->stats().retries.load(), 0u);
}

TEST(S3Xml, MalformedRepliesAreDataLoss) {
  EXPECT_EQ(parse_list_objects_v2("<html>proxy</html>").status().code(), Code::kDataLoss);
  EXPECT_EQ(parse_list_objects_v2("<ListBucketResult><Contents><Key>k</Key><Size>x</Size>"
                                  "</Contents></ListBucketResult>")
                .status()
                .code(),
            Code::kDataLoss);
  EXPECT_EQ(parse_list_objects_v2("<ListBucketResult><IsTruncated>true</IsTruncated>"
                                  "</ListBucketResult>")
                .status()
                .code(),
            Code::kDataLoss);
  EXPECT_EQ(parse_upload_id("<InitiateMultipartUploadResult/>").status().code(), Code::kDataLoss);
  EXPECT_EQ(parse_list_multipart_uploads("<ListMultipartUploadsResult><Upload><Key>k</Key>"
                                         "</Upload></ListMultipartUploadsResult>")
                .status()
                .code(),
            Code::kDataLoss);
  EXPECT_EQ(parse_list_multipart_uploads("<ListMultipartUploadsResult><IsTruncated>true"
                                         "</IsTruncated></ListMultipartUploadsResult>")
                .status()
                .code(),
            Code::kDataLoss);
  auto page = parse_list_multipart_uploads(
      "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextKeyMarker>b</NextKeyMarker>"
      "<NextUploadIdMarker>2</NextUploadIdMarker><Upload><Key>a</Key><UploadId>1</UploadId>"
      "</Upload></ListMultipartUploadsResult>");
  ASSERT_TRUE(page.is_ok()) << page.status().to_string();
  ASSERT_EQ(page->uploads.size(), 1u);
  EXPECT_EQ(page->uploads[0].key, "a");
  EXPECT_EQ(page->next_upload_id_marker, "2");
  EXPECT_TRUE(parse_error("not xml").code.empty());
  EXPECT_EQ(parse_error("<Error><Code>SlowDown</Code><Message>m</Message></Error>").code,
            "SlowDown");
}

TEST(S3Xml, DeleteObjectsEscapesMarkupInKeys) {
  const std::string xml = delete_objects_xml({"ckpt/a&b", "ckpt/<c>\"d\""});
  EXPECT_NE(xml.find("<Key>ckpt/a&amp;b</Key>"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<Key>ckpt/&lt;c&gt;&quot;d&quot;</Key>"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<Quiet>true</Quiet>"), std::string::npos) << xml;
}

// Note [Keys in XML]: tab, line feed and carriage return go as entity codes
// (a raw carriage return would reach S3 as a line feed) and come back from
// a reply as themselves; any other control character keeps the key out of
// XML altogether.
TEST(S3Xml, ControlCharactersInKeys) {
  EXPECT_TRUE(xml_can_carry_key("ckpt/a\tb\nc\rd"));
  EXPECT_TRUE(xml_can_carry_key("ckpt/\x7f\xc3\xa9"));  // DEL and UTF-8 are XML characters
  EXPECT_FALSE(xml_can_carry_key(std::string("ckpt/a\0b", 8)));
  EXPECT_FALSE(xml_can_carry_key("ckpt/a\x01b"));
  EXPECT_FALSE(xml_can_carry_key("ckpt/a\x1f"));
  const std::string xml = delete_objects_xml({"ckpt/a\r\nb\tc&"});
  EXPECT_NE(xml.find("<Key>ckpt/a&#13;&#10;b&#9;c&amp;</Key>"), std::string::npos) << xml;
  auto errors = parse_delete_result(
      "<DeleteResult><Error><Key>ckpt/a&#13;&#10;b&#9;c&amp;</Key><Code>InternalError</Code>"
      "</Error></DeleteResult>");
  ASSERT_TRUE(errors.is_ok()) << errors.status().to_string();
  ASSERT_EQ(errors->size(), 1u);
  EXPECT_EQ((*errors)[0].key, "ckpt/a\r\nb\tc&");
}

// DeleteObjects' Content-MD5 against RFC 1321's test suite (A.5), base64.
TEST(S3Delete, ContentMd5MatchesRfc1321) {
  EXPECT_EQ(content_md5(""), "1B2M2Y8AsgTpgAmY7PhCfg==");  // d41d8cd98f00b204e9800998ecf8427e
  EXPECT_EQ(content_md5("abc"), "kAFQmDzST7DWlj99KOF/cg==");  // 900150983cd24fb0d6963f7d28e17f72
  EXPECT_EQ(content_md5("message digest"),
            "+WtpfXy3k41SWi8xqvFh0A==");  // f96b697d7cb7938d525a2f31aaf161d0
}

TEST(S3Options, UrlAndEnvironment) {
  auto loc = parse_s3_url("s3://bucket/a/b/");
  ASSERT_TRUE(loc.is_ok());
  EXPECT_EQ(loc->bucket, "bucket");
  EXPECT_EQ(loc->prefix, "a/b");
  EXPECT_EQ(parse_s3_url("s3:///x").status().code(), Code::kInvalidArgument);
  S3Options o;
  o.endpoint = "ftp://x";
  o.access_key_id = o.secret_access_key = "k";
  EXPECT_EQ(resolve_s3_options(o).status().code(), Code::kInvalidArgument);
  o.endpoint = "http://127.0.0.1:1/";
  auto r = resolve_s3_options(o);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->endpoint, "http://127.0.0.1:1");
  EXPECT_EQ(uri_encode("a b/c+d", true), "a%20b/c%2Bd");
}

}  // namespace
}  // namespace kiln::objstore::s3
