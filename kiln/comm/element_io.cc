#include "kiln/comm/element_io.h"

#include <cstdint>

#include "kiln/comm/reduce.h"

namespace kiln::comm {

void store_element(DataType t, void* buf, std::size_t i, double v) {
  switch (t) {
    case DataType::kFloat32: static_cast<float*>(buf)[i] = static_cast<float>(v); break;
    case DataType::kFloat64: static_cast<double*>(buf)[i] = v; break;
    case DataType::kFloat16: static_cast<std::uint16_t*>(buf)[i] = float_to_half(static_cast<float>(v)); break;
    case DataType::kBFloat16: static_cast<std::uint16_t*>(buf)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DataType::kInt32: static_cast<std::int32_t*>(buf)[i] = static_cast<std::int32_t>(v); break;
    case DataType::kInt64: static_cast<std::int64_t*>(buf)[i] = static_cast<std::int64_t>(v); break;
    case DataType::kUInt8:
      static_cast<std::uint8_t*>(buf)[i] = static_cast<std::uint8_t>(static_cast<int>(v));
      break;
  }
}

double load_element(DataType t, const void* buf, std::size_t i) {
  switch (t) {
    case DataType::kFloat32: return static_cast<const float*>(buf)[i];
    case DataType::kFloat64: return static_cast<const double*>(buf)[i];
    case DataType::kFloat16: return half_to_float(static_cast<const std::uint16_t*>(buf)[i]);
    case DataType::kBFloat16: return bf16_to_float(static_cast<const std::uint16_t*>(buf)[i]);
    case DataType::kInt32: return static_cast<const std::int32_t*>(buf)[i];
    case DataType::kInt64: return static_cast<double>(static_cast<const std::int64_t*>(buf)[i]);
    case DataType::kUInt8: return static_cast<const std::uint8_t*>(buf)[i];
  }
  return 0;
}

}  // namespace kiln::comm
