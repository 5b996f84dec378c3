#include "kiln/data/testing/test_dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "kiln/base/check.h"
#include "kiln/base/fd.h"
#include "kiln/data/dataset_writer.h"
#include "kiln/data/shard.h"

namespace kiln::data::testing {

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/kiln-data-XXXXXX";
  KILN_CHECK(::mkdtemp(pattern.data()) != nullptr);
  path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Schema test_schema() {
  return {{"id", FieldKind::kInt64, DType::kUInt8},
          {"payload", FieldKind::kBytes, DType::kUInt8},
          {"vec", FieldKind::kTensor, DType::kFloat32}};
}

Sample test_sample(std::uint64_t id) {
  std::vector<std::uint8_t> payload(id % 97 + 1);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(id * 31 + i);
  std::vector<std::uint8_t> vec(16);
  float f[4] = {static_cast<float>(id), 1.5f, -2.0f, static_cast<float>(id) / 3};
  std::memcpy(vec.data(), f, 16);
  return {FieldValue::int64(static_cast<std::int64_t>(id)), FieldValue::bytes(std::move(payload)),
          FieldValue::tensor(DType::kFloat32, {4}, std::move(vec))};
}

std::vector<std::vector<std::uint8_t>> write_test_shard(const std::string& path, int n) {
  std::vector<std::vector<std::uint8_t>> records;
  auto w = ShardWriter::create(path);
  KILN_CHECK(w.is_ok());
  for (int i = 0; i < n; ++i) {
    std::vector<std::uint8_t> rec;
    const Sample sample = test_sample(static_cast<std::uint64_t>(i));
    KILN_CHECK(encode_sample(test_schema(), sample, &rec).is_ok());
    KILN_CHECK(w->append(rec).is_ok());
    records.push_back(std::move(rec));
  }
  KILN_CHECK(w->finish().is_ok());
  return records;
}

DatasetIndex write_test_dataset(const std::string& dir, std::uint64_t n,
                                std::uint64_t shard_bytes) {
  auto w = DatasetWriter::create(dir, test_schema(), {.shard_bytes = shard_bytes});
  KILN_CHECK(w.is_ok());
  for (std::uint64_t i = 0; i < n; ++i) KILN_CHECK(w->add(test_sample(i)).is_ok());
  auto idx = w->finish();
  KILN_CHECK(idx.is_ok());
  return *idx;
}

Status FaultyStore::get_to_file(const std::string& key, const std::string& dst, Deadline deadline) {
  gets.fetch_add(1);
  KILN_RETURN_IF_ERROR(inner_->get_to_file(key, dst, deadline));
  if (corrupt_gets.fetch_sub(1) > 0) {
    Fd fd(::open(dst.c_str(), O_RDWR));
    KILN_CHECK(fd.valid());
    std::uint8_t b = 0;
    KILN_CHECK(::pread(fd.get(), &b, 1, 20) == 1);
    b ^= 0x40;
    KILN_CHECK(::pwrite(fd.get(), &b, 1, 20) == 1);
  } else {
    corrupt_gets.store(0);
  }
  return Status::ok();
}

}  // namespace kiln::data::testing
