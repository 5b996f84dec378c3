#include "kiln/data/convert/fashion_mnist.h"

#include <sys/stat.h>

#include <fmt/format.h>

#include "kiln/data/convert/idx_file.h"
#include "kiln/data/dataset_writer.h"

namespace kiln::data::convert {
namespace {

constexpr std::uint32_t kClasses = 10;

Result<DatasetIndex> convert_split(const std::string& images_path, const std::string& labels_path,
                                   const std::string& out, const FashionMnistOptions& options) {
  KILN_ASSIGN_OR_RETURN(IdxArray images, read_idx(images_path));
  KILN_ASSIGN_OR_RETURN(IdxArray labels, read_idx(labels_path));
  if (images.dims.size() != 3) {
    return invalid_argument(fmt::format("{}: expected rank 3 (count, rows, cols), got rank {}",
                                        images_path, images.dims.size()));
  }
  if (labels.dims.size() != 1 || labels.dims[0] != images.dims[0]) {
    return invalid_argument(fmt::format("{}: {} labels for {} images in {}", labels_path,
                                        labels.dims.empty() ? 0 : labels.dims[0], images.dims[0],
                                        images_path));
  }
  const std::uint32_t rows = images.dims[1], cols = images.dims[2];
  const std::size_t pixels = std::size_t{rows} * cols;
  Schema schema{{"image", FieldKind::kTensor, DType::kUInt8}, {"label", FieldKind::kInt64}};
  KILN_ASSIGN_OR_RETURN(DatasetWriter writer,
                        DatasetWriter::create(out, schema, {.shard_bytes = options.shard_bytes}));
  for (std::uint32_t i = 0; i < images.dims[0]; ++i) {
    if (labels.data[i] >= kClasses) {
      return invalid_argument(fmt::format("{}: label {} of sample {} is outside 0..{}", labels_path,
                                          labels.data[i], i, kClasses - 1));
    }
    const std::uint8_t* px = images.data.data() + i * pixels;
    Sample s{FieldValue::tensor(DType::kUInt8, {1, std::int64_t{rows}, std::int64_t{cols}},
                                       {px, px + pixels}),
             FieldValue::int64(labels.data[i])};
    KILN_RETURN_IF_ERROR(writer.add(s).with_context(fmt::format("{} sample {}", out, i)));
  }
  return writer.finish();
}

}  // namespace

Result<ConvertedSplits> convert_fashion_mnist(const std::string& out_dir,
                                             const FashionMnistOptions& options) {
  auto source = [&](std::string_view name) {
    return fmt::format("{}/{}-ubyte.gz", options.source_dir, name);
  };
  struct stat st {};
  if (::stat(source("train-images-idx3").c_str(), &st) != 0) {
    return not_found(fmt::format("Fashion-MNIST not found: {} is missing (install Debian's "
                                 "dataset-fashion-mnist package, or pass the directory holding "
                                 "the IDX files)", source("train-images-idx3")));
  }
  ConvertedSplits out;
  KILN_ASSIGN_OR_RETURN(out.train, convert_split(source("train-images-idx3"),
                                                 source("train-labels-idx1"), out_dir + "/train",
                                                 options));
  KILN_ASSIGN_OR_RETURN(out.test, convert_split(source("t10k-images-idx3"),
                                                source("t10k-labels-idx1"), out_dir + "/test",
                                                options));
  return out;
}

}  // namespace kiln::data::convert
