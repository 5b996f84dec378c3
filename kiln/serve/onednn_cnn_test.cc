// OnednnCnn against plain loops (an oracle that shares nothing with
// oneDNN), on a small CNN whose channel counts are not multiples of
// oneDNN's 8-wide blocks. The make demo CNN against the module's forward:
// torch_model_test.cc.
#include "kiln/serve/onednn_cnn.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace kiln::serve {
namespace {

struct Tiny {
  static constexpr std::int64_t kSide = 8, kC1 = 3, kC2 = 5, kHidden = 7, kClasses = 3;
  std::vector<float> conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b;

  Tiny() {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    auto fill = [&](std::vector<float>& v, std::int64_t n) {
      v.resize(static_cast<std::size_t>(n));
      for (float& x : v) x = u(gen);
    };
    fill(conv1_w, kC1 * 9), fill(conv1_b, kC1), fill(conv2_w, kC2 * kC1 * 9), fill(conv2_b, kC2);
    fill(fc1_w, kHidden * kC2 * 4), fill(fc1_b, kHidden), fill(fc2_w, kClasses * kHidden);
    fill(fc2_b, kClasses);
  }

  CnnParameters parameters() const {
    return {.conv1_w = conv1_w,
            .conv1_b = conv1_b,
            .conv2_w = conv2_w,
            .conv2_b = conv2_b,
            .fc1_w = fc1_w,
            .fc1_b = fc1_b,
            .fc2_w = fc2_w,
            .fc2_b = fc2_b,
            .conv1_channels = kC1,
            .conv2_channels = kC2,
            .hidden = kHidden,
            .classes = kClasses,
            .side = kSide,
            .pixel_mean = 0.25f,
            .pixel_std = 0.5f};
  }
};

// [c][side][side] -> 3x3 convolution, padding 1, + bias, relu, 2x2 max.
std::vector<float> conv_relu_pool(const std::vector<float>& x, std::int64_t in_c, std::int64_t side,
                                  const std::vector<float>& w, const std::vector<float>& b,
                                  std::int64_t out_c) {
  std::vector<float> y(static_cast<std::size_t>(out_c * side * side));
  for (std::int64_t o = 0; o < out_c; ++o) {
    for (std::int64_t r = 0; r < side; ++r) {
      for (std::int64_t c = 0; c < side; ++c) {
        double acc = b[o];
        for (std::int64_t i = 0; i < in_c; ++i) {
          for (std::int64_t dr = -1; dr <= 1; ++dr) {
            for (std::int64_t dc = -1; dc <= 1; ++dc) {
              if (r + dr < 0 || r + dr >= side || c + dc < 0 || c + dc >= side) continue;
              acc += double{w[((o * in_c + i) * 3 + dr + 1) * 3 + dc + 1]} *
                     x[(i * side + r + dr) * side + c + dc];
            }
          }
        }
        y[(o * side + r) * side + c] = std::max(0.0f, static_cast<float>(acc));
      }
    }
  }
  const std::int64_t half = side / 2;
  std::vector<float> p(static_cast<std::size_t>(out_c * half * half));
  for (std::int64_t o = 0; o < out_c; ++o) {
    for (std::int64_t r = 0; r < half; ++r) {
      for (std::int64_t c = 0; c < half; ++c) {
        auto at = [&](std::int64_t rr, std::int64_t cc) { return y[(o * side + rr) * side + cc]; };
        p[(o * half + r) * half + c] = std::max({at(2 * r, 2 * c), at(2 * r, 2 * c + 1),
                                                 at(2 * r + 1, 2 * c), at(2 * r + 1, 2 * c + 1)});
      }
    }
  }
  return p;
}

std::vector<float> dense(const std::vector<float>& x, const std::vector<float>& w,
                         const std::vector<float>& b, bool relu) {
  std::vector<float> y(b.size());
  for (std::size_t o = 0; o < b.size(); ++o) {
    double acc = b[o];
    for (std::size_t i = 0; i < x.size(); ++i) acc += double{w[o * x.size() + i]} * x[i];
    y[o] = relu ? std::max(0.0f, static_cast<float>(acc)) : static_cast<float>(acc);
  }
  return y;
}

std::vector<float> reference_logits(const Tiny& t, const Input& in) {
  std::vector<float> x;
  for (float v : in.image) x.push_back((v / 255.0f - 0.25f) / 0.5f);
  x = conv_relu_pool(x, 1, Tiny::kSide, t.conv1_w, t.conv1_b, Tiny::kC1);
  x = conv_relu_pool(x, Tiny::kC1, Tiny::kSide / 2, t.conv2_w, t.conv2_b, Tiny::kC2);
  return dense(dense(x, t.fc1_w, t.fc1_b, true), t.fc2_w, t.fc2_b, false);
}

TEST(OnednnCnnForward, GivesThePlainLoopsLogitsAtEveryBatchSizeInAnyOrder) {
  const Tiny tiny;
  auto cnn = OnednnCnn::create(tiny.parameters());
  ASSERT_TRUE(cnn.is_ok()) << cnn.status().to_string();
  for (int b : {1, 3, 9, 3, 1}) {
    std::vector<Input> batch(static_cast<std::size_t>(b));
    for (int j = 0; j < b; ++j) {
      for (int i = 0; i < Tiny::kSide * Tiny::kSide; ++i) {
        batch[j].image.push_back(static_cast<float>((i * (5 + j) + 3 * j + b) % 256));
      }
    }
    const std::span<const float> got = (*cnn)->forward(batch);
    ASSERT_EQ(got.size(), static_cast<std::size_t>(b * Tiny::kClasses));
    for (int j = 0; j < b; ++j) {
      const std::vector<float> want = reference_logits(tiny, batch[j]);
      for (int k = 0; k < Tiny::kClasses; ++k) {
        EXPECT_NEAR(got[j * Tiny::kClasses + k], want[k], 1e-5)
            << "batch " << b << " image " << j << " class " << k;
      }
    }
  }
}

TEST(OnednnCnnForward, AParameterOfAnotherSizeIsFailedPreconditionNamingIt) {
  Tiny tiny;
  tiny.fc1_w.pop_back();
  auto cnn = OnednnCnn::create(tiny.parameters());
  ASSERT_FALSE(cnn.is_ok());
  EXPECT_EQ(cnn.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(cnn.status().message().find("fc1.weight"), std::string::npos)
      << cnn.status().to_string();
}

TEST(OnednnCnnForward, AnImageOfAnotherSizeThrowsAndTheNextBatchIsServed) {
  const Tiny tiny;
  auto cnn = OnednnCnn::create(tiny.parameters());
  ASSERT_TRUE(cnn.is_ok()) << cnn.status().to_string();
  std::vector<Input> bad(1);
  bad[0].image.assign(10, 0.0f);
  EXPECT_THROW((*cnn)->forward(bad), std::invalid_argument);
  std::vector<Input> good(1);
  good[0].image.assign(Tiny::kSide * Tiny::kSide, 128.0f);
  const std::vector<float> want = reference_logits(tiny, good[0]);
  const std::span<const float> got = (*cnn)->forward(good);
  for (int k = 0; k < Tiny::kClasses; ++k) EXPECT_NEAR(got[k], want[k], 1e-5);
}

}  // namespace
}  // namespace kiln::serve
