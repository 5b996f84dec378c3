// DeleteObjects: S3ObjectStore::remove_many (Note [Batch deletes]).
#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <optional>

#include "kiln/base/logging.h"
#include "kiln/objstore/s3/s3_delete.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/s3_xml.h"

namespace kiln::objstore::s3 {
namespace {

// DeleteObjects takes at most this many keys a request (the S3 API reference).
constexpr std::size_t kMaxKeysPerDelete = 1000;

// An endpoint that does not offer DeleteObjects (some S3-compatible stores).
bool refuses_batch_deletes(const S3Response& r) {
  const std::string code = parse_error(r.body).code;
  return r.http_status == 501 || r.http_status == 405 || code == "NotImplemented" ||
         code == "MethodNotAllowed";
}

}  // namespace

std::optional<std::string> content_md5(std::string_view body) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(body.data(), body.size(), md, &n, EVP_md5(), nullptr) != 1 || n == 0) {
    return std::nullopt;
  }
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  int len = EVP_EncodeBlock(b64, md, static_cast<int>(n));
  return std::string(reinterpret_cast<const char*>(b64), static_cast<std::size_t>(len));
}

// Note [Batch deletes]: a step of chunk objects is dozens of objects per
// rank, and retention and a commit's stray cleanup delete them together.
// One DELETE each is a round trip each (s3rver serves them one after
// another: ~0.6 s for a 1 GiB step's 64 chunks, docs/perf.md); DeleteObjects
// removes up to 1000 keys in one request. The reply lists the keys it could
// not delete; those are retried one by one with remove() (which retries
// transient failures). An endpoint that refuses the call (501, 405,
// NotImplemented) is remembered, and from then on every key gets its own
// DELETE. A key with a control character no XML document can carry (Note
// [Keys in XML], s3_xml.h) gets its own DELETE too.
Status S3ObjectStore::remove_many(const std::vector<std::string>& keys, Deadline deadline) {
  std::vector<std::string> in_xml, alone;
  for (const auto& k : keys) (xml_can_carry_key(full_key(k)) ? in_xml : alone).push_back(k);
  Status first;
  for (std::size_t at = 0; at < in_xml.size(); at += kMaxKeysPerDelete) {
    const auto end = in_xml.begin() +
                     static_cast<std::ptrdiff_t>(std::min(in_xml.size(), at + kMaxKeysPerDelete));
    std::vector<std::string> batch(in_xml.begin() + static_cast<std::ptrdiff_t>(at), end);
    Status s = batch_deletes_.load() ? delete_batch(batch, deadline)
                                     : ObjectStore::remove_many(batch, deadline);
    if (!s.is_ok() && first.is_ok()) first = s;
  }
  Status s = ObjectStore::remove_many(alone, deadline);
  return first.is_ok() ? s : first;
}

Status S3ObjectStore::delete_batch(const std::vector<std::string>& keys, Deadline deadline) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(full_key(k));
  S3Request req;
  req.method = "POST";
  req.url = fmt::format("{}/{}?delete=", options_.endpoint, location_.bucket);
  req.body = delete_objects_xml(full);
  const std::optional<std::string> md5 = content_md5(req.body);
  if (!md5) {
    log()->info("s3: this OpenSSL computes no MD5, which DeleteObjects requires; deleting one "
                "object at a time");
    batch_deletes_.store(false);
    return ObjectStore::remove_many(keys, deadline);
  }
  req.headers = {"Content-MD5: " + *md5, "Content-Type: application/xml"};
  const std::string what = fmt::format("DeleteObjects of {} key(s) under {} (first {})",
                                       keys.size(), describe(), keys.front());
  S3Response refused;
  auto r = call(req, what, deadline, &refused);
  if (!r.is_ok()) {
    if (refused.http_status == 0 || !refuses_batch_deletes(refused)) return r.status();
    log()->info("s3: {} does not offer DeleteObjects ({}); deleting one object at a time",
                options_.endpoint, r.status().message());
    batch_deletes_.store(false);
    return ObjectStore::remove_many(keys, deadline);
  }
  auto errors = parse_delete_result(r->body);
  if (!errors.is_ok()) {
    // A 200 whose body is no DeleteResult (a proxy's page, a truncated
    // reply) says nothing of which keys went: each is deleted alone.
    log()->warn("s3: {}: {}; deleting its keys one at a time", what, errors.status().message());
    return ObjectStore::remove_many(keys, deadline).with_context(what);
  }
  if (errors->empty()) return Status::ok();
  // What the batch could not delete, one at a time, with retries.
  const std::string root = location_.prefix.empty() ? "" : location_.prefix + "/";
  std::vector<std::string> again;
  for (const auto& e : *errors) {
    log()->debug("s3: {}: {} not deleted ({}: {}); retrying it alone", what, e.key, e.code,
                 e.message);
    again.push_back(e.key.rfind(root, 0) == 0 ? e.key.substr(root.size()) : e.key);
  }
  return ObjectStore::remove_many(again, deadline).with_context(what);
}

}  // namespace kiln::objstore::s3
