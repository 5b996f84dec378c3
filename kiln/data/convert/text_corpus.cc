#include "kiln/data/convert/text_corpus.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "kiln/data/dataset_writer.h"

namespace kiln::data::convert {
namespace {

Result<std::vector<std::int32_t>> tokenize_files(const std::vector<std::string>& files) {
  std::vector<std::int32_t> tokens;
  for (const std::string& path : files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return errno_status("open text file " + path, errno ? errno : ENOENT);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return errno_status("read text file " + path, errno ? errno : EIO);
    for (char c : bytes) tokens.push_back(static_cast<std::uint8_t>(c));
  }
  return tokens;
}

Result<DatasetIndex> write_windows(const std::string& out, const std::vector<std::int32_t>& tokens,
                                   std::uint64_t first, std::uint64_t count,
                                   const TextOptions& options) {
  Schema schema{{"tokens", FieldKind::kTensor, DType::kInt32}};
  KILN_ASSIGN_OR_RETURN(DatasetWriter writer,
                        DatasetWriter::create(out, schema, {.shard_bytes = options.shard_bytes}));
  const std::size_t window = options.seq_len + 1;
  for (std::uint64_t w = first; w < first + count; ++w) {
    const std::int32_t* begin = tokens.data() + w * options.seq_len;
    std::vector<std::uint8_t> data(window * sizeof(std::int32_t));
    std::memcpy(data.data(), begin, data.size());
    Sample s{FieldValue::tensor(DType::kInt32, {static_cast<std::int64_t>(window)}, std::move(data))};
    KILN_RETURN_IF_ERROR(writer.add(s));
  }
  return writer.finish();
}

}  // namespace

Result<ConvertedSplits> convert_text(const std::string& out_dir,
                                     const std::vector<std::string>& files,
                                     const TextOptions& options) {
  if (options.tokenizer != "bytes") {
    return invalid_argument(fmt::format("tokenizer '{}' is unknown (known: bytes)",
                                        options.tokenizer));
  }
  if (options.seq_len == 0) return invalid_argument("seq_len must be at least 1");
  if (!(options.eval_fraction >= 0 && options.eval_fraction < 1)) {
    return invalid_argument(fmt::format("eval fraction {} is outside [0, 1)", options.eval_fraction));
  }
  if (files.empty()) return invalid_argument("no text files given");
  KILN_ASSIGN_OR_RETURN(std::vector<std::int32_t> tokens, tokenize_files(files));
  // Window w covers tokens [w*L, w*L + L]; the last must fit.
  std::uint64_t windows = tokens.size() > options.seq_len ? (tokens.size() - 1) / options.seq_len : 0;
  auto eval = static_cast<std::uint64_t>(static_cast<double>(windows) * options.eval_fraction);
  if (windows - eval == 0) {
    return invalid_argument(fmt::format("the corpus ({} tokens from {} files) is too short for one "
                                        "training window of {} tokens", tokens.size(), files.size(),
                                        options.seq_len + 1));
  }
  ConvertedSplits out;
  KILN_ASSIGN_OR_RETURN(out.train, write_windows(out_dir + "/train", tokens, 0, windows - eval, options));
  KILN_ASSIGN_OR_RETURN(out.test, write_windows(out_dir + "/test", tokens, windows - eval, eval, options));
  return out;
}

}  // namespace kiln::data::convert
