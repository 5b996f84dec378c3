// StepWeights: a replica's view of one checkpoint step's weights, read from
// the node cache with one copy (file -> the model's parameters), and the
// verified stamp that lets a cache hit skip re-checksumming them.
//
// Note [Verified stamp]: the download verifies every entry's checksum
// (ckpt::verify_step_status) and then records, in <step dir>/verified.json,
// each file's size, mtime, ctime, inode and the xxh3 of its whole content.
// A later replica (a cache hit) stats the files: when all five match, the
// bytes are the ones verified at fetch and it maps the shards without
// reading them twice. ctime is the guard that matters: every write to a
// file, and every utimensat that would put its mtime back, moves ctime to
// now, and userspace cannot set it. When a file's stat differs, the replica
// hashes the whole file and compares with the stamp: equal (a file touched,
// not changed) re-stamps it; different is DataLoss naming the file, and the
// replica discards the cached step and downloads it again. What the stamp
// cannot see is a change below the filesystem (a bit flipped on the medium
// with no write): the cache trusts the disk for that, like any page cache.
// A step without a stamp (a cache written before stamps existed) is
// verified entry by entry once and then stamped.
//
// Note [One copy]: the shard files are mapped (MAP_POPULATE: one fault
// pass over page-cache pages) and each tensor is a view into the mapping;
// a replica's parameters view it in turn (Note [Weights served where they
// lie], torch_model.h), load_torch_model copies it into them. The previous
// path read every entry into a vector (a copy), checksummed it (a pass)
// and copied it into the parameter (a second copy). Entries the mapped
// path cannot view (zstd-compressed, or a tensor split over several saved
// ranks) go through ckpt::load_step, which reads and checks them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/state.h"

namespace kiln::serve {

inline constexpr const char* kVerifiedStampName = "verified.json";

// Records every file of a verified step directory (Note [Verified stamp]).
// Written to a temporary name and renamed, so a reader never sees half of it.
Status write_verified_stamp(const std::string& step_dir);

// How a step directory's content was found to be intact.
enum class StampCheck {
  kMatched,   // every file's stat matches its stamp: not read
  kRehashed,  // a stat differed but the content hashes as stamped
  kVerified,  // no stamp: every entry checksummed, then stamped
};

// Checks `step_dir` against its stamp. DataLoss names the file that changed
// (or, without a stamp, the entry that fails its checksum).
Result<StampCheck> check_verified_stamp(const std::string& step_dir);

// The weights a model is built for: their names, global shapes and bytes,
// known from the step's manifest before the weights themselves are fetched,
// checked or mapped (Note [Building the model while the weights come]).
struct StepShapes {
  std::string where;  // names the step in errors
  std::map<std::string, std::vector<std::int64_t>> tensors;
  std::size_t bytes = 0;  // of all of them

  const std::vector<std::int64_t>* find(const std::string& name) const {
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : &it->second;
  }
  // The tensors `keep` accepts of the manifest `text` (read from `where`);
  // DataLoss naming `where` if it does not parse.
  static Result<StepShapes> from_manifest(const std::string& text, const std::string& where,
                                          const ckpt::EntryFilter& keep);
};

// What a replica serves of a checkpoint: its parameters and buffers (not
// the optimizer's state, 2x the weights for AdamW).
bool is_weight_entry(std::string_view name);

struct WeightTensor {
  ckpt::TensorSpec spec;
  std::span<const std::byte> data;
};

class StepWeights {
 public:
  // Maps the step's shard files (after check_verified_stamp says they are
  // intact) and views the entries `keep` accepts. Falls back to
  // ckpt::load_step for what cannot be viewed (Note [One copy]).
  static Result<StepWeights> open(const std::string& step_dir, const ckpt::EntryFilter& keep);
  // Views the tensors of an already loaded state (which it keeps).
  static StepWeights from_loaded(ckpt::LoadedState state);

  StepWeights(StepWeights&&) noexcept;
  StepWeights& operator=(StepWeights&&) noexcept;
  ~StepWeights();

  const WeightTensor* find(const std::string& name) const;
  // The names, shapes and bytes of the tensors viewed.
  StepShapes shapes() const;
  // Bytes of the tensors viewed (what the model's parameters will hold).
  std::size_t bytes() const;
  std::int64_t step() const { return step_; }
  const std::string& dir() const { return dir_; }
  bool mapped() const { return !maps_.empty(); }

 private:
  StepWeights() = default;
  void unmap_all();
  struct Mapping {
    void* addr = nullptr;
    std::size_t bytes = 0;
  };
  std::int64_t step_ = -1;
  std::string dir_;
  std::map<std::string, WeightTensor> tensors_;
  std::vector<Mapping> maps_;
  std::unique_ptr<ckpt::LoadedState> loaded_;  // the fallback's storage
};

}  // namespace kiln::serve
