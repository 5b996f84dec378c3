// Schema and Sample: a sample is a tuple of named fields, each bytes, an
// int64 or a tensor (dtype + shape + data). The schema (names and kinds, in
// order) lives in index.json; a sample's bytes in a shard hold only the
// values, in schema order (docs/formats.md, "Dataset format").
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::data {

enum class FieldKind : std::uint8_t { kBytes = 1, kInt64 = 2, kTensor = 3 };
enum class DType : std::uint8_t { kUInt8 = 1, kInt32 = 2, kInt64 = 3, kFloat32 = 4 };

std::string_view kind_name(FieldKind kind);
Result<FieldKind> parse_kind(std::string_view name);
std::string_view dtype_name(DType dtype);
Result<DType> parse_dtype(std::string_view name);
std::size_t dtype_size(DType dtype);

struct FieldSpec {
  std::string name;
  FieldKind kind = FieldKind::kBytes;
  DType dtype = DType::kUInt8;  // tensors only
};

using Schema = std::vector<FieldSpec>;

// One field's value. Bytes use `data`; int64 uses `i64`; tensors use
// `dtype`, `shape` and `data` (row-major, little-endian elements).
struct FieldValue {
  FieldKind kind = FieldKind::kBytes;
  std::int64_t i64 = 0;
  DType dtype = DType::kUInt8;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;

  static FieldValue bytes(std::vector<std::uint8_t> b);
  static FieldValue int64(std::int64_t v);
  static FieldValue tensor(DType dtype, std::vector<std::int64_t> shape,
                           std::vector<std::uint8_t> data);
};

using Sample = std::vector<FieldValue>;

// Appends the encoding of `sample` to `out`. InvalidArgument if the sample
// does not match `schema` (count, kinds, dtypes, tensor data size).
Status encode_sample(const Schema& schema, const Sample& sample, std::vector<std::uint8_t>* out);

// One field decoded in place: `data` points into the bytes it was decoded
// from (a shard mapping), so it is valid only as long as they are. Bytes use
// `data`; int64 uses `i64`; tensors use `dtype`, dims[0, rank) and `data`.
struct FieldView {
  FieldKind kind = FieldKind::kBytes;
  std::int64_t i64 = 0;
  DType dtype = DType::kUInt8;
  std::uint8_t rank = 0;
  std::array<std::int64_t, 8> dims{};
  std::span<const std::uint8_t> data;

  std::span<const std::int64_t> shape() const { return {dims.data(), rank}; }
};

// Decodes one sample without copying a payload: (*out)[i] views field i of
// `bytes`. `out` is resized to the schema; reusing it across calls allocates
// nothing. Same validation and DataLoss errors as decode_sample.
Status decode_sample_view(const Schema& schema, std::span<const std::uint8_t> bytes,
                          std::vector<FieldView>* out);

// Decodes one sample. DataLoss naming the field if the bytes are truncated,
// overlong or disagree with the schema: a corrupt record never yields a sample.
Result<Sample> decode_sample(const Schema& schema, std::span<const std::uint8_t> bytes);

}  // namespace kiln::data
