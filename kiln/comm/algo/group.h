// What every algorithm sees: a group of ranks reached through pairs, a
// deadline, a name for errors, and reusable scratch memory. Algorithms never
// see sockets or shared memory (style principle 1).
#pragma once

#include <cstddef>
#include <string>
#include <span>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/comm/reduce.h"
#include "kiln/comm/transport/context.h"

namespace kiln::comm::algo {

// Grow-only buffer, reused across operations: fresh pages cost a fault each
// on first touch, which would dominate large collectives.
class Scratch {
 public:
  // Separate buffers: kWide holds the float32 copy of a 16-bit float
  // collective (Note [16-bit floats accumulate in float32]) while the
  // algorithm run on it uses kAlgorithm.
  enum Slot { kAlgorithm = 0, kWide = 1 };
  void* get(std::size_t bytes, Slot slot = kAlgorithm);

 private:
  std::vector<char> buf_[2];
};

struct Group {
  transport::Context* ctx;
  std::span<const int> ranks;  // global ranks, in group order (not owned)
  int me;                      // this rank's index in `ranks`

  int size() const { return static_cast<int>(ranks.size()); }
  transport::Pair& pair(int index) const { return ctx->pair(ranks[index]); }
};

// One collective call's environment.
struct Env {
  Group group;
  Deadline deadline;
  const std::string* what;  // e.g. "allreduce #12 (float32 x 1024, sum)"
  Scratch* scratch;

  // Posts nothing; waits for the given requests under this call's deadline.
  Status wait(std::initializer_list<transport::Request*> reqs) const {
    return group.ctx->wait(reqs, deadline, *what);
  }
  Status wait(std::span<transport::Request* const> reqs) const {
    return group.ctx->wait(reqs, deadline, *what);
  }
};

// Splits `count` elements into n near-equal, element-aligned parts.
struct Split {
  Split(std::size_t count, int n) : count(count), n(n) {}
  std::size_t count;
  int n;
  std::size_t offset(int i) const {
    std::size_t base = count / n, extra = count % n;
    return i * base + std::min<std::size_t>(i, extra);
  }
  std::size_t size(int i) const { return count / n + (static_cast<std::size_t>(i) < count % n ? 1 : 0); }
};

}  // namespace kiln::comm::algo
