// `kiln data push DIR s3://BUCKET/PREFIX`: uploads a local dataset, shards
// first and index.json last, so a reader never sees an index without its
// shards. Any URL open_object_store takes works as the destination.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "kiln/data/dataset_push.h"
#include "kiln/objstore/object_store.h"

namespace kiln::cli {
namespace {

struct PushArgs {
  std::string dir;
  std::string url;
  double timeout_s = 3600;
};

Status push(const PushArgs& a) {
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(a.url));
  auto t0 = std::chrono::steady_clock::now();
  KILN_ASSIGN_OR_RETURN(
      data::PushStats stats,
      data::push_dataset(a.dir, store.get(), Deadline::after_seconds(a.timeout_s)));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("pushed %llu shards (%.1f MB) and index.json to %s in %.1f s (%.1f MB/s)\n",
              static_cast<unsigned long long>(stats.shards), stats.bytes / 1e6,
              store->describe().c_str(), s, s > 0 ? stats.bytes / 1e6 / s : 0.0);
  return Status::ok();
}

const CommandRegistration kRegister("data", [](CLI::App& parent) {
  auto a = std::make_shared<PushArgs>();
  auto* cmd = parent.add_subcommand(
      "push", "Upload a dataset directory to s3://BUCKET/PREFIX (index.json last)");
  cmd->add_option("dir", a->dir, "Local dataset directory (holds index.json)")->required();
  cmd->add_option("url", a->url, "Destination, e.g. s3://bucket/datasets/mnist/train")->required();
  cmd->add_option("--timeout", a->timeout_s, "Seconds for the whole upload")->capture_default_str();
  cmd->callback(run_status([a] { return push(*a); }));
});

}  // namespace
}  // namespace kiln::cli
