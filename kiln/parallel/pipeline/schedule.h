// Pipeline schedules: the order in which one pipeline stage runs the forward
// and backward passes of a step's micro-batches.
//
// - 1F1B (PipeDream-Flush; Narayanan et al., "Efficient Large-Scale Language
//   Model Training on GPU Clusters Using Megatron-LM", SC'21): stage s runs
//   min(p - s - 1, m) warm-up forwards, then alternates one forward and one
//   backward, then drains the backwards. Bubble: (p - 1) / m of the ideal time.
// - Interleaved 1F1B (same paper, section 2.2.2): each rank holds v model
//   chunks; chunk c of rank s is global stage c * p + s. Bubble (p - 1) / (v m).
//   Needs m divisible by p (the order goes in groups of p micro-batches).
//
// Messages travel over one FIFO channel per (direction, wrap) and neighbour
// pair: forward activations to the next rank, gradients to the previous one;
// "wrap" channels join the last rank to the first (interleaved only). Every
// rank runs its forwards, and its backwards, in the same order of
// (chunk, micro-batch), so each channel's messages arrive in exactly the order
// the receiver asks for them: no tags, no reordering (Note [FIFO channels
// suffice]). simulate_pipeline() checks that a schedule completes (no
// deadlock, no out-of-order message) and predicts its time.
#pragma once

#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::parallel::pipeline {

enum class ScheduleKind { k1F1B, kInterleaved };
const char* schedule_name(ScheduleKind k);
Result<ScheduleKind> parse_schedule(const std::string& name);  // "1f1b" | "interleaved"

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int stages = 1;        // p: ranks in the pipeline
  int microbatches = 1;  // m per step
  int chunks = 1;        // v: model chunks per rank (interleaved; 1 for 1F1B)

  int global_stages() const { return stages * chunks; }
};

// InvalidArgument naming the rule when the spec cannot be scheduled.
Status validate(const ScheduleSpec& spec);

struct Action {
  enum Kind { kForward, kBackward };
  Kind kind = kForward;
  int chunk = 0;
  int microbatch = 0;
  bool operator==(const Action&) const = default;
};

// The actions of pipeline rank `stage` for one training step, in order.
std::vector<Action> step_actions(const ScheduleSpec& spec, int stage);

// Chunk `chunk` of rank `stage` is global stage chunk * p + stage.
inline int global_stage(const ScheduleSpec& spec, int chunk, int stage) {
  return chunk * spec.stages + stage;
}

// Which channel a message uses, from the sender's side.
enum class Direction { kForward, kBackward };
struct ChannelKey {
  Direction direction = Direction::kForward;
  bool wrap = false;  // last rank -> first (forward) or first -> last (backward)
  bool operator==(const ChannelKey&) const = default;
};
// The channel on which `stage` receives the input of a forward of `chunk`
// (not the first global stage) and sends its output (not the last).
ChannelKey forward_in(const ScheduleSpec& spec, int stage);
ChannelKey forward_out(const ScheduleSpec& spec, int stage);
ChannelKey backward_in(const ScheduleSpec& spec, int stage);
ChannelKey backward_out(const ScheduleSpec& spec, int stage);

// The closed form of the bubble: (p - 1) / (v m), as a fraction of the ideal
// (bubble-free) step time.
double bubble_formula(const ScheduleSpec& spec);

// Runs every rank's actions against FIFO channels, each forward of a chunk
// taking forward_s / v and each backward backward_s / v (communication free).
// Returns the step's makespan; Internal naming the stuck ranks if the
// schedule deadlocks or a message would arrive out of order.
Result<double> simulate_pipeline(const ScheduleSpec& spec, double forward_s, double backward_s);

}  // namespace kiln::parallel::pipeline
