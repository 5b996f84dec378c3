#include "kiln/data/schema.h"

#include <cstring>

#include <fmt/format.h>

namespace kiln::data {

std::string_view kind_name(FieldKind kind) {
  switch (kind) {
    case FieldKind::kBytes: return "bytes";
    case FieldKind::kInt64: return "int64";
    case FieldKind::kTensor: return "tensor";
  }
  return "?";
}

Result<FieldKind> parse_kind(std::string_view name) {
  for (auto k : {FieldKind::kBytes, FieldKind::kInt64, FieldKind::kTensor}) {
    if (kind_name(k) == name) return k;
  }
  return invalid_argument(fmt::format("unknown field kind '{}' (bytes, int64, tensor)", name));
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat32: return "float32";
  }
  return "?";
}

Result<DType> parse_dtype(std::string_view name) {
  for (auto d : {DType::kUInt8, DType::kInt32, DType::kInt64, DType::kFloat32}) {
    if (dtype_name(d) == name) return d;
  }
  return invalid_argument(
      fmt::format("unknown dtype '{}' (uint8, int32, int64, float32)", name));
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kUInt8: return 1;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
    case DType::kFloat32: return 4;
  }
  return 0;
}

FieldValue FieldValue::bytes(std::vector<std::uint8_t> b) {
  FieldValue v;
  v.kind = FieldKind::kBytes;
  v.data = std::move(b);
  return v;
}

FieldValue FieldValue::int64(std::int64_t x) {
  FieldValue v;
  v.kind = FieldKind::kInt64;
  v.i64 = x;
  return v;
}

FieldValue FieldValue::tensor(DType dtype, std::vector<std::int64_t> shape,
                              std::vector<std::uint8_t> data) {
  FieldValue v;
  v.kind = FieldKind::kTensor;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.data = std::move(data);
  return v;
}

namespace {

// Fields are little-endian; Kiln builds only for little-endian hosts.
template <typename T>
void put(std::vector<std::uint8_t>* out, T v) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
  out->insert(out->end(), p, p + sizeof(T));
}

class Cursor {
 public:
  explicit Cursor(std::span<const std::uint8_t> b) : b_(b) {}
  template <typename T>
  bool get(T* v) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool take(std::uint64_t n, std::span<const std::uint8_t>* out) {
    if (b_.size() - pos_ < n) return false;
    *out = b_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  std::span<const std::uint8_t> b_;
  std::size_t pos_ = 0;
};

constexpr std::uint8_t kMaxRank = 8;

}  // namespace

Status encode_sample(const Schema& schema, const Sample& sample, std::vector<std::uint8_t>* out) {
  if (sample.size() != schema.size()) {
    return invalid_argument(fmt::format("encode sample: {} fields, schema has {}", sample.size(),
                                        schema.size()));
  }
  for (std::size_t i = 0; i < schema.size(); ++i) {
    const FieldSpec& f = schema[i];
    const FieldValue& v = sample[i];
    if (v.kind != f.kind) {
      return invalid_argument(fmt::format("encode sample: field '{}' is {}, schema says {}", f.name,
                                          kind_name(v.kind), kind_name(f.kind)));
    }
    switch (f.kind) {
      case FieldKind::kBytes:
        put<std::uint32_t>(out, static_cast<std::uint32_t>(v.data.size()));
        out->insert(out->end(), v.data.begin(), v.data.end());
        break;
      case FieldKind::kInt64:
        put<std::int64_t>(out, v.i64);
        break;
      case FieldKind::kTensor: {
        if (v.dtype != f.dtype || v.shape.size() > kMaxRank) {
          return invalid_argument(fmt::format(
              "encode sample: tensor '{}' is {} rank {}, schema says {} (rank <= {})", f.name,
              dtype_name(v.dtype), v.shape.size(), dtype_name(f.dtype), kMaxRank));
        }
        std::uint64_t n = 1;
        for (auto d : v.shape) n *= static_cast<std::uint64_t>(d < 0 ? 0 : d);
        if (n * dtype_size(f.dtype) != v.data.size()) {
          return invalid_argument(fmt::format("encode sample: tensor '{}' has {} bytes, shape needs {}",
                                              f.name, v.data.size(), n * dtype_size(f.dtype)));
        }
        put<std::uint8_t>(out, static_cast<std::uint8_t>(v.shape.size()));
        for (auto d : v.shape) put<std::int64_t>(out, d);
        out->insert(out->end(), v.data.begin(), v.data.end());
        break;
      }
    }
  }
  return Status::ok();
}

Status decode_sample_view(const Schema& schema, std::span<const std::uint8_t> bytes,
                          std::vector<FieldView>* out) {
  Cursor c(bytes);
  out->resize(schema.size());
  for (std::size_t i = 0; i < schema.size(); ++i) {
    const FieldSpec& f = schema[i];
    FieldView& v = (*out)[i];
    v.kind = f.kind;
    v.rank = 0;
    v.data = {};
    bool ok = true;
    switch (f.kind) {
      case FieldKind::kBytes: {
        std::uint32_t n = 0;
        ok = c.get(&n) && c.take(n, &v.data);
        break;
      }
      case FieldKind::kInt64:
        ok = c.get(&v.i64);
        break;
      case FieldKind::kTensor: {
        v.dtype = f.dtype;
        std::uint8_t rank = 0;
        ok = c.get(&rank) && rank <= kMaxRank;
        std::uint64_t n = 1;
        for (std::uint8_t d = 0; ok && d < rank; ++d) {
          std::int64_t dim = 0;
          ok = c.get(&dim) && dim >= 0 && dim <= (std::int64_t{1} << 40);
          v.dims[d] = dim;
          n *= static_cast<std::uint64_t>(dim);
          ok = ok && n <= bytes.size();
        }
        if (ok) v.rank = rank;
        ok = ok && c.take(n * dtype_size(f.dtype), &v.data);
        break;
      }
    }
    if (!ok) {
      return data_loss(fmt::format("decode sample: field '{}' ({}) is truncated or malformed",
                                   f.name, kind_name(f.kind)));
    }
  }
  if (!c.done()) return data_loss("decode sample: trailing bytes after the last field");
  return Status::ok();
}

Result<Sample> decode_sample(const Schema& schema, std::span<const std::uint8_t> bytes) {
  std::vector<FieldView> views;
  KILN_RETURN_IF_ERROR(decode_sample_view(schema, bytes, &views));
  Sample s(schema.size());
  for (std::size_t i = 0; i < schema.size(); ++i) {
    const FieldView& v = views[i];
    s[i].kind = v.kind;
    s[i].i64 = v.i64;
    s[i].dtype = v.dtype;
    s[i].shape.assign(v.shape().begin(), v.shape().end());
    s[i].data.assign(v.data.begin(), v.data.end());
  }
  return s;
}

}  // namespace kiln::data
