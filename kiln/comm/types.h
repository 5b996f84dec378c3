// Element types and reduction operators of collectives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::comm {

enum class DataType : std::uint8_t {
  kFloat32,
  kFloat64,
  kFloat16,   // IEEE binary16; reduced in float32
  kBFloat16,  // bfloat16; reduced in float32
  kInt32,
  kInt64,
  kUInt8,
};

enum class ReduceOp : std::uint8_t { kSum, kAvg, kMin, kMax, kProd };

std::size_t dtype_size(DataType t);
std::string_view dtype_name(DataType t);  // "float32", "bfloat16", ...
Result<DataType> parse_dtype(std::string_view name);  // also accepts "fp32", "half", "bf16", ...

std::string_view reduce_op_name(ReduceOp op);
Result<ReduceOp> parse_reduce_op(std::string_view name);

}  // namespace kiln::comm
