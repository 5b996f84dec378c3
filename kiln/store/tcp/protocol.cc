#include "kiln/store/tcp/protocol.h"

#include <fmt/format.h>

namespace kiln::store::tcp {
namespace {

// Appends little-endian integers and length-prefixed strings.
class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  void u8(std::uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) { le(v, 4); }
  void u64(std::uint64_t v) { le(v, 8); }
  void i64(std::int64_t v) { le(static_cast<std::uint64_t>(v), 8); }
  void str(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    out_->append(s);
  }

 private:
  void le(std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string* out_;
};

// Reads what Writer wrote; every read is bounds-checked and the first
// failure sticks, so a decoder checks ok() once at the end.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(le(1)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(le(4)); }
  std::uint64_t u64() { return le(8); }
  std::int64_t i64() { return static_cast<std::int64_t>(le(8)); }
  std::string str() {
    std::uint32_t n = u32();
    if (!ok_ || n > in_.size()) return fail<std::string>();
    std::string s(in_.substr(0, n));
    in_.remove_prefix(n);
    return s;
  }
  std::size_t remaining() const { return in_.size(); }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && in_.empty(); }
  void invalidate() { ok_ = false; }

 private:
  std::uint64_t le(std::size_t bytes) {
    if (!ok_ || in_.size() < bytes) return fail<std::uint64_t>();
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in_[i])) << (8 * i);
    }
    in_.remove_prefix(bytes);
    return v;
  }
  template <typename T>
  T fail() {
    ok_ = false;
    in_ = {};
    return T{};
  }
  std::string_view in_;
  bool ok_ = true;
};

// Frames the body that `fill` writes: reserves the header, patches it after.
template <typename Fill>
void append_frame(std::string* out, Fill fill) {
  std::size_t header_at = out->size();
  out->append(kFrameHeaderBytes, '\0');
  Writer w(out);
  fill(w);
  auto body = static_cast<std::uint32_t>(out->size() - header_at - kFrameHeaderBytes);
  for (std::size_t i = 0; i < kFrameHeaderBytes; ++i) {
    (*out)[header_at + i] = static_cast<char>((body >> (8 * i)) & 0xff);
  }
}

bool valid_op(std::uint8_t op) {
  return op >= static_cast<std::uint8_t>(Op::kSet) && op <= static_cast<std::uint8_t>(Op::kCheck);
}

bool has_key_list(Op op) { return op == Op::kWait || op == Op::kCheck; }

}  // namespace

std::string_view op_name(Op op) {
  switch (op) {
    case Op::kSet:
      return "set";
    case Op::kGet:
      return "get";
    case Op::kAdd:
      return "add";
    case Op::kCompareSet:
      return "compare_set";
    case Op::kWait:
      return "wait";
    case Op::kErase:
      return "erase";
    case Op::kCheck:
      return "check";
  }
  return "unknown";
}

std::string encode_hello() {
  std::string out;
  Writer w(&out);
  w.u32(kMagic);
  w.u32(kVersion);
  return out;
}

Status check_hello(std::string_view hello) {
  Reader r(hello);
  std::uint32_t magic = r.u32();
  std::uint32_t version = r.u32();
  if (!r.done())
    return data_loss(fmt::format("hello of {} bytes, want {}", hello.size(), kHelloBytes));
  if (magic != kMagic) {
    return data_loss(
        fmt::format("bad magic {:#010x} (want {:#010x}): not a Kiln store peer", magic, kMagic));
  }
  if (version != kVersion) {
    return failed_precondition(
        fmt::format("protocol version {} (this build speaks {})", version, kVersion));
  }
  return Status::ok();
}

void append_request(const Request& req, std::string* out) {
  append_frame(out, [&](Writer& w) {
    w.u64(req.id);
    w.u8(static_cast<std::uint8_t>(req.op));
    if (has_key_list(req.op)) {
      w.u32(static_cast<std::uint32_t>(req.keys.size()));
      for (const auto& k : req.keys) w.str(k);
    } else {
      w.str(req.keys.empty() ? std::string_view() : std::string_view(req.keys[0]));
    }
    switch (req.op) {
      case Op::kSet:
        w.str(req.value);
        break;
      case Op::kAdd:
        w.i64(req.delta);
        break;
      case Op::kCompareSet:
        w.str(req.expected);
        w.str(req.value);
        break;
      case Op::kGet:
      case Op::kWait:
        w.u64(req.timeout_ms);
        break;
      case Op::kErase:
      case Op::kCheck:
        break;
    }
  });
}

