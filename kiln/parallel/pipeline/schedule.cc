#include "kiln/parallel/pipeline/schedule.h"

#include <algorithm>
#include <deque>
#include <map>
#include <tuple>

#include <fmt/format.h>

namespace kiln::parallel::pipeline {

const char* schedule_name(ScheduleKind k) {
  return k == ScheduleKind::kInterleaved ? "interleaved" : "1f1b";
}

Result<ScheduleKind> parse_schedule(const std::string& name) {
  if (name == "1f1b") return ScheduleKind::k1F1B;
  if (name == "interleaved") return ScheduleKind::kInterleaved;
  return invalid_argument(fmt::format("pipeline schedule '{}': expected \"1f1b\" or \"interleaved\"", name));
}

Status validate(const ScheduleSpec& s) {
  if (s.stages < 1 || s.microbatches < 1 || s.chunks < 1) {
    return invalid_argument(fmt::format("pipeline: stages {}, micro-batches {} and chunks {} must be >= 1",
                                        s.stages, s.microbatches, s.chunks));
  }
  if (s.kind == ScheduleKind::k1F1B && s.chunks != 1) {
    return invalid_argument("pipeline: the 1f1b schedule runs one chunk per rank (chunks = 1)");
  }
  if (s.kind == ScheduleKind::kInterleaved) {
    if (s.stages < 2) return invalid_argument("pipeline: the interleaved schedule needs pp >= 2");
    if (s.microbatches % s.stages != 0) {
      return invalid_argument(fmt::format(
          "pipeline: the interleaved schedule needs micro-batches ({}) divisible by pp ({})",
          s.microbatches, s.stages));
    }
  }
  return Status::ok();
}

namespace {

// Note [Interleaved order]: the k-th forward of a rank runs micro-batch
// group (k / (p v)) * p + k % p of chunk (k % (p v)) / p: p micro-batches
// through chunk 0, the same p through chunk 1, ... then the next group.
// Backwards go the same way with the chunks reversed (Megatron-LM's
// get_model_chunk_id).
Action interleaved_action(const ScheduleSpec& s, int k, Action::Kind kind) {
  const int p = s.stages, v = s.chunks;
  const int in_group = k % (p * v);
  int chunk = in_group / p;
  if (kind == Action::kBackward) chunk = v - 1 - chunk;
  return Action{kind, chunk, (k / (p * v)) * p + k % p};
}

}  // namespace

std::vector<Action> step_actions(const ScheduleSpec& s, int stage) {
  std::vector<Action> out;
  if (s.kind == ScheduleKind::k1F1B) {
    const int warmup = std::min(s.stages - stage - 1, s.microbatches);
    const int steady = s.microbatches - warmup;
    for (int i = 0; i < warmup; ++i) out.push_back({Action::kForward, 0, i});
    for (int i = 0; i < steady; ++i) {
      out.push_back({Action::kForward, 0, warmup + i});
      out.push_back({Action::kBackward, 0, i});
    }
    for (int i = steady; i < s.microbatches; ++i) out.push_back({Action::kBackward, 0, i});
    return out;
  }
  const int total = s.microbatches * s.chunks;
  // With m == p every forward comes first (Megatron-LM does the same): the
  // steady state would otherwise wait on a backward that cannot start yet.
  const int warmup = s.microbatches == s.stages
                         ? total
                         : std::min(total, (s.stages - stage - 1) * 2 + (s.chunks - 1) * s.stages);
  const int steady = total - warmup;
  for (int k = 0; k < warmup; ++k) out.push_back(interleaved_action(s, k, Action::kForward));
  for (int k = 0; k < steady; ++k) {
    out.push_back(interleaved_action(s, warmup + k, Action::kForward));
    out.push_back(interleaved_action(s, k, Action::kBackward));
  }
  for (int k = steady; k < total; ++k) out.push_back(interleaved_action(s, k, Action::kBackward));
  return out;
}

ChannelKey forward_in(const ScheduleSpec&, int stage) { return {Direction::kForward, stage == 0}; }
ChannelKey forward_out(const ScheduleSpec& s, int stage) {
  return {Direction::kForward, stage == s.stages - 1};
}
ChannelKey backward_in(const ScheduleSpec& s, int stage) {
  return {Direction::kBackward, stage == s.stages - 1};
}
ChannelKey backward_out(const ScheduleSpec&, int stage) { return {Direction::kBackward, stage == 0}; }

double bubble_formula(const ScheduleSpec& s) {
  return static_cast<double>(s.stages - 1) / (static_cast<double>(s.chunks) * s.microbatches);
}

Result<double> simulate_pipeline(const ScheduleSpec& s, double forward_s, double backward_s) {
  KILN_RETURN_IF_ERROR(validate(s));
  const int p = s.stages;
  const double tf = forward_s / s.chunks, tb = backward_s / s.chunks;
  std::vector<std::vector<Action>> actions(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) actions[static_cast<std::size_t>(r)] = step_actions(s, r);

  struct Message {
    int chunk, microbatch;  // the receiver's action it feeds
    double arrives;
  };
  // (direction, wrap, receiving rank) -> FIFO
  std::map<std::tuple<int, bool, int>, std::deque<Message>> channels;
  auto channel = [&](ChannelKey k, int receiver) -> std::deque<Message>& {
    return channels[{static_cast<int>(k.direction), k.wrap, receiver}];
  };
  std::vector<std::size_t> next(static_cast<std::size_t>(p), 0);
  std::vector<double> free_at(static_cast<std::size_t>(p), 0.0);
  const int last = s.global_stages() - 1;
  bool progressed = true;
  while (progressed) {
    progressed = false;
    for (int r = 0; r < p; ++r) {
      auto& i = next[static_cast<std::size_t>(r)];
      const auto& list = actions[static_cast<std::size_t>(r)];
      while (i < list.size()) {
        const Action a = list[i];
        const int g = global_stage(s, a.chunk, r);
        const bool forward = a.kind == Action::kForward;
        double ready = free_at[static_cast<std::size_t>(r)];
        const bool needs_input = forward ? g > 0 : g < last;
        if (needs_input) {
          auto& in = channel(forward ? forward_in(s, r) : backward_in(s, r), r);
          if (in.empty()) break;  // not sent yet: try the other ranks
          if (in.front().chunk != a.chunk || in.front().microbatch != a.microbatch) {
            return internal_error(fmt::format(
                "pipeline schedule {} p {} m {} v {}: rank {} waits for chunk {} micro-batch {} but "
                "its channel delivers chunk {} micro-batch {} first",
                schedule_name(s.kind), p, s.microbatches, s.chunks, r, a.chunk, a.microbatch,
                in.front().chunk, in.front().microbatch));
          }
          ready = std::max(ready, in.front().arrives);
          in.pop_front();
        }
        const double done = ready + (forward ? tf : tb);
        free_at[static_cast<std::size_t>(r)] = done;
        if (forward && g < last) {
          const int to = (r + 1) % p;
          const int to_chunk = r == p - 1 ? a.chunk + 1 : a.chunk;
          channel(forward_out(s, r), to).push_back({to_chunk, a.microbatch, done});
        } else if (!forward && g > 0) {
          const int to = (r + p - 1) % p;
          const int to_chunk = r == 0 ? a.chunk - 1 : a.chunk;
          channel(backward_out(s, r), to).push_back({to_chunk, a.microbatch, done});
        }
        ++i;
        progressed = true;
      }
    }
  }
  std::vector<std::string> stuck;
  for (int r = 0; r < p; ++r) {
    const auto i = next[static_cast<std::size_t>(r)];
    const auto& list = actions[static_cast<std::size_t>(r)];
    if (i < list.size()) {
      stuck.push_back(fmt::format("rank {} at {} chunk {} micro-batch {}", r,
                                  list[i].kind == Action::kForward ? "forward" : "backward",
                                  list[i].chunk, list[i].microbatch));
    }
  }
  if (!stuck.empty()) {
    return internal_error(fmt::format("pipeline schedule {} p {} m {} v {} deadlocks: {}",
                                      schedule_name(s.kind), p, s.microbatches, s.chunks,
                                      fmt::join(stuck, "; ")));
  }
  return *std::max_element(free_at.begin(), free_at.end());
}

}  // namespace kiln::parallel::pipeline
