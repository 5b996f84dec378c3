#include "kiln/parallel/pipeline/engine.h"

#include <chrono>
#include <map>

#include <fmt/format.h>

namespace kiln::parallel::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

comm::DataType wire_type(torch::ScalarType t) {
  return t == torch::kBFloat16 ? comm::DataType::kBFloat16 : comm::DataType::kFloat32;
}

// A callback's exception (a failed tensor-parallel collective, an
// allocation over the memory cap) as the step's Status.
template <class F>
Result<torch::Tensor> guarded(const char* what, int chunk, int mb, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    std::string first_line = msg.substr(0, msg.find('\n'));
    if (msg.find("out of memory") != std::string::npos) {
      return resource_exhausted(fmt::format("pipeline {} of chunk {} micro-batch {}: {}", what, chunk, mb, first_line));
    }
    return aborted(fmt::format("pipeline {} of chunk {} micro-batch {}: {}", what, chunk, mb, first_line));
  }
}

}  // namespace

PipelineEngine::PipelineEngine(DeviceMesh& mesh, ScheduleSpec spec, std::chrono::milliseconds timeout)
    : mesh_(mesh), spec_(spec), stage_(mesh.coord().pp), timeout_(timeout) {}

bool PipelineEngine::holds_loss() const { return stage_ == spec_.stages - 1; }

Result<torch::Tensor> PipelineEngine::receive(ChannelKey key, const std::vector<std::int64_t>& shape,
                                              int chunk, int mb, const char* what,
                                              PipelineStepStats* stats) {
  PipelineChannel* channel = mesh_.incoming(key);
  if (channel == nullptr) {
    return internal_error(fmt::format("pipeline stage {}: no channel for {} of chunk {}", stage_, what, chunk));
  }
  torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(activation_dtype_));
  const auto t0 = Clock::now();
  Status s = channel->recv(t.data_ptr(), static_cast<std::size_t>(t.numel()), wire_type(t.scalar_type()), timeout_);
  if (stats != nullptr) stats->wait_s += seconds_since(t0);
  if (!s.is_ok()) {
    return s.with_context(fmt::format("stage {} waiting for the {} of chunk {} micro-batch {}", stage_, what, chunk, mb));
  }
  return t;
}

Status PipelineEngine::send(ChannelKey key, const torch::Tensor& t, PipelineStepStats* stats) {
  PipelineChannel* channel = mesh_.outgoing(key);
  if (channel == nullptr) return internal_error(fmt::format("pipeline stage {}: no channel to send on", stage_));
  torch::Tensor buffer = t.detach().contiguous();
  comm::WorkPtr work = channel->send(buffer.data_ptr(), static_cast<std::size_t>(buffer.numel()),
                                     wire_type(buffer.scalar_type()));
  if (stats != nullptr) stats->bytes_sent += static_cast<std::size_t>(buffer.nbytes());
  sent_.push_back({std::move(buffer), std::move(work)});
  // Finished sends release their buffers as the step goes on.
  while (!sent_.empty() && sent_.front().work->test()) {
    KILN_RETURN_IF_ERROR(sent_.front().work->wait(timeout_));
    sent_.erase(sent_.begin());
  }
  return Status::ok();
}

Status PipelineEngine::finish_sends(PipelineStepStats* stats) {
  const auto t0 = Clock::now();
  for (auto& s : sent_) KILN_RETURN_IF_ERROR(s.work->wait(timeout_).with_context(fmt::format("pipeline stage {}: sending", stage_)));
  sent_.clear();
  if (stats != nullptr) stats->send_wait_s += seconds_since(t0);
  return Status::ok();
}

Result<PipelineStepStats> PipelineEngine::train_step(StageCallbacks& cb) {
  activation_dtype_ = cb.activation_dtype;
  PipelineStepStats stats;
  const int last = spec_.global_stages() - 1;
  // Per (chunk, micro-batch) in flight: the received input (for its
  // gradient) and the forward's output (to backpropagate from).
  struct Live {
    torch::Tensor input, output;
  };
  std::map<std::pair<int, int>, Live> live;
  // The last backward of each chunk (data-parallel reductions go there).
  std::map<int, int> remaining;
  for (int c = 0; c < spec_.chunks; ++c) remaining[c] = spec_.microbatches;
  for (const Action& a : step_actions(spec_, stage_)) {
    const int g = global_stage(spec_, a.chunk, stage_);
    if (a.kind == Action::kForward) {
      Live l;
      if (g > 0) {
        KILN_ASSIGN_OR_RETURN(l.input, receive(forward_in(spec_, stage_), cb.input_shape(a.chunk), a.chunk,
                                               a.microbatch, "activations", &stats));
        l.input.requires_grad_(true);
      }
      const auto t0 = Clock::now();
      KILN_ASSIGN_OR_RETURN(l.output, guarded("forward", a.chunk, a.microbatch,
                                              [&] { return cb.forward(a.chunk, a.microbatch, l.input); }));
      stats.forward_s += seconds_since(t0);
      if (g < last) {
        KILN_RETURN_IF_ERROR(send(forward_out(spec_, stage_), l.output, &stats));
      } else {
        stats.loss_sum += l.output.item<double>();
      }
      live[{a.chunk, a.microbatch}] = std::move(l);
      continue;
    }
    auto it = live.find({a.chunk, a.microbatch});
    if (it == live.end()) return internal_error("pipeline: backward before its forward");
    Live l = std::move(it->second);
    live.erase(it);
    torch::Tensor scalar = l.output;
    if (g < last) {
      KILN_ASSIGN_OR_RETURN(torch::Tensor grad, receive(backward_in(spec_, stage_), l.output.sizes().vec(),
                                                       a.chunk, a.microbatch, "gradients", &stats));
      scalar = (l.output * grad).sum();
    }
    const bool last_of_chunk = --remaining[a.chunk] == 0;
    const auto t0 = Clock::now();
    Status s;
    try {
      s = cb.backward(a.chunk, a.microbatch, scalar, last_of_chunk);
    } catch (const std::exception& e) {
      s = aborted(fmt::format("pipeline backward of chunk {} micro-batch {}: {}", a.chunk, a.microbatch, e.what()));
    }
    stats.backward_s += seconds_since(t0);
    KILN_RETURN_IF_ERROR(s);
    if (g > 0) {
      if (!l.input.grad().defined()) {
        return internal_error(fmt::format("pipeline stage {}: chunk {} produced no input gradient", stage_, a.chunk));
      }
      KILN_RETURN_IF_ERROR(send(backward_out(spec_, stage_), l.input.grad(), &stats));
    }
  }
  KILN_RETURN_IF_ERROR(finish_sends(&stats));
  return stats;
}

Status PipelineEngine::forward_only(StageCallbacks& cb, int mb) {
  activation_dtype_ = cb.activation_dtype;
  const int last = spec_.global_stages() - 1;
  for (int c = 0; c < spec_.chunks; ++c) {
    const int g = global_stage(spec_, c, stage_);
    torch::Tensor input;
    if (g > 0) {
      KILN_ASSIGN_OR_RETURN(input, receive(forward_in(spec_, stage_), cb.input_shape(c), c, mb, "activations", nullptr));
    }
    KILN_ASSIGN_OR_RETURN(torch::Tensor out, guarded("forward", c, mb, [&] { return cb.forward(c, mb, input); }));
    if (g < last) KILN_RETURN_IF_ERROR(send(forward_out(spec_, stage_), out, nullptr));
  }
  return finish_sends(nullptr);
}

}  // namespace kiln::parallel::pipeline
