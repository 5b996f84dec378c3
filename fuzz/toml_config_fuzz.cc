// Kiln's TOML configs: `kiln train`'s and `kiln plan`'s, from any text.
// Errors are fine; crashes, hangs and unbounded allocations are not.
#include <cstdint>
#include <string>

#include "kiln/plan/config.h"
#include "kiln/train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)kiln::train::parse_train_config_string(text, "fuzz.toml");
  (void)kiln::plan::parse_config_string(text, "fuzz.toml");
  return 0;
}
