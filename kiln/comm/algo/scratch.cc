#include "kiln/comm/algo/group.h"

namespace kiln::comm::algo {

void* Scratch::get(std::size_t bytes, Slot slot) {
  std::vector<char>& buf = buf_[slot];
  if (buf.size() < bytes) buf.resize(bytes);
  return buf.data();
}

}  // namespace kiln::comm::algo
