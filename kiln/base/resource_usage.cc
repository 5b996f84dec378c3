#include "kiln/base/resource_usage.h"

#include <sys/resource.h>

namespace kiln {
namespace {

ResourceUsage read_usage(int who) {
  rusage u{};
  ::getrusage(who, &u);
  auto secs = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return {secs(u.ru_utime) + secs(u.ru_stime), u.ru_minflt, u.ru_majflt, u.ru_nvcsw, u.ru_nivcsw};
}

}  // namespace

ResourceUsage ResourceUsage::of_process() { return read_usage(RUSAGE_SELF); }
ResourceUsage ResourceUsage::of_thread() { return read_usage(RUSAGE_THREAD); }

}  // namespace kiln
