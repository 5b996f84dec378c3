#include "kiln/objstore/s3/s3_xml.h"

#include <fmt/format.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <memory>

#include "kiln/base/markup.h"

namespace kiln::objstore::s3 {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using Doc = std::unique_ptr<xmlDoc, DocDeleter>;

// A ListObjectsV2 page (<= 1000 keys) is well under 1 MiB. Larger replies
// are refused unparsed: libxml2 takes an int length, and a hostile endpoint
// must not make us build a document of any size. (libxml2 without
// XML_PARSE_HUGE also bounds nesting depth and text node sizes, and entities
// are not expanded without XML_PARSE_NOENT.)
constexpr std::size_t kMaxXmlBytes = std::size_t{16} << 20;

Status check_size(const std::string& xml, const char* what) {
  if (xml.size() <= kMaxXmlBytes) return Status::ok();
  return data_loss(fmt::format("{} reply of {} bytes is over the {}-byte limit", what, xml.size(),
                               kMaxXmlBytes));
}

Doc parse(const std::string& xml) {
  if (xml.size() > kMaxXmlBytes) return nullptr;
  return Doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "s3.xml", nullptr,
                           XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
}

bool named(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE &&
         std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0;
}

const xmlNode* child(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (named(c, name)) return c;
  }
  return nullptr;
}

std::string text(const xmlNode* n) {
  if (n == nullptr) return "";
  xmlChar* t = xmlNodeGetContent(n);
  std::string s = t != nullptr ? reinterpret_cast<const char*>(t) : "";
  xmlFree(t);
  return s;
}

std::string snippet(const std::string& xml) { return xml.substr(0, 200); }

}  // namespace

Result<ListPage> parse_list_objects_v2(const std::string& xml) {
  KILN_RETURN_IF_ERROR(check_size(xml, "ListObjectsV2"));
  Doc doc = parse(xml);
  const xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr || !named(root, "ListBucketResult")) {
    return data_loss("ListObjectsV2 reply is not a <ListBucketResult>: " + snippet(xml));
  }
  ListPage page;
  page.truncated = text(child(root, "IsTruncated")) == "true";
  page.next_continuation_token = text(child(root, "NextContinuationToken"));
  for (const xmlNode* c = root->children; c != nullptr; c = c->next) {
    if (!named(c, "Contents")) continue;
    ObjectInfo info;
    info.key = text(child(c, "Key"));
    std::string size = text(child(c, "Size"));
    auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), info.bytes);
    if (info.key.empty() || ec != std::errc() || end != size.data() + size.size()) {
      return data_loss(
          fmt::format("ListObjectsV2 reply: <Contents> without a valid Key/Size "
                      "(key '{}', size '{}')",
                      info.key, size));
    }
    page.objects.push_back(std::move(info));
  }
  if (page.truncated && page.next_continuation_token.empty()) {
    return data_loss("ListObjectsV2 reply: IsTruncated without a NextContinuationToken");
  }
  return page;
}

Result<UploadsPage> parse_list_multipart_uploads(const std::string& xml) {
  KILN_RETURN_IF_ERROR(check_size(xml, "ListMultipartUploads"));
  Doc doc = parse(xml);
  const xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr || !named(root, "ListMultipartUploadsResult")) {
    return data_loss("ListMultipartUploads reply is not a <ListMultipartUploadsResult>: " +
                     snippet(xml));
  }
  UploadsPage page;
  page.truncated = text(child(root, "IsTruncated")) == "true";
  page.next_key_marker = text(child(root, "NextKeyMarker"));
  page.next_upload_id_marker = text(child(root, "NextUploadIdMarker"));
  for (const xmlNode* c = root->children; c != nullptr; c = c->next) {
    if (!named(c, "Upload")) continue;
    PendingUpload u{text(child(c, "Key")), text(child(c, "UploadId"))};
    if (u.key.empty() || u.id.empty()) {
      return data_loss(fmt::format(
          "ListMultipartUploads reply: <Upload> without a Key and UploadId (key '{}', id '{}')",
          u.key, u.id));
    }
    page.uploads.push_back(std::move(u));
  }
  if (page.truncated && page.next_key_marker.empty()) {
    return data_loss("ListMultipartUploads reply: IsTruncated without a NextKeyMarker");
  }
  return page;
}

Result<std::string> parse_upload_id(const std::string& xml) {
  KILN_RETURN_IF_ERROR(check_size(xml, "InitiateMultipartUpload"));
  Doc doc = parse(xml);
  const xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  std::string id = root != nullptr ? text(child(root, "UploadId")) : "";
  if (id.empty())
    return data_loss("InitiateMultipartUpload reply has no UploadId: " + snippet(xml));
  return id;
}

S3Error parse_error(const std::string& xml) {
  Doc doc = parse(xml);
  const xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr || !named(root, "Error")) return {};
  return {text(child(root, "Code")), text(child(root, "Message"))};
}

bool xml_can_carry_key(std::string_view key) {
  return std::none_of(key.begin(), key.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 && c != '\t' && c != '\n' && c != '\r';
  });
}

std::string delete_objects_xml(const std::vector<std::string>& keys) {
  std::string xml =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
      "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>";
  for (const auto& key : keys) {
    xml += "<Object><Key>";
    // Note [Keys in XML]: the three control characters XML can carry, as entities.
    for (char c : markup_escape(key)) {
      switch (c) {
        case '\t':
          xml += "&#9;";
          break;
        case '\n':
          xml += "&#10;";
          break;
        case '\r':
          xml += "&#13;";
          break;
        default:
          xml += c;
      }
    }
    xml += "</Key></Object>";
  }
  return xml + "</Delete>";
}

Result<std::vector<DeleteError>> parse_delete_result(const std::string& xml) {
  KILN_RETURN_IF_ERROR(check_size(xml, "DeleteObjects"));
  Doc doc = parse(xml);
  const xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr || !named(root, "DeleteResult")) {
    return data_loss("DeleteObjects reply is not a <DeleteResult>: " + snippet(xml));
  }
  std::vector<DeleteError> errors;
  for (const xmlNode* c = root->children; c != nullptr; c = c->next) {
    if (!named(c, "Error")) continue;
    errors.push_back({text(child(c, "Key")), text(child(c, "Code")), text(child(c, "Message"))});
  }
  return errors;
}

std::string complete_multipart_xml(const std::vector<std::string>& etags) {
  std::string xml = "<CompleteMultipartUpload>";
  for (std::size_t i = 0; i < etags.size(); ++i) {
    // ETags are quoted hex digests: nothing in them needs escaping.
    xml += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, etags[i]);
  }
  return xml + "</CompleteMultipartUpload>";
}

}  // namespace kiln::objstore::s3
