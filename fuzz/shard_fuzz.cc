// A dataset shard file (docs/formats.md) as ShardReader maps it: the input is
// the file. Every record a reader hands out lies inside the file and passed
// its checksum; a corrupt file is an error, never a read out of bounds.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "kiln/base/check.h"
#include "kiln/data/shard.h"

namespace {

// One scratch file per fuzzing process, in memory (/dev/shm) where present.
const std::string& scratch_path() {
  static const std::string path = [] {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/kiln-shard-fuzz-" + std::to_string(getpid());
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  KILN_CHECK(f != nullptr);
  KILN_CHECK(std::fwrite(data, 1, size, f) == size);
  KILN_CHECK(std::fclose(f) == 0);
  auto reader = kiln::data::ShardReader::open(path, kiln::data::VerifyPolicy::kEveryRead);
  if (reader.is_ok()) {
    for (std::uint64_t i = 0; i < reader->records() && i < 4096; ++i) {
      auto rec = reader->record(i);
      if (!rec.is_ok()) continue;
      KILN_CHECK(rec->size() + 16 <= size);  // a header, the record's length and checksum
      // Touch every byte: a span past the mapping faults here.
      std::uint8_t x = 0;
      for (std::uint8_t b : *rec) x ^= b;
      (void)x;
    }
  }
  std::remove(path.c_str());
  return 0;
}
