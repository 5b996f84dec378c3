// The S3 XML replies Kiln reads (ListObjectsV2, ListMultipartUploads,
// InitiateMultipartUpload, errors) from an endpoint that may be hostile or broken: any bytes give a
// result or an error. A listed object always has a key.
#include <cstdint>
#include <string>

#include "kiln/base/check.h"
#include "kiln/objstore/s3/s3_xml.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string xml(reinterpret_cast<const char*>(data), size);
  auto page = kiln::objstore::s3::parse_list_objects_v2(xml);
  if (page.is_ok()) {
    for (const auto& o : page->objects) KILN_CHECK(!o.key.empty());
    KILN_CHECK(!page->truncated || !page->next_continuation_token.empty());
  }
  auto uploads = kiln::objstore::s3::parse_list_multipart_uploads(xml);
  if (uploads.is_ok()) {
    for (const auto& u : uploads->uploads) KILN_CHECK(!u.key.empty() && !u.id.empty());
    KILN_CHECK(!uploads->truncated || !uploads->next_key_marker.empty());
  }
  (void)kiln::objstore::s3::parse_upload_id(xml);
  (void)kiln::objstore::s3::parse_error(xml);
  return 0;
}
