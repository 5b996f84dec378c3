#include "kiln/train/batch_tensors.h"

#include <fmt/format.h>

namespace kiln::train {
namespace {

torch::ScalarType scalar_type(data::DType t) {
  switch (t) {
    case data::DType::kUInt8: return torch::kUInt8;
    case data::DType::kInt32: return torch::kInt32;
    case data::DType::kInt64: return torch::kInt64;
    case data::DType::kFloat32: return torch::kFloat32;
  }
  return torch::kUInt8;
}

}  // namespace

Result<torch::Tensor> column_view(const data::Batch& batch, const std::string& name) {
  for (const data::Column& c : batch.columns) {
    if (c.name != name) continue;
    if (c.kind == data::FieldKind::kBytes) {
      return invalid_argument(fmt::format("batch column '{}' holds bytes (ragged), not a tensor", name));
    }
    torch::ScalarType type = c.kind == data::FieldKind::kInt64 ? torch::kInt64 : scalar_type(c.dtype);
    return torch::from_blob(const_cast<std::uint8_t*>(c.data.data()), c.shape,
                            torch::TensorOptions().dtype(type));
  }
  return invalid_argument(fmt::format("the dataset has no column '{}'", name));
}

Result<torch::Tensor> column_tensor(const data::Batch& batch, const std::string& name) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor view, column_view(batch, name));
  return view.clone();
}

}  // namespace kiln::train
