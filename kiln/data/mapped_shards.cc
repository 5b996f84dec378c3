#include "kiln/data/mapped_shards.h"

#include <sys/stat.h>

#include <iterator>
#include <utility>

namespace kiln::data {

MappedShards::~MappedShards() = default;

void MappedShards::unpark(const std::string& path, List* out) {
  auto it = by_path_.find(path);
  if (it == by_path_.end()) return;
  bytes_ -= (*it->second)->mapped_bytes();
  out->splice(out->end(), parked_, it->second);
  by_path_.erase(it);
}

std::unique_ptr<ShardReader> MappedShards::take(const std::string& path, VerifyPolicy verify) {
  List found;  // declared before the lock: a stale one is unmapped after the unlock
  {
    std::lock_guard<std::mutex> lock(mu_);
    unpark(path, &found);
  }
  if (!found.empty()) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && FileIdentity::of(st) == found.front()->identity()) {
      found.front()->set_policy(verify);
      stats_.reused.fetch_add(1);
      return std::move(found.front());
    }
    stats_.stale.fetch_add(1);
  }
  stats_.missed.fetch_add(1);
  return nullptr;
}

void MappedShards::put(std::unique_ptr<ShardReader> reader) {
  if (reader == nullptr) return;
  List victims;  // unmapped after the unlock
  {
    std::lock_guard<std::mutex> lock(mu_);
    unpark(reader->path(), &victims);
    bytes_ += reader->mapped_bytes();
    parked_.push_back(std::move(reader));
    by_path_[parked_.back()->path()] = std::prev(parked_.end());
    while (bytes_ > max_bytes_ && !parked_.empty()) unpark(parked_.front()->path(), &victims);
  }
  stats_.dropped.fetch_add(victims.size());
}

void MappedShards::forget(const std::string& path) {
  List victim;  // unmapped after the unlock
  {
    std::lock_guard<std::mutex> lock(mu_);
    unpark(path, &victim);
  }
  stats_.dropped.fetch_add(victim.size());
}

std::uint64_t MappedShards::parked_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

std::size_t MappedShards::parked() const {
  std::lock_guard<std::mutex> lock(mu_);
  return parked_.size();
}

}  // namespace kiln::data
