// The LibTorch adapter: columns become tensors of their dtype and shape.
#include "kiln/train/batch_tensors.h"

#include <cstring>

#include <gtest/gtest.h>

namespace kiln::train {
namespace {

data::Batch make_batch() {
  data::Batch b;
  data::Column image{.name = "image", .kind = data::FieldKind::kTensor, .dtype = data::DType::kFloat32,
                     .shape = {2, 3}};
  float px[6] = {0, 1, 2, 3, 4, 5};
  image.data.resize(sizeof px);
  std::memcpy(image.data.data(), px, sizeof px);
  data::Column label{.name = "label", .kind = data::FieldKind::kInt64, .shape = {2}};
  std::int64_t labels[2] = {7, -1};
  label.data.resize(sizeof labels);
  std::memcpy(label.data.data(), labels, sizeof labels);
  data::Column text{.name = "text", .kind = data::FieldKind::kBytes, .shape = {2}};
  b.columns = {image, label, text};
  return b;
}

TEST(BatchTensors, ColumnsBecomeTensorsOfTheirTypeAndShape) {
  data::Batch b = make_batch();
  auto image = column_tensor(b, "image");
  ASSERT_TRUE(image.is_ok()) << image.status().to_string();
  EXPECT_EQ(image->scalar_type(), torch::kFloat32);
  EXPECT_EQ(image->sizes().vec(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ((*image)[1][2].item<float>(), 5.0f);
  auto label = column_tensor(b, "label");
  ASSERT_TRUE(label.is_ok());
  EXPECT_EQ(label->scalar_type(), torch::kInt64);
  EXPECT_EQ((*label)[1].item<std::int64_t>(), -1);
  // The copy owns its memory; the view aliases the batch.
  b.columns[0].data[0] = 0xff;
  EXPECT_EQ((*image)[0][0].item<float>(), 0.0f);
  auto view = column_view(b, "image");
  ASSERT_TRUE(view.is_ok());
  EXPECT_EQ(view->data_ptr(), static_cast<void*>(b.columns[0].data.data()));
}

TEST(BatchTensors, BytesAndMissingColumnsAreNamed) {
  data::Batch b = make_batch();
  auto text = column_tensor(b, "text");
  EXPECT_EQ(text.status().code(), Code::kInvalidArgument);
  EXPECT_NE(text.status().message().find("'text'"), std::string::npos);
  EXPECT_EQ(column_tensor(b, "nope").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::train
