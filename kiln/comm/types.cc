#include "kiln/comm/types.h"

#include <fmt/format.h>

namespace kiln::comm {

std::size_t dtype_size(DataType t) {
  switch (t) {
    case DataType::kFloat32: return 4;
    case DataType::kFloat64: return 8;
    case DataType::kFloat16: return 2;
    case DataType::kBFloat16: return 2;
    case DataType::kInt32: return 4;
    case DataType::kInt64: return 8;
    case DataType::kUInt8: return 1;
  }
  return 1;
}

std::string_view dtype_name(DataType t) {
  switch (t) {
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
    case DataType::kFloat16: return "float16";
    case DataType::kBFloat16: return "bfloat16";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kUInt8: return "uint8";
  }
  return "unknown";
}

Result<DataType> parse_dtype(std::string_view n) {
  if (n == "float32" || n == "fp32" || n == "float") return DataType::kFloat32;
  if (n == "float64" || n == "fp64" || n == "double") return DataType::kFloat64;
  if (n == "float16" || n == "fp16" || n == "half") return DataType::kFloat16;
  if (n == "bfloat16" || n == "bf16") return DataType::kBFloat16;
  if (n == "int32" || n == "int") return DataType::kInt32;
  if (n == "int64" || n == "long") return DataType::kInt64;
  if (n == "uint8" || n == "byte") return DataType::kUInt8;
  return invalid_argument(fmt::format(
      "unknown dtype {:?}: expected float32, float64, float16, bfloat16, int32, int64 or uint8", n));
}

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kProd: return "prod";
  }
  return "unknown";
}

Result<ReduceOp> parse_reduce_op(std::string_view n) {
  if (n == "sum") return ReduceOp::kSum;
  if (n == "avg" || n == "mean") return ReduceOp::kAvg;
  if (n == "min") return ReduceOp::kMin;
  if (n == "max") return ReduceOp::kMax;
  if (n == "prod") return ReduceOp::kProd;
  return invalid_argument(fmt::format("unknown reduce op {:?}: expected sum, avg, min, max or prod", n));
}

}  // namespace kiln::comm
