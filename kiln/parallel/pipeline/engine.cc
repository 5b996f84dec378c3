#include "kiln/parallel/pipeline/engine.h"

#include <chrono>
#include <deque>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "kiln/base/deadline.h"
#include "kiln/base/heap.h"

namespace kiln::parallel::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

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
    : mesh_(mesh), spec_(spec), stage_(mesh.coord().pp), timeout_(timeout) {
  // Every micro-batch allocates activation-sized buffers (received inputs,
  // outputs, their gradients): keep them in the heap instead of faulting in
  // fresh pages each time (Note [Keep freed tensor memory], kiln/base/heap.h).
  keep_freed_heap_memory();
}

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

// Note [Receives posted ahead]: each incoming channel keeps the receive of
// its next message posted (as Megatron-LM posts irecv early), so a transfer
// runs on the channel's engine while this rank still computes, instead of
// starting when the action that needs it does. The channel is a FIFO whose
// order is known from the schedule, so the next message's (chunk,
// micro-batch) and size are too: activations have the chunk's input shape,
// gradients the shape of the forward output they belong to (posted once
// that forward ran).
struct PipelineEngine::Inbox {
  ChannelKey key;
  std::deque<std::pair<int, int>> expected;  // (chunk, micro-batch), in arrival order
  torch::Tensor buffer;
  comm::WorkPtr work;  // null: nothing posted
  std::pair<int, int> posted{-1, -1};
};

Status PipelineEngine::post_next(Inbox& box, const std::function<std::optional<std::vector<std::int64_t>>(int, int)>& shape_of) {
  if (box.work || box.expected.empty()) return Status::ok();
  auto shape = shape_of(box.expected.front().first, box.expected.front().second);
  if (!shape) return Status::ok();
  PipelineChannel* channel = mesh_.incoming(box.key);
  if (channel == nullptr) return internal_error(fmt::format("pipeline stage {}: no channel to receive on", stage_));
  box.buffer = torch::empty(*shape, torch::TensorOptions().dtype(activation_dtype_));
  box.work = channel->post_recv(box.buffer.data_ptr(), static_cast<std::size_t>(box.buffer.numel()),
                                wire_type(box.buffer.scalar_type()));
  box.posted = box.expected.front();
  box.expected.pop_front();
  return Status::ok();
}

Result<torch::Tensor> PipelineEngine::take(Inbox& box, int chunk, int mb, const char* what, PipelineStepStats* stats) {
  if (!box.work || box.posted != std::make_pair(chunk, mb)) {
    return internal_error(fmt::format("pipeline stage {}: the {} of chunk {} micro-batch {} were not posted",
                                      stage_, what, chunk, mb));
  }
  const auto t0 = Clock::now();
  Status s = box.work->wait(timeout_);
  stats->wait_s += seconds_since(t0);
  box.work.reset();
  if (!s.is_ok()) {
    PipelineChannel* channel = mesh_.incoming(box.key);
    return s.with_context(fmt::format("pipeline: receiving {} (rank {})", channel->name(), channel->peer_world_rank()))
        .with_context(fmt::format("stage {} waiting for the {} of chunk {} micro-batch {}", stage_, what, chunk, mb));
  }
  return std::move(box.buffer);
}

Result<PipelineStepStats> PipelineEngine::train_step(StageCallbacks& cb) {
  activation_dtype_ = cb.activation_dtype;
  PipelineStepStats stats;
  const int last = spec_.global_stages() - 1;
  Inbox activations{forward_in(spec_, stage_)}, gradients{backward_in(spec_, stage_)};
  const std::vector<Action> actions = step_actions(spec_, stage_);
  for (const Action& a : actions) {
    const int g = global_stage(spec_, a.chunk, stage_);
    if (a.kind == Action::kForward && g > 0) activations.expected.emplace_back(a.chunk, a.microbatch);
    if (a.kind == Action::kBackward && g < last) gradients.expected.emplace_back(a.chunk, a.microbatch);
  }
  // Per (chunk, micro-batch) in flight: the received input (for its
  // gradient) and the forward's output (to backpropagate from).
  struct Live {
    torch::Tensor input, output;
  };
  std::map<std::pair<int, int>, Live> live;
  auto input_shape = [&](int chunk, int) -> std::optional<std::vector<std::int64_t>> { return cb.input_shape(chunk); };
  auto output_shape = [&](int chunk, int mb) -> std::optional<std::vector<std::int64_t>> {
    auto it = live.find({chunk, mb});
    if (it == live.end()) return std::nullopt;
    return it->second.output.sizes().vec();
  };
  auto post_ahead = [&]() -> Status {
    KILN_RETURN_IF_ERROR(post_next(activations, input_shape));
    return post_next(gradients, output_shape);
  };
  // The last backward of each chunk (data-parallel reductions go there).
  std::map<int, int> remaining;
  for (int c = 0; c < spec_.chunks; ++c) remaining[c] = spec_.microbatches;
  for (const Action& a : actions) {
    KILN_RETURN_IF_ERROR(post_ahead());
    const int g = global_stage(spec_, a.chunk, stage_);
    if (a.kind == Action::kForward) {
      Live l;
      if (g > 0) {
        KILN_ASSIGN_OR_RETURN(l.input, take(activations, a.chunk, a.microbatch, "activations", &stats));
        l.input.requires_grad_(true);
        KILN_RETURN_IF_ERROR(post_ahead());  // the next activations arrive while this forward runs
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
      KILN_ASSIGN_OR_RETURN(torch::Tensor grad, take(gradients, a.chunk, a.microbatch, "gradients", &stats));
      KILN_RETURN_IF_ERROR(post_ahead());
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
