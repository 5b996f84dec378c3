#include "kiln/comm/algo/group.h"

namespace kiln::comm::algo {

void* Scratch::get(std::size_t bytes) {
  if (buf_.size() < bytes) buf_.resize(bytes);
  return buf_.data();
}

}  // namespace kiln::comm::algo
