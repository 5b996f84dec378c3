#include "kiln/train/train_data.h"

#include <sys/stat.h>

#include <fmt/format.h>

#include "kiln/base/logging.h"
#include "kiln/base/rank_cores.h"
#include "kiln/data/convert/fashion_mnist.h"
#include "kiln/data/convert/text_corpus.h"

namespace kiln::train {
namespace {

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

int threads_per_rank(const TrainLoopConfig& train) {
  return train.threads > 0 ? train.threads : intra_op_threads_here();
}

// Converts the dataset on first use (rank 0; the others wait at a barrier).
Status prepare_data(const DataConfig& c, comm::Communicator& comm) {
  Status s;
  if (comm.rank() == 0 && !file_exists(c.dir + "/train/index.json")) {
    if (c.prepare.empty()) {
      s = not_found(fmt::format("dataset {}: no train/index.json, and data.prepare is not set to "
                                "convert one", c.dir));
    } else {
      log()->info("preparing {} dataset in {} (first use)", c.prepare, c.dir);
      if (c.prepare == "fashion-mnist") {
        s = data::convert::convert_fashion_mnist(c.dir).status();
      } else {
        s = data::convert::convert_text(c.dir, c.sources, {}).status();
      }
      s = s.with_context("preparing data.dir " + c.dir);
    }
  }
  // Everyone learns whether rank 0 succeeded, so nobody waits on a failure.
  std::int32_t ok = s.is_ok() ? 1 : 0;
  KILN_RETURN_IF_ERROR(comm.broadcast(&ok, 1, comm::DataType::kInt32, 0)->wait(kCollectiveTimeout));
  if (!ok && s.is_ok()) return aborted("rank 0 could not prepare the dataset (see its log)");
  return s;
}


Result<Split> open_split(const DataConfig& c, const std::string& name) {
  Split s;
  KILN_ASSIGN_OR_RETURN(s.store, objstore::open_object_store(c.dir));
  KILN_ASSIGN_OR_RETURN(std::string text,
                        s.store->get(name + "/" + data::kIndexFile, Deadline::after_seconds(60)));
  KILN_ASSIGN_OR_RETURN(s.index, data::parse_index(text, c.dir + "/" + name + "/index.json"));
  s.cache = std::make_unique<data::ShardCache>(
      s.store.get(), name,
      data::ShardCacheOptions{.dir = c.cache_dir, .capacity_bytes = c.cache_bytes});
  return s;
}


// Whether any rank was asked to stop (kiln run's SIGTERM): every rank must
// leave the loop after the same step, so the question is a collective.
Result<bool> any_rank_asked_to_stop(comm::Communicator& comm, bool asked) {
  std::int32_t flag = asked ? 1 : 0;
  KILN_RETURN_IF_ERROR(comm.allreduce(&flag, 1, comm::DataType::kInt32, comm::ReduceOp::kMax)
                           ->wait(kCollectiveTimeout));
  return flag != 0;
}
}  // namespace kiln::train
