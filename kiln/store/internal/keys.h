// Helpers every Store implementation shares: key validation, the integer
// encoding of add(), and the wording of errors. Not for use outside
// kiln/store/.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::store::internal {

// InvalidArgument "store OP: empty key" for an empty key.
Status validate_key(std::string_view op, std::string_view key);
Status validate_keys(std::string_view op, std::span<const std::string> keys);

// "'rank/3'" and "['a', 'b']"; bytes outside printable ASCII become \xNN.
std::string quote_key(std::string_view key);
std::string quote_keys(std::span<const std::string> keys);

// "250ms", "2s", "1.5s".
std::string format_duration(Clock::duration d);

// The value add(key, delta) leaves behind, given the current value (nullptr
// when the key is missing, which counts as 0). InvalidArgument if the current
// value is not a decimal integer or the sum overflows.
Result<std::int64_t> add_to_value(std::string_view key, const std::string* current,
                                  std::int64_t delta);

// DeadlineExceeded "deadline exceeded after 2s", plus ", still missing
// ['b']" when `missing` is given (wait names the keys it still lacks; get's
// one key is already in the caller's context).
Status deadline_error(Clock::duration waited, std::span<const std::string> missing = {});

}  // namespace kiln::store::internal
