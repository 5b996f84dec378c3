// `kiln data inspect DIR|URL [--verify]`: a dataset's summary from its
// index.json; --verify re-hashes every shard and fails (exit 3, DataLoss)
// naming each bad one. URLs: file://DIR, s3://BUCKET/PREFIX (AWS_* variables).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/command.h"
#include "kiln/data/dataset_push.h"
#include "kiln/data/dataset_verify.h"
#include "kiln/objstore/object_store.h"

namespace kiln::cli {
namespace {

struct InspectArgs {
  std::string where;
  bool verify = false;
  double timeout_s = 600;
};

std::string describe_schema(const data::Schema& schema) {
  std::string s;
  for (const auto& f : schema) {
    if (!s.empty()) s += ", ";
    s += fmt::format("{} {}", f.name, data::kind_name(f.kind));
    if (f.kind == data::FieldKind::kTensor) s += fmt::format(" {}", data::dtype_name(f.dtype));
  }
  return s;
}

// A plain path or file:// URL: the directory, for hashing in place.
std::string local_dir_of(const std::string& where) {
  if (where.rfind("file://", 0) == 0) return where.substr(7);
  return where.find("://") == std::string::npos ? where : "";
}

Status inspect(const InspectArgs& a) {
  Deadline deadline = Deadline::after_seconds(a.timeout_s);
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(a.where));
  KILN_ASSIGN_OR_RETURN(data::DatasetIndex index, data::read_index(store.get(), deadline));
  std::uint64_t total = 0, smallest = UINT64_MAX, largest = 0;
  for (const auto& sh : index.shards) {
    total += sh.bytes;
    smallest = std::min(smallest, sh.bytes);
    largest = std::max(largest, sh.bytes);
  }
  if (index.shards.empty()) smallest = 0;
  std::printf("dataset  %s\n", store->describe().c_str());
  std::printf("format   v%d\n", index.version);
  std::printf("samples  %llu\n", static_cast<unsigned long long>(index.num_samples));
  std::printf("shards   %zu (%.1f MB; smallest %.1f MB, largest %.1f MB)\n", index.shards.size(),
              total / 1e6, smallest / 1e6, largest / 1e6);
  std::printf("schema   %s\n", describe_schema(index.schema).c_str());
  if (!a.verify) return Status::ok();

  data::VerifyOptions vo;
  vo.local_dir = local_dir_of(a.where);
  std::error_code ec;
  vo.scratch_dir =
      (std::filesystem::temp_directory_path(ec) / fmt::format("kiln-verify-{}", ::getpid()))
          .string();
  auto verdicts = data::verify_dataset(store.get(), index, vo, deadline);
  if (vo.local_dir.empty()) std::filesystem::remove_all(vo.scratch_dir, ec);
  if (!verdicts) return verdicts.status();
  std::string bad;
  int n_bad = 0;
  for (const auto& v : *verdicts) {
    if (v.ok) continue;
    ++n_bad;
    std::printf("BAD      %s: %s\n", v.file.c_str(), v.problem.c_str());
    bad += fmt::format("{}{} ({})", bad.empty() ? "" : ", ", v.file, v.problem);
  }
  if (n_bad > 0) {
    return data_loss(fmt::format("{}: {} of {} shards do not match index.json: {}",
                                 store->describe(), n_bad, verdicts->size(), bad));
  }
  std::printf("verified %zu shards: all match index.json\n", verdicts->size());
  return Status::ok();
}

const CommandRegistration kRegister("data", [](CLI::App& parent) {
  auto a = std::make_shared<InspectArgs>();
  auto* cmd = parent.add_subcommand("inspect",
                                    "Summary of a dataset (DIR, file://DIR or s3://BUCKET/PREFIX)");
  cmd->add_option("where", a->where, "Dataset directory or URL")->required();
  cmd->add_flag("--verify", a->verify, "Re-hash every shard; exit 3 naming any that mismatch");
  cmd->add_option("--timeout", a->timeout_s, "Seconds for the whole command")
      ->capture_default_str();
  cmd->callback(run_status([a] { return inspect(*a); }));
});

}  // namespace
}  // namespace kiln::cli
