#include "kiln/data/verified_shards.h"

namespace kiln::data {

FileIdentity FileIdentity::of(const struct stat& st) {
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
          static_cast<std::uint64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::size_t VerifiedShards::Hash::operator()(const FileIdentity& id) const {
  std::uint64_t h = id.ino;
  for (std::uint64_t v : {id.dev, id.size, static_cast<std::uint64_t>(id.mtime_ns)}) {
    h = (h ^ v) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
  }
  return static_cast<std::size_t>(h);
}

VerifiedShards& VerifiedShards::process() {
  static VerifiedShards* registry = new VerifiedShards();  // never destroyed: used by any thread
  return *registry;
}

bool VerifiedShards::contains(const FileIdentity& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return files_.count(id) > 0;
}

void VerifiedShards::add(const FileIdentity& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!files_.insert(id).second) return;
  order_.push_back(id);
  while (order_.size() > capacity_) {
    files_.erase(order_.front());
    order_.pop_front();
  }
}

void VerifiedShards::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  files_.clear();
  order_.clear();
}

}  // namespace kiln::data
