#include "kiln/base/logging.h"

#include <cstdlib>
#include <mutex>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace kiln {
namespace {

std::shared_ptr<spdlog::logger> make_logger() {
  auto logger = spdlog::stderr_color_mt("kiln");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e kiln %^%l%$: %v");
  const char* level = std::getenv("KILN_LOG_LEVEL");
  logger->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::info);
  logger->flush_on(spdlog::level::warn);
  return logger;
}

}  // namespace

spdlog::logger* log() {
  static std::shared_ptr<spdlog::logger> logger = make_logger();
  return logger.get();
}

void set_log_rank(int rank) {
  log()->set_pattern("%Y-%m-%dT%H:%M:%S.%e kiln[rank " + std::to_string(rank) +
                     "] %^%l%$: %v");
}

}  // namespace kiln
