// Text into HTML and SVG documents (kiln diagnose --html, kiln plan --svg).
#pragma once

#include <string>
#include <string_view>

namespace kiln {

// `s` with &, <, > and " as entities: safe inside element text and
// double-quoted attribute values.
std::string markup_escape(std::string_view s);

}  // namespace kiln
