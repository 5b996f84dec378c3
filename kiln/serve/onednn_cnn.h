// The served CNN's inference forward built straight on oneDNN's C++ API
// (dnnl.hpp), not through LibTorch's op dispatch. Includes neither LibTorch
// nor oneDNN.
//
// Note [The CNN's forward on oneDNN's own API]: the module's forward, and
// BlockedCnn (blocked_cnn.h) through LibTorch's mkldnn ops, pay per batch
// for what does not change between batches of one size: every op's
// primitive looked up (or built) and its output allocated, the input and
// each convolution's output reordered, relu as an op of its own. Here, as
// oneDNN's own primitive cache and Triton's/OpenVINO's CPU backends do, a
// plan is built once per batch size and reused:
//   conv1 (+relu post-op) -> max-pool 2x2 -> conv2 (+relu post-op) ->
//   max-pool 2x2 -> fc1 (+relu post-op) -> fc2,
// every primitive's layouts left to oneDNN (format_tag::any), the
// activations kept in the layout one primitive gives and the next takes
// (blocked, nChw8c on AVX2) up to the logits, the weights reordered once
// into each layout a primitive asks for (shared by every plan that asks for
// the same one), and the scratchpads the primitives' own (user mode), so a
// batch allocates nothing. The request's pixels are normalized straight
// into the first primitive's input. relu before a 2x2 max equals relu after
// it (the module's order), so the logits equal the module's within float
// rounding (TorchModel tests: 1e-5).
// Memory: the activations of every plan live in one arena sized for the
// largest batch seen (~190 KB per image for the make demo CNN), not one
// per plan.
// Measured (docs/perf.md, issue 20, session 16; 2-core Zen 3 VM, AVX2): the
// replica's batch worker spends ~190-230 us per request unbatched (the
// module: ~470-580) and ~190-210 batched at max_batch 20 (the module:
// ~210-230). A direct convolution is as efficient for one image as for
// twenty, so batching gains it almost nothing: `batching_gain` falls to
// ~1, while one unbatched replica serves more than the module's batched
// one. So it is the default (KILN_SERVE_CNN_FORWARD=onednn): the
// ratio the module reaches comes from its slow batch-1 path, not from
// serving more.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/serve/model.h"

namespace kiln::serve {

// train's CNN (kiln/train/task.cc): conv1 [c1, 1, 3, 3] and conv2
// [c2, c1, 3, 3] (stride 1, padding 1, each followed by relu and a 2x2 max
// pooling), fc1 [hidden, c2 * (side/4)^2] + relu, fc2 [classes, hidden], on
// side x side images normalized as (pixel / 255 - mean) / std. Views of
// float32 values in LibTorch's (row-major) order, which must outlive the
// OnednnCnn made from them (each plan reorders them into its layouts).
struct CnnParameters {
  std::span<const float> conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  std::int64_t conv1_channels = 0, conv2_channels = 0, hidden = 0, classes = 0;
  std::int64_t side = 28;
  float pixel_mean = 0, pixel_std = 1;
};

class OnednnCnn {
 public:
  // Tests only: runs with the batch size before that size's plan is built
  // (once per size, never on a batch whose plan exists); what it throws,
  // forward() throws, as if oneDNN could not build the plan.
  using BeforePlanForTest = std::function<void(int batch)>;

  // Checks the shapes and wraps the parameters; builds no plan (a replica
  // makes this inside its cold start, where ~3 ms of primitives, reorders
  // and first-touched activations would be most of a node cache hit's
  // load: docs/perf.md, issue 20, session 16). FailedPrecondition: a
  // parameter's size does not match the shapes.
  static Result<std::unique_ptr<OnednnCnn>> create(const CnnParameters& p,
                                                   BeforePlanForTest before_plan = {});
  ~OnednnCnn();
  OnednnCnn(const OnednnCnn&) = delete;
  OnednnCnn& operator=(const OnednnCnn&) = delete;

  // Logits [batch.size() x classes] of the images (each side * side pixels
  // 0..255, as parse_request validated them), valid until the next call.
  // A batch size seen for the first time builds its plan (primitives, the
  // weights in any layout no earlier plan asked for: a few ms) and may grow
  // the arena; later ones allocate nothing.
  // From one thread at a time; oneDNN runs on the calling thread's OpenMP
  // thread count. Throws (dnnl::error, std::invalid_argument: an image of
  // another size) like the module's forward.
  std::span<const float> forward(const std::vector<Input>& batch);

  // The implementation oneDNN chose for each primitive of batch `b`'s plan
  // (building it if needed), e.g. "conv1 jit:avx2": for the bench.
  std::vector<std::string> implementations(int b);

 private:
  struct Impl;
  explicit OnednnCnn(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::serve
