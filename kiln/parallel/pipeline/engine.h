// PipelineEngine: runs one pipeline rank's part of a training step (the
// schedule of schedule.h) or of an evaluation, moving activations and their
// gradients between stages over the mesh's channels (device_mesh.h).
//
// The model side is three callbacks: the forward of a chunk on a micro-batch
// (returning the activation to send on, or the micro-batch's loss on the last
// global stage), the backward (scalar.backward(), or a data-parallel
// wrapper's backward that also reduces gradients), and the shape of a chunk's
// input activation. The engine owns the micro-batches in flight: forward
// outputs wait in memory until their backward, exactly the (p - s) live
// micro-batches 1F1B bounds.
//
// Backward through a stage boundary: a rank whose output went to the next
// stage receives d loss / d output and backpropagates the scalar
// sum(output * grad), whose gradient with respect to the output is `grad`
// exactly; so every backward is a scalar's, which any data-parallel wrapper
// accepts.
//
// Failure: a receive waits at most the timeout and fails naming the channel
// and peer stage; the first error ends the step with that Status (and the
// callbacks' exceptions come back as Aborted). Not thread-safe: one step at a
// time, on one thread.
#pragma once

#include <chrono>
#include <functional>
#include <vector>

#include <torch/torch.h>

#include "kiln/base/status.h"
#include "kiln/parallel/mesh/device_mesh.h"
#include "kiln/parallel/pipeline/schedule.h"

namespace kiln::parallel::pipeline {

struct StageCallbacks {
  // Forward of chunk `chunk` on micro-batch `mb`. `input` is the previous
  // stage's activation (requires grad), undefined on the first global stage.
  // Returns the activation for the next stage, or the loss on the last one.
  std::function<torch::Tensor(int chunk, int mb, const torch::Tensor& input)> forward;
  // Backpropagates `scalar` (a loss, or the boundary surrogate). `last` is
  // true for the chunk's last backward of the step (where data-parallel
  // reductions happen). Returns an error to end the step.
  std::function<Status(int chunk, int mb, const torch::Tensor& scalar, bool last)> backward;
  // Sizes and dtype of the activation chunk `chunk` receives.
  std::function<std::vector<std::int64_t>(int chunk)> input_shape;
  torch::ScalarType activation_dtype = torch::kFloat32;
};

struct PipelineStepStats {
  double loss_sum = 0;      // the last global stage's micro-batch losses (else 0)
  double forward_s = 0;     // inside forward callbacks
  double backward_s = 0;    // inside backward callbacks
  double wait_s = 0;        // blocked on receives (the bubble, plus transfer)
  double send_wait_s = 0;   // waiting for the step's sends to finish at its end
  std::size_t bytes_sent = 0;
};

class PipelineEngine {
 public:
  PipelineEngine(DeviceMesh& mesh, ScheduleSpec spec, std::chrono::milliseconds timeout);

  const ScheduleSpec& spec() const { return spec_; }
  int stage() const { return stage_; }
  bool holds_loss() const;  // this rank runs the last global stage

  // One training step: every action of this rank's schedule.
  Result<PipelineStepStats> train_step(StageCallbacks& callbacks);

  // Forward only, one micro-batch `mb` through every chunk of this rank in
  // order (evaluation); the last stage's results come back from forward().
  Status forward_only(StageCallbacks& callbacks, int mb);

 private:
  struct Sent {
    torch::Tensor buffer;
    comm::WorkPtr work;
  };
  Result<torch::Tensor> receive(ChannelKey key, const std::vector<std::int64_t>& shape, int chunk, int mb,
                                const char* what, PipelineStepStats* stats);
  Status send(ChannelKey key, const torch::Tensor& t, PipelineStepStats* stats);
  Status finish_sends(PipelineStepStats* stats);

  DeviceMesh& mesh_;
  ScheduleSpec spec_;
  int stage_;
  std::chrono::milliseconds timeout_;
  std::vector<Sent> sent_;
  torch::ScalarType activation_dtype_ = torch::kFloat32;
};

}  // namespace kiln::parallel::pipeline
