// The few S3 XML documents Kiln reads, parsed with libxml2. Element names
// are matched without their namespace (AWS and s3rver differ there).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/objstore/object_store.h"

namespace kiln::objstore::s3 {

// <ListBucketResult> of ListObjectsV2. Keys are the bucket's full keys.
struct ListPage {
  std::vector<ObjectInfo> objects;
  bool truncated = false;
  std::string next_continuation_token;
};
Result<ListPage> parse_list_objects_v2(const std::string& xml);

// <InitiateMultipartUploadResult><UploadId>.
Result<std::string> parse_upload_id(const std::string& xml);

// <ListMultipartUploadsResult> of ListMultipartUploads: the page's uploads
// (keys are the bucket's full keys) and, when truncated, the markers the
// next page starts after.
struct UploadsPage {
  std::vector<PendingUpload> uploads;
  bool truncated = false;
  std::string next_key_marker;
  std::string next_upload_id_marker;
};
Result<UploadsPage> parse_list_multipart_uploads(const std::string& xml);

// <Error><Code>NoSuchKey</Code><Message>...</Message></Error>. Empty fields
// when the body is not an S3 error document (a proxy's HTML page, nothing).
struct S3Error {
  std::string code;
  std::string message;
};
S3Error parse_error(const std::string& xml);

// <CompleteMultipartUpload> for parts 1..N with these ETags.
std::string complete_multipart_xml(const std::vector<std::string>& etags);

// Note [Keys in XML]: S3 keys are any UTF-8, control characters included,
// but an XML 1.0 document cannot hold most control characters, not even as
// a character reference: only tab, line feed and carriage return. S3's
// guide ("XML related object key constraints") asks for those three as
// entity codes (&#9; &#10; &#13;), since XML turns a raw carriage return
// into a line feed when it reads it. A key with any other control
// character cannot go into a DeleteObjects request at all: the caller
// deletes it alone (DELETE names the key in the URL, percent-encoded).

// Whether `key` can be written into an XML 1.0 document (Note [Keys in XML]).
bool xml_can_carry_key(std::string_view key);

// <Delete> of DeleteObjects for these (full) keys, in quiet mode: the reply
// lists only the keys that failed. Each key must pass xml_can_carry_key;
// markup and tab, line feed and carriage return go as entities.
std::string delete_objects_xml(const std::vector<std::string>& keys);

// The <Error> entries of a DeleteObjects reply's <DeleteResult>: the keys
// (full) it did not delete. DataLoss when the body is no <DeleteResult>.
struct DeleteError {
  std::string key;
  std::string code;
  std::string message;
};
Result<std::vector<DeleteError>> parse_delete_result(const std::string& xml);

}  // namespace kiln::objstore::s3
