// `kiln data convert fashion-mnist OUT_DIR` and `kiln data convert text
// OUT_DIR FILE...`: public datasets into Kiln's shard format (docs/formats.md).
#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cli/command.h"
#include "kiln/data/convert/fashion_mnist.h"
#include "kiln/data/convert/text_corpus.h"

namespace kiln::cli {
namespace {

void print_splits(const std::string& out, const data::convert::ConvertedSplits& s) {
  auto bytes = [](const data::DatasetIndex& index) {
    std::uint64_t b = 0;
    for (const auto& sh : index.shards) b += sh.bytes;
    return b;
  };
  std::printf("%s/train: %llu samples in %zu shards (%.1f MB)\n", out.c_str(),
              static_cast<unsigned long long>(s.train.num_samples), s.train.shards.size(),
              bytes(s.train) / 1e6);
  std::printf("%s/test:  %llu samples in %zu shards (%.1f MB)\n", out.c_str(),
              static_cast<unsigned long long>(s.test.num_samples), s.test.shards.size(),
              bytes(s.test) / 1e6);
}

struct FashionArgs {
  std::string out;
  data::convert::FashionMnistOptions options;
  double shard_mib = 16;
};

struct TextArgs {
  std::string out;
  std::vector<std::string> files;
  data::convert::TextOptions options;
  double shard_mib = 64;
};

std::uint64_t mib(double m) { return static_cast<std::uint64_t>(m * (1 << 20)); }

const CommandRegistration kRegister("data convert", [](CLI::App& parent) {
  auto fa = std::make_shared<FashionArgs>();
  auto* f = parent.add_subcommand(
      "fashion-mnist", "Fashion-MNIST IDX files (Debian's dataset-fashion-mnist) -> OUT/train, OUT/test");
  f->add_option("out", fa->out, "Output directory")->required();
  f->add_option("--source", fa->options.source_dir, "Directory of the IDX .gz files")
      ->capture_default_str();
  f->add_option("--shard-mib", fa->shard_mib, "Target shard size, MiB")->capture_default_str();
  f->callback(run_status([fa]() -> Status {
    fa->options.shard_bytes = mib(fa->shard_mib);
    KILN_ASSIGN_OR_RETURN(auto splits, data::convert::convert_fashion_mnist(fa->out, fa->options));
    print_splits(fa->out, splits);
    return Status::ok();
  }));

  auto ta = std::make_shared<TextArgs>();
  auto* t = parent.add_subcommand(
      "text", "Plain text -> token windows of --seq-len + 1 (OUT/train, OUT/test)");
  t->add_option("out", ta->out, "Output directory")->required();
  t->add_option("files", ta->files, "Text files, concatenated in this order")->required();
  t->add_option("--seq-len", ta->options.seq_len, "Tokens per training sequence")
      ->capture_default_str();
  t->add_option("--eval-fraction", ta->options.eval_fraction,
                "Fraction of the windows (the corpus's tail) held out as OUT/test")
      ->capture_default_str();
  t->add_option("--tokenizer", ta->options.tokenizer, "Tokenizer (bytes)")->capture_default_str();
  t->add_option("--shard-mib", ta->shard_mib, "Target shard size, MiB")->capture_default_str();
  t->callback(run_status([ta]() -> Status {
    ta->options.shard_bytes = mib(ta->shard_mib);
    KILN_ASSIGN_OR_RETURN(auto splits, data::convert::convert_text(ta->out, ta->files, ta->options));
    print_splits(ta->out, splits);
    return Status::ok();
  }));
});

}  // namespace
}  // namespace kiln::cli
