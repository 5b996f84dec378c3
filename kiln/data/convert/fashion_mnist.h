// Fashion-MNIST (Debian's dataset-fashion-mnist) as Kiln datasets:
// OUT/train (60000 samples) and OUT/test (10000), each sample
//   image: tensor uint8 [1, 28, 28]  (channels first, raw pixel values)
//   label: int64 in 0..9
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/status.h"
#include "kiln/data/index.h"

namespace kiln::data::convert {

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

struct FashionMnistOptions {
  std::string source_dir = kFashionMnistDir;  // holds {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  std::uint64_t shard_bytes = 16ull << 20;    // ~3 shards for train: shard-level shuffle has work to do
};

struct ConvertedSplits {
  DatasetIndex train, test;
};

// Writes OUT/train and OUT/test. Errors name the source file: NotFound with
// the package to install when the IDX files are missing, InvalidArgument for
// images and labels that disagree (count, shape, a label outside 0..9).
Result<ConvertedSplits> convert_fashion_mnist(const std::string& out_dir,
                                             const FashionMnistOptions& options = {});

}  // namespace kiln::data::convert
