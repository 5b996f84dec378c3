// TempDir: a fresh scratch directory for a test, removed with everything in
// it when the object dies.
#pragma once

#include <string>

namespace kiln::testing {

class TempDir {
 public:
  // Under $TMPDIR (else /tmp), named "<prefix>XXXXXX". CHECK-fails if it
  // cannot be created: a test cannot run without it.
  explicit TempDir(const std::string& prefix = "kiln-test-");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace kiln::testing
