// LineForwarder: passes a child process's output on to stdout whole lines
// at a time, each with a prefix ("[rank 3] "), so the output of many
// processes interleaves by line, never mid-line. Used by the launchers.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace kiln {

class LineForwarder {
 public:
  explicit LineForwarder(std::string prefix, std::FILE* out = stdout)
      : prefix_(std::move(prefix)), out_(out) {}

  // Buffers `n` bytes and writes every line they complete.
  void append(const char* data, std::size_t n);
  // Writes what is left as a last line (the process ended without a newline).
  void flush();

 private:
  void emit(bool all);
  std::string prefix_;
  std::FILE* out_;
  std::string pending_;
};

}  // namespace kiln
