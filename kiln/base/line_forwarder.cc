#include "kiln/base/line_forwarder.h"

namespace kiln {

void LineForwarder::append(const char* data, std::size_t n) {
  pending_.append(data, n);
  emit(false);
}

void LineForwarder::flush() { emit(true); }

void LineForwarder::emit(bool all) {
  std::size_t start = 0, nl;
  while ((nl = pending_.find('\n', start)) != std::string::npos) {
    std::fprintf(out_, "%s%.*s\n", prefix_.c_str(), static_cast<int>(nl - start),
                 pending_.data() + start);
    start = nl + 1;
  }
  pending_.erase(0, start);
  if (all && !pending_.empty()) {
    std::fprintf(out_, "%s%s\n", prefix_.c_str(), pending_.c_str());
    pending_.clear();
  }
  std::fflush(out_);
}

}  // namespace kiln
