#include "kiln/ckpt/testing/test_state.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "kiln/base/check.h"

namespace kiln::ckpt::testing {

float test_value(int which, std::int64_t step, std::int64_t row, std::int64_t col) {
  return static_cast<float>(which * 1000003 + step * 7919 + row * 131 + col) * 0.5f;
}

namespace {

std::vector<float> fill(int which, std::int64_t step, RowRange r, std::int64_t cols) {
  std::vector<float> v(static_cast<std::size_t>(r.count * cols));
  for (std::int64_t i = 0; i < r.count; ++i) {
    for (std::int64_t c = 0; c < cols; ++c)
      v[i * cols + c] = test_value(which, step, r.offset + i, c);
  }
  return v;
}

std::string rng_blob(std::int64_t step, int rank) {
  return fmt::format("rng of rank {} at step {}", rank, step);
}

}  // namespace

TestState::TestState(std::int64_t step_, int rank_, int world_, std::int64_t rows0_,
                     std::int64_t rows1_)
    : step(step_), rows0(rows0_), rows1(rows1_), rank(rank_), world(world_) {
  w0 = fill(0, step, even_rows(rows0, rank, world), 7);
  w1 = fill(1, step, even_rows(rows1, rank, world), 3);
  bias = fill(2, step, RowRange{0, 5}, 1);
  rng = rng_blob(step, rank);
}

StateView TestState::view() const {
  StateView v;
  auto r0 = even_rows(rows0, rank, world), r1 = even_rows(rows1, rank, world);
  KILN_CHECK(
      v.add_tensor("w0", comm::DataType::kFloat32, {rows0, 7}, r0.offset, r0.count, w0.data())
          .is_ok());
  KILN_CHECK(
      v.add_tensor("w1", comm::DataType::kFloat32, {rows1, 3}, r1.offset, r1.count, w1.data())
          .is_ok());
  KILN_CHECK(v.add_replicated("bias", comm::DataType::kFloat32, {5}, bias.data()).is_ok());
  KILN_CHECK(v.add_blob("rng", rng.data(), rng.size()).is_ok());
  KILN_CHECK(v.add_blob("step", &step, sizeof step).is_ok());
  return v;
}

std::string check_loaded(const LoadedState& s, std::int64_t step, int rank, int world,
                         std::int64_t rows0, std::int64_t rows1) {
  if (s.step != step) return fmt::format("step {} != {}", s.step, step);
  struct T {
    const char* name;
    int which;
    std::int64_t rows, cols;
  } tensors[] = {{"w0", 0, rows0, 7}, {"w1", 1, rows1, 3}, {"bias", 2, 5, 1}};
  for (const auto& t : tensors) {
    const LoadedEntry* e = s.find(t.name);
    if (e == nullptr) return fmt::format("no entry '{}'", t.name);
    RowRange want = even_rows(t.rows, rank, world);
    if (e->spec.row_offset != want.offset || e->spec.rows != want.count) {
      return fmt::format("'{}' rows [{}+{}) != [{}+{})", t.name, e->spec.row_offset, e->spec.rows,
                         want.offset, want.count);
    }
    auto expect = fill(t.which, step, want, t.cols);
    if (e->data.size() != expect.size() * sizeof(float) ||
        std::memcmp(e->data.data(), expect.data(), e->data.size()) != 0) {
      return fmt::format("'{}' bytes differ", t.name);
    }
  }
  const LoadedEntry* rng = s.find("rng");
  std::string want_rng = rng_blob(step, rank % s.saved_world_size);
  if (rng == nullptr ||
      std::string(reinterpret_cast<const char*>(rng->data.data()), rng->data.size()) != want_rng) {
    return "blob 'rng' differs";
  }
  const LoadedEntry* st = s.find("step");
  std::int64_t saved_step = -1;
  if (st == nullptr || st->data.size() != sizeof saved_step) return "blob 'step' missing";
  std::memcpy(&saved_step, st->data.data(), sizeof saved_step);
  if (saved_step != step) return "blob 'step' differs";
  return "";
}

std::vector<float> whole_rows(std::int64_t total, float salt) {
  std::vector<float> v;
  for (std::int64_t i = 0; i < total; ++i) {
    v.insert(v.end(),
             {static_cast<float>(i) + salt, static_cast<float>(i) + 0.5f, -static_cast<float>(i)});
  }
  return v;
}

}  // namespace kiln::ckpt::testing
