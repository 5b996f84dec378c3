// The LibTorch adapter of kiln::data: a loader Batch's columns as tensors.
//
//   auto batch = loader.next(deadline);               // contiguous host buffers
//   torch::Tensor images = column_tensor(**batch, "image").value();   // uint8 [B, 1, 28, 28]
//   torch::Tensor labels = column_tensor(**batch, "label").value();   // int64 [B]
//
// Tensors and int64 columns become tensors of their dtype and [B, ...]
// shape; bytes columns (ragged) are not tensors and are refused.
#pragma once

#include <torch/torch.h>

#include <string>

#include "kiln/base/status.h"
#include "kiln/data/loader.h"

namespace kiln::train {

// A tensor that owns a copy of the column (the batch may then go away).
// InvalidArgument naming the column if it is absent or a bytes column.
Result<torch::Tensor> column_tensor(const data::Batch& batch, const std::string& name);

// The same without a copy: valid only while `batch` lives and is unchanged.
Result<torch::Tensor> column_view(const data::Batch& batch, const std::string& name);

}  // namespace kiln::train
