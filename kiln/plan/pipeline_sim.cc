#include "kiln/plan/pipeline_sim.h"

#include <algorithm>
#include <limits>
#include <map>
#include <string>
#include <tuple>

namespace kiln::plan {

std::vector<PipelineOp> schedule_for_device(int d, int p, int v, int m) {
  std::vector<PipelineOp> ops;
  if (v == 1) {
    // 1F1B (PipeDream-Flush): warm-up forwards, steady one-forward-one-backward, cool-down.
    const int warmup = std::min(p - d - 1, m);
    int f = 0, b = 0;
    for (; f < warmup; ++f) ops.push_back({f, 0, true});
    while (f < m) {
      ops.push_back({f++, 0, true});
      ops.push_back({b++, 0, false});
    }
    while (b < m) ops.push_back({b++, 0, false});
    return ops;
  }
  // Megatron-LM's forward_backward_pipelining_with_interleaving: the k-th
  // forward (backward) of this device runs chunk (k mod pv) / p (reversed
  // for backward) on micro-batch (k / pv)·p + k mod p.
  const int total = m * v;
  const int warmup = m == p ? total : std::min(total, (p - d - 1) * 2 + (v - 1) * p);
  auto op = [&](int k, bool forward) {
    const int in_group = k % (p * v);
    int chunk = in_group / p;
    if (!forward) chunk = v - 1 - chunk;
    return PipelineOp{(k / (p * v)) * p + k % p, chunk, forward};
  };
  int f = 0, b = 0;
  for (; f < warmup; ++f) ops.push_back(op(f, true));
  while (f < total) {
    ops.push_back(op(f++, true));
    ops.push_back(op(b++, false));
  }
  while (b < total) ops.push_back(op(b++, false));
  return ops;
}

namespace {

struct Device {
  std::vector<PipelineOp> ops;
  size_t next = 0;         // index of the op running or waiting to run
  bool running = false;
  bool in_tail = false;
  bool done = false;
  double remaining_s = 0;  // compute of the running op, at full speed
  double waiting_s = 0;    // then its wall-time wait, holding no core
  double busy_s = 0;
  double finish_s = 0;
};

// (micro-batch, virtual stage, forward) -> time its output is available downstream.
using OpKey = std::tuple<int, int, bool>;

}  // namespace

Result<PipelineSimResult> simulate_pipeline(const PipelineSimInput& in) {
  const int p = in.stages, v = in.chunks, m = in.micro_batches;
  if (p < 1 || v < 1 || m < 1 || in.ranks_per_device < 1 || in.threads_per_rank < 1 ||
      in.cores < 1) {
    return invalid_argument("pipeline simulation: stages, chunks, micro-batches, ranks, threads "
                            "and cores must all be positive");
  }
  if (v > 1 && m % p != 0) {
    return invalid_argument("pipeline simulation: the interleaved schedule needs the micro-batches (" +
                            std::to_string(m) + ") to be a multiple of the stages (" +
                            std::to_string(p) + ")");
  }
  auto sized = [&](const std::vector<std::vector<double>>& w) {
    if (static_cast<int>(w.size()) != p) return false;
    for (const auto& row : w) {
      if (static_cast<int>(row.size()) != v) return false;
    }
    return true;
  };
  if (!sized(in.forward_s) || !sized(in.backward_s) ||
      (!in.forward_wait_s.empty() && !sized(in.forward_wait_s)) ||
      (!in.backward_wait_s.empty() && !sized(in.backward_wait_s)) ||
      (!in.tail_s.empty() && static_cast<int>(in.tail_s.size()) != p) ||
      (!in.tail_wait_s.empty() && static_cast<int>(in.tail_wait_s.size()) != p)) {
    return invalid_argument("pipeline simulation: work tables must be [stages][chunks]");
  }

  std::vector<Device> dev(static_cast<size_t>(p));
  for (int d = 0; d < p; ++d) dev[static_cast<size_t>(d)].ops = schedule_for_device(d, p, v, m);
  std::map<OpKey, double> available;  // outputs and when the consumer can use them
  const int last_stage = p * v - 1;

  // When `op` of device d may start: +inf while its input is not computed yet.
  auto ready_at = [&](int d, const PipelineOp& op) {
    const int j = op.chunk * p + d;
    if (op.forward && j == 0) return 0.0;
    if (!op.forward && j == last_stage) {
      auto it = available.find({op.micro_batch, j, true});
      return it == available.end() ? std::numeric_limits<double>::infinity() : 0.0;
    }
    const OpKey dep = op.forward ? OpKey{op.micro_batch, j - 1, true}
                                 : OpKey{op.micro_batch, j + 1, false};
    auto it = available.find(dep);
    return it == available.end() ? std::numeric_limits<double>::infinity() : it->second;
  };
  auto work = [&](int d, const PipelineOp& op) {
    const auto& table = op.forward ? in.forward_s : in.backward_s;
    return table[static_cast<size_t>(d)][static_cast<size_t>(op.chunk)];
  };
  auto wait = [&](int d, const PipelineOp& op) {
    const auto& table = op.forward ? in.forward_wait_s : in.backward_wait_s;
    return table.empty() ? 0.0 : table[static_cast<size_t>(d)][static_cast<size_t>(op.chunk)];
  };

  double now = 0, contended_s = 0;
  constexpr double kEps = 1e-15;
  // Every iteration starts an operation, ends its compute or ends its wait:
  // bounded by the op count.
  const size_t max_iterations = 8 * static_cast<size_t>(p) * (2 * m * v + 2) + 16;
  for (size_t iter = 0; iter < max_iterations; ++iter) {
    double wake = std::numeric_limits<double>::infinity();
    bool all_done = true;
    for (int d = 0; d < p; ++d) {
      Device& x = dev[static_cast<size_t>(d)];
      if (x.done) continue;
      all_done = false;
      if (x.running) continue;
      if (x.next < x.ops.size()) {
        const double at = ready_at(d, x.ops[x.next]);
        if (at <= now + kEps) {
          x.running = true;
          x.remaining_s = work(d, x.ops[x.next]);
          x.waiting_s = wait(d, x.ops[x.next]);
        } else {
          wake = std::min(wake, at);
        }
      } else {
        x.in_tail = true;
        x.running = true;
        x.remaining_s = in.tail_s.empty() ? 0 : in.tail_s[static_cast<size_t>(d)];
        x.waiting_s = in.tail_wait_s.empty() ? 0 : in.tail_wait_s[static_cast<size_t>(d)];
      }
    }
    if (all_done) break;
    // Computing: running with compute left; the others run out their wait.
    auto computing = [&](const Device& x) {
      return x.running && x.remaining_s > kEps * std::max(1.0, now);
    };
    std::vector<char> in_compute(dev.size());
    int active = 0;
    for (size_t d = 0; d < dev.size(); ++d) {
      in_compute[d] = computing(dev[d]) ? 1 : 0;
      active += in_compute[d];
    }
    const double demand =
        static_cast<double>(active) * in.ranks_per_device * in.threads_per_rank;
    double rate = std::min(1.0, in.cores / std::max(1.0, demand));
    if (in.relative_slowdown && active > 0) rate /= in.relative_slowdown(demand / in.cores);
    double step = wake - now;
    for (size_t d = 0; d < dev.size(); ++d) {
      const Device& x = dev[d];
      if (!x.running) continue;
      step = std::min(step, in_compute[d] ? x.remaining_s / rate : x.waiting_s);
    }
    if (!(step < std::numeric_limits<double>::infinity())) {
      return internal_error("pipeline simulation: no device can make progress (schedule bug)");
    }
    step = std::max(0.0, step);
    now += step;
    if (rate < 1) contended_s += step;
    for (int d = 0; d < p; ++d) {
      Device& x = dev[static_cast<size_t>(d)];
      if (!x.running) continue;
      x.busy_s += step;
      if (in_compute[static_cast<size_t>(d)]) {
        x.remaining_s -= step * rate;
        if (x.remaining_s > kEps * std::max(1.0, now)) continue;
        x.remaining_s = 0;
        if (x.waiting_s > kEps * std::max(1.0, now)) continue;
      } else {
        x.waiting_s -= step;
        if (x.waiting_s > kEps * std::max(1.0, now)) continue;
      }
      x.running = false;
      if (x.in_tail) {
        x.done = true;
        x.finish_s = now;
        continue;
      }
      const PipelineOp& op = x.ops[x.next++];
      const int j = op.chunk * p + d;
      const bool crosses = op.forward ? j < last_stage : j > 0;
      available[{op.micro_batch, j, op.forward}] = now + (crosses ? in.p2p_latency_s : 0);
    }
  }
  PipelineSimResult r;
  for (const Device& x : dev) {
    if (!x.done) return internal_error("pipeline simulation did not finish (schedule bug)");
    r.busy_s.push_back(x.busy_s);
    r.finish_s.push_back(x.finish_s);
    r.makespan_s = std::max(r.makespan_s, x.finish_s);
  }
  r.full_speed_fraction = r.makespan_s > 0 ? 1 - contended_s / r.makespan_s : 1;
  return r;
}

}  // namespace kiln::plan