Result<Request> decode_request(std::string_view body) {
  Reader r(body);
  Request req;
  req.id = r.u64();
  std::uint8_t op = r.u8();
  if (r.ok() && !valid_op(op)) return data_loss(fmt::format("unknown op {}", op));
  req.op = static_cast<Op>(op);
  if (has_key_list(req.op)) {
    std::uint32_t n = r.u32();
    // Each key takes at least its 4-byte length: bounds the allocation.
    if (n > r.remaining() / 4) r.invalidate();
    for (std::uint32_t i = 0; i < n && r.ok(); ++i) req.keys.push_back(r.str());
  } else {
    req.keys.push_back(r.str());
  }
  switch (req.op) {
    case Op::kSet:
      req.value = r.str();
      break;
    case Op::kAdd:
      req.delta = r.i64();
      break;
    case Op::kCompareSet:
      req.expected = r.str();
      req.value = r.str();
      break;
    case Op::kGet:
    case Op::kWait:
      req.timeout_ms = r.u64();
      break;
    case Op::kErase:
    case Op::kCheck:
      break;
  }
  if (!r.done()) {
    return data_loss(fmt::format("malformed {} request of {} bytes", op_name(req.op), body.size()));
  }
  return req;
}

void append_response(Op op, const Response& resp, std::string* out) {
  append_frame(out, [&](Writer& w) {
    w.u64(resp.id);
    w.u8(static_cast<std::uint8_t>(resp.status.code()));
    if (!resp.status.is_ok()) {
      w.str(resp.status.message());
      return;
    }
    switch (op) {
      case Op::kGet:
      case Op::kCompareSet:
        w.str(resp.value);
        break;
      case Op::kAdd:
        w.i64(resp.number);
        break;
      case Op::kErase:
      case Op::kCheck:
        w.u8(resp.flag ? 1 : 0);
        break;
      case Op::kSet:
      case Op::kWait:
        break;
    }
  });
}

Result<Response> decode_response(Op op, std::string_view body) {
  Reader r(body);
  Response resp;
  resp.id = r.u64();
  std::uint8_t code = r.u8();
  if (r.ok() && code > static_cast<std::uint8_t>(Code::kInternal)) {
    return data_loss(fmt::format("unknown status code {} in {} response", code, op_name(op)));
  }
  if (r.ok() && code != 0) {
    resp.status = Status(static_cast<Code>(code), r.str());
  } else {
    switch (op) {
      case Op::kGet:
      case Op::kCompareSet:
        resp.value = r.str();
        break;
      case Op::kAdd:
        resp.number = r.i64();
        break;
      case Op::kErase:
      case Op::kCheck: {
        std::uint8_t flag = r.u8();
        if (flag > 1) r.invalidate();
        resp.flag = flag == 1;
        break;
      }
      case Op::kSet:
      case Op::kWait:
        break;
    }
  }
  if (!r.done()) {
    return data_loss(fmt::format("malformed {} response of {} bytes", op_name(op), body.size()));
  }
  return resp;
}

Result<std::uint32_t> decode_frame_header(std::string_view header, std::uint32_t max_frame) {
  Reader r(header);
  std::uint32_t n = r.u32();
  if (!r.done()) return data_loss("short frame header");
  if (n > max_frame) {
    return data_loss(fmt::format("frame of {} bytes exceeds the {}-byte limit", n, max_frame));
  }
  return n;
}

void FrameReader::append(std::string_view bytes) {
  compact();
  buf_.append(bytes);
}

bool FrameReader::take_raw(std::size_t n, std::string* out) {
  if (buffered() < n) return false;
  out->assign(buf_, pos_, n);
  pos_ += n;
  return true;
}

Result<bool> FrameReader::take_frame(std::string* body) {
  if (buffered() < kFrameHeaderBytes) return false;
  KILN_ASSIGN_OR_RETURN(
      std::uint32_t n,
      decode_frame_header(std::string_view(buf_).substr(pos_, kFrameHeaderBytes), max_frame_));
  if (buffered() < kFrameHeaderBytes + n) return false;
  body->assign(buf_, pos_ + kFrameHeaderBytes, n);
  pos_ += kFrameHeaderBytes + n;
  return true;
}

// Drops consumed bytes once they are at least half the buffer, so appends
// stay amortized O(1) without moving a partial frame on every read.
void FrameReader::compact() {
  if (pos_ == 0) return;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ >= buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
}

}  // namespace kiln::store::tcp
