// Knobs: environment variables that tune Kiln, each declared once where it is
// used (name, default, doc) and listed by `kiln env`.
//
//   static const kiln::Knob<double> kCommTimeout{
//       "KILN_COMM_TIMEOUT", 300.0, "default timeout of a collective, seconds"};
//   double t = kCommTimeout.get();
//
// get() reads the environment on every call (cheap, and tests may change it);
// a malformed value logs a warning and yields the default.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct KnobInfo {
  std::string name;
  std::string default_value;
  std::string doc;
};

// All knobs declared so far (static registration order).
std::vector<KnobInfo> registered_knobs();

namespace internal {
void register_knob(KnobInfo info);
std::string knob_default_string(const std::string& v);
std::string knob_default_string(std::int64_t v);
std::string knob_default_string(double v);
std::string knob_default_string(bool v);
bool parse_knob(std::string_view name, std::string_view text, std::string* out);
bool parse_knob(std::string_view name, std::string_view text, std::int64_t* out);
bool parse_knob(std::string_view name, std::string_view text, double* out);
bool parse_knob(std::string_view name, std::string_view text, bool* out);
}  // namespace internal

template <typename T>
class Knob {
 public:
  Knob(const char* name, T default_value, const char* doc)
      : name_(name), default_(std::move(default_value)) {
    internal::register_knob({name, internal::knob_default_string(default_), doc});
  }

  T get() const;
  const char* name() const { return name_; }
  const T& default_value() const { return default_; }

 private:
  const char* name_;
  T default_;
};

const char* getenv_or_null(const char* name);

template <typename T>
T Knob<T>::get() const {
  const char* text = getenv_or_null(name_);
  if (text == nullptr || *text == '\0') return default_;
  T value;
  if (!internal::parse_knob(name_, text, &value)) return default_;
  return value;
}

}  // namespace kiln
