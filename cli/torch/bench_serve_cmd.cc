// `kiln bench serve [--json]`: the serving load test (docs/perf.md). Self
// contained: writes a CNN checkpoint of the `make demo` shape (random
// weights: service time does not depend on their values), then measures on
// loopback with real `kiln serve` processes and an open-loop Poisson load:
//   1. cold start with an empty node cache vs a warm one (3 replicas each),
//      the weights on file:// and in s3rver on loopback (the design's S3);
//   2. batching gain: the highest Poisson rate one replica serves within the
//      SLO (p99, no 503) with dynamic batching vs batch size 1;
//   3. a fleet (--replicas 1:2) under a step in load that needs 2 replicas at
//      peak, sized from the capacity of one and of two replicas measured
//      behind the router (each replica capped at --capacity-rps where the
//      host cannot run two at full speed): latency, throughput, drops,
//      replica-seconds vs the static fleet of 2 run on the same step, and
//      how long after the step p99 is back under the SLO.
#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "cli/command.h"
#include "cli/torch/bench_serve_forward.h"
#include "cli/torch/bench_serve_replicas.h"
#include "cli/torch/bench_serve_where.h"
#include "kiln/base/deadline.h"
#include "kiln/base/heap.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/objstore/s3/local_s3rver.h"
#include "kiln/serve/load_gen.h"
#include "kiln/serve/thread_cpus.h"
#include "kiln/serve/torch_model.h"
#include "kiln/train/task.h"
#include "kiln/train/train_state.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using bench_serve::bench_cpus;
using bench_serve::Child;
using bench_serve::ready_line;
using bench_serve::slurp;
using bench_serve::start_replica;
using bench_serve::stop;
using bench_serve::wait_for;

struct BenchArgs {
  bool json_out = false;
  double slo_ms = 100;
  double step_seconds = 3;  // per rate of the batching ladder
  int refine = 3;           // bisections at the ladder's edge
  int runs = 3;
  std::string model;  // an existing checkpoint root; "" = write one
  std::string parts = "service,cold,cold_s3,batching,fleet";
  double capacity_rps = 0;  // each fleet replica's enforced capacity; 0: none
  int max_batch = 0;        // the batched replica's; 0: from the service line
  int max_queue_delay_us = 2000;
  int fleet_max_batch = 0;  // the fleet's replicas'; 0: max_batch
  bool pin_load_gen = false;  // the batching part's load generator off the replica's worker CPU
  double probe_rps = 0;     // the probe part: one batched replica at this rate (profiling)
  double target_queue = 0;  // the fleet's --target-queue; 0: measured (Note [The fleet's target])

  bool part(const std::string& name) const {
    return ("," + parts + ",").find("," + name + ",") != std::string::npos;
  }
};

// The CNN's forward pass alone, in this process, through the model a
// replica serves (load_torch_model: its weight layout, its input tensor
// building, one torch thread on a thread of its own like a replica's batch
// worker): seconds per batch for each batch size, the service line the fleet
// simulator takes (--batch-base-ms, --batch-item-ms), and the ceiling of any
// batching gain (items/s at the best batch size vs at batch 1, same run).
Result<json> service_line(const std::string& model_root) {
  KILN_ASSIGN_OR_RETURN(ckpt::LoadedState loaded, ckpt::load_latest(model_root, {}));
  const auto state = serve::StepWeights::from_loaded(std::move(loaded));
  keep_freed_heap_memory();  // as a replica does
  json out = json::object();
  Status status;
  std::thread worker([&] {
    auto model = serve::load_torch_model(state, {.threads = 1});
    if (!model.is_ok()) {
      status = model.status();
      return;
    }
    std::mt19937 g(7);
    serve::Input image;
    for (int i = 0; i < 784; ++i) image.image.push_back(static_cast<float>(g() % 256));
    json per_batch = json::object();
    double t1 = 0, t32 = 0, best_rate = 0;
    int best_batch = 1;
    std::vector<std::pair<int, double>> rates;  // items/s per batch size
    for (int b = 1; b <= 64; b += b < 32 ? 1 : 8) {
      std::vector<serve::Input> batch(static_cast<std::size_t>(b), image);
      for (int i = 0; i < 5; ++i) (*model)->run(batch);
      std::vector<double> s;
      for (int rep = 0; rep < 5; ++rep) {
        const int iters = std::max(4, 128 / b);
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) (*model)->run(batch);
        s.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / iters);
      }
      const double m = serve::quantile(s, 0.5);
      per_batch[std::to_string(b)] = m * 1000;
      if (b == 1) t1 = m;
      if (b == 32) t32 = m;
      rates.emplace_back(b, b / m);
      if (b / m > best_rate) {
        best_rate = b / m;
        best_batch = b;
      }
    }
    out["batch_ms"] = per_batch;
    out["per_item_ms"] = (t32 - t1) / 31 * 1000;
    out["base_ms"] = (t1 - (t32 - t1) / 31) * 1000;
    out["forward_gain_32"] = 32 * t1 / t32;     // items/s at 32 vs at 1
    out["forward_gain_best"] = best_rate * t1;  // batching's ceiling for this model here
    out["forward_best_batch"] = best_batch;
    // The plateau is flat and noisy: the smallest batch within 3% of the
    // best is as fast and adds less latency.
    for (const auto& [b, rate] : rates) {
      if (rate >= 0.97 * best_rate) {
        out["forward_knee_batch"] = b;
        break;
      }
    }
  });
  worker.join();
  KILN_RETURN_IF_ERROR(status);
  return out;
}

Status write_checkpoint(const std::string& root) {
  train::ModelConfig c;  // the make demo CNN: channels 32, hidden 128
  torch::manual_seed(1);
  auto task = train::make_task(c);
  torch::optim::AdamW opt(task->module()->parameters());
  train::Snapshot snap;
  KILN_RETURN_IF_ERROR(train::capture_state(*task->module(), opt, {1, 0, 0}, 0, 1, &snap));
  KILN_ASSIGN_OR_RETURN(auto ck, ckpt::Checkpointer::create({.root = root}));
  return ck->save(snap.view, 1, Deadline::after_seconds(60));
}

double median(std::vector<double> v) { return serve::quantile(std::move(v), 0.5); }

json stats(const std::vector<double>& v) {
  return {{"median", median(v)},
          {"min", *std::min_element(v.begin(), v.end())},
          {"max", *std::max_element(v.begin(), v.end())}};
}

std::string request_body() {
  std::mt19937 g(7);
  std::vector<int> px(784);
  for (auto& p : px) p = static_cast<int>(g() % 256);
  return json{{"image", px}}.dump();
}

// Sends a few requests and discards them: connections, LibTorch's first-call
// setup and the allocator's first batches are not what the bench measures.
void warm_up(int port) {
  serve::run_load({.port = port,
                   .body = request_body(),
                   .rate = [](double) { return 50.0; },
                   .duration_s = 2,
                   .clients = 16});
}

// One step of a ladder: `rate` req/s for the step's seconds; true if it held
// (p99 <= SLO, nothing refused or dropped). Appends the step to `ladder`,
// with where each request's time went when `replica` is the one replica
// serving it (Note [Where a request's time goes], bench_serve_where.cc).
bool ladder_step(int port, const BenchArgs& a, double rate, json* ladder, double* achieved,
                 const Child* replica = nullptr) {
  std::optional<WhereSnapshot> before;
  if (replica != nullptr) before = where_snapshot(replica->pid, replica->port);
  serve::LoadResult r = serve::run_load({.port = port,
                                         .body = request_body(),
                                         .rate = [rate](double) { return rate; },
                                         .duration_s = a.step_seconds,
                                         .clients = 64});
  const double p99 = serve::quantile(r.latencies_s, 0.99) * 1000;
  const bool held = p99 <= a.slo_ms && r.rejected == 0 && r.dropped == 0;
  json step = {{"rate", rate},
               {"throughput_rps", r.throughput_rps()},
               {"p99_ms", p99},
               {"p50_ms", serve::quantile(r.latencies_s, 0.5) * 1000},
               {"rejected", r.rejected},
               {"dropped", r.dropped},
               {"drop_reasons", r.drop_reasons},
               {"held", held}};
  if (before) {
    step["where"] = where_between(*before, where_snapshot(replica->pid, replica->port), r.ok);
  }
  ladder->push_back(std::move(step));
  *achieved = r.throughput_rps();
  return held;
}

// The breakdown of the ladder's step with the highest throughput that held
// (null if none held or none was taken apart).
json where_at_best(const json& ladder) {
  const json* best = nullptr;
  for (const json& step : ladder) {
    if (!step["held"].get<bool>() || !step.contains("where")) continue;
    if (best == nullptr || step["throughput_rps"] > (*best)["throughput_rps"]) best = &step;
  }
  if (best == nullptr) return nullptr;
  json out = (*best)["where"];
  out["rate"] = (*best)["rate"];
  out["throughput_rps"] = (*best)["throughput_rps"];
  out["p99_ms"] = (*best)["p99_ms"];
  return out;
}

// The highest rate one replica serves with p99 <= SLO and no 503 or drop:
// a x1.5 ladder up to the first rate that fails, then `a.refine` geometric
// bisections between the last rate that held and it (3: within 5%).
// Returns the achieved throughput at the highest rate that held.
//
// Note [A rate fails twice]: a rate counts as failed only if a second run of
// it fails too. At low rates a step has 100-200 requests, so its p99 is
// its second-slowest request, and one scheduling stall on this shared VM
// (20-70 ms p99 at every rate from 25 req/s up, batched or not) ended an
// unbatched ladder at 56 req/s with a 125 ms p99 (docs/perf.md, issue 20,
// session 7). Both ladders follow the same rule.
double max_rate_within_slo(int port, const BenchArgs& a, double start_rps, json* ladder,
                           const Child* replica = nullptr) {
  warm_up(port);
  auto holds = [&](double rate, double* achieved) {
    return ladder_step(port, a, rate, ladder, achieved, replica) ||
           ladder_step(port, a, rate, ladder, achieved, replica);
  };
  double best = 0, held = 0, failed = 0, achieved = 0;
  for (double rate = start_rps; rate < 100000; rate *= 1.5) {
    if (!holds(rate, &achieved)) {
      failed = rate;
      break;
    }
    held = rate;
    best = std::max(best, achieved);
  }
  for (int i = 0; failed > 0 && held > 0 && i < a.refine; ++i) {
    const double rate = std::sqrt(held * failed);
    if (holds(rate, &achieved)) {
      held = rate;
      best = std::max(best, achieved);
    } else {
      failed = rate;
    }
  }
  return best;
}

// A fleet (`kiln serve --replicas MIN:MAX`) behind its router, its
// replicas configured as the batched replica's; returns once `ready`
// replicas serve.
Result<Child> start_fleet(const BenchArgs& a, const std::string& model, const std::string& work,
                          const std::string& replicas, int ready, const std::string& name,
                          const std::string& decisions) {
  const int max_batch = a.fleet_max_batch > 0 ? a.fleet_max_batch : a.max_batch;
  std::vector<std::string> args = {model, "--cache-dir", work + "/cache-warm", "--threads", "1"};
  if (a.capacity_rps > 0) {
    // Note [A replica's capacity, enforced] (kiln/serve/capped_model.h).
    args.push_back("--capacity-rps");
    args.push_back(fmt::format("{}", a.capacity_rps));
  }
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--replicas", replicas},
           {"--target-queue", fmt::format("{}", a.target_queue > 0 ? a.target_queue : 16)},
           {"--sync-period-ms", "500"},
           {"--scale-down-window-s", "10"},
           {"--rate-period-s", "1"},
           {"--max-queue", "100000"},
           {"--max-batch", std::to_string(max_batch)},
           {"--max-queue-delay-us", std::to_string(a.max_queue_delay_us)}}) {
    args.push_back(flag);
    args.push_back(value);
  }
  if (!decisions.empty()) {
    args.push_back("--decision-log");
    args.push_back(decisions);
  }
  KILN_ASSIGN_OR_RETURN(Child fleet, start_replica(args, work + "/" + name + ".out"));
  const Deadline d = Deadline::after_seconds(120);
  while (true) {
    const std::string text = slurp(fleet.out);
    int n = 0;
    for (std::size_t at = text.find("] ready"); at != std::string::npos;
         at = text.find("] ready", at + 1)) {
      ++n;
    }
    if (n >= ready) return fleet;
    if (d.expired()) {
      stop(fleet);
      return deadline_exceeded(fmt::format(
          "bench serve: fleet {}: {} of {} replicas ready within 120 s", replicas, n, ready));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// p99 (ms) of the requests sent in each second of a run.
std::vector<double> p99_per_second(const serve::LoadResult& r, double duration_s) {
  std::vector<std::vector<double>> windows(static_cast<std::size_t>(duration_s) + 1);
  for (std::size_t i = 0; i < r.latencies_s.size(); ++i) {
    const auto w = static_cast<std::size_t>(r.sent_at_s[i]);
    if (w < windows.size()) windows[w].push_back(r.latencies_s[i]);
  }
  std::vector<double> out;
  for (const auto& w : windows) out.push_back(serve::quantile(w, 0.99) * 1000);
  return out;
}

// How many of those seconds kept p99 within the SLO.
int seconds_within(const std::vector<double>& p99s, double slo_ms) {
  return static_cast<int>(
      std::count_if(p99s.begin(), p99s.end(), [&](double p99) { return p99 <= slo_ms; }));
}

// Note [The fleet's load from its own capacity]: on this 2-core host the
// load generator, the router and every replica share the cores, so one
// replica measured alone (it has both cores) says little about what one or
// two replicas serve behind the router. The fleet part measures both, with
// the batching part's ladder through the router: the step's peak must
// exceed what one replica serves (so it needs the second) and stay under
// what two serve (so the SLO can hold once they run).
//
// Note [The fleet's target]: the autoscaler aims at `--target-queue`
// outstanding requests per replica, and the right value depends on the
// replica: too high and a fleet at the peak, each replica well loaded,
// reads as one replica's worth and scales down into overload again. As the
// simulator does (Note [Queue autoscaling behaviour], simulator.h), the
// target is one replica's outstanding requests at 70% of its capacity, here
// measured: Little's law (throughput x mean latency) over one step at 0.7 x
// the capacity just found, behind the router. --target-queue overrides it.
Status fleet_capacity(const BenchArgs& a, const std::string& model, const std::string& work,
                      double* one, double* two, double* target, json* out) {
  for (int n = 1; n <= 2; ++n) {
    const std::string replicas = fmt::format("{}:{}", n, n);
    KILN_ASSIGN_OR_RETURN(Child fleet, start_fleet(a, model, work, replicas, n,
                                                   fmt::format("fleet-capacity-{}", n), ""));
    json ladder = json::array();
    const double rps = max_rate_within_slo(fleet.port, a, 200, &ladder);
    if (n == 1 && a.target_queue <= 0 && rps > 0) {
      // Note [The fleet's target].
      const double rate = 0.7 * rps;
      serve::LoadResult r = serve::run_load({.port = fleet.port,
                                             .body = request_body(),
                                             .rate = [rate](double) { return rate; },
                                             .duration_s = a.step_seconds,
                                             .clients = 64});
      double sum = 0;
      for (double l : r.latencies_s) sum += l;
      const double mean_s = r.latencies_s.empty() ? 0 : sum / r.latencies_s.size();
      *target = std::max(1.0, r.throughput_rps() * mean_s);
      (*out)["fleet_target_queue_at"] = {{"rate", rate},
                                        {"throughput_rps", r.throughput_rps()},
                                        {"mean_latency_ms", mean_s * 1000}};
    }
    stop(fleet);
    (n == 1 ? *one : *two) = rps;
    (*out)["fleet_capacity_ladders"].push_back({{"replicas", n}, {"ladder", ladder}});
  }
  return Status::ok();
}

// 3. The fleet under a step: 0.4 x one replica's capacity for 15 s, then a
// peak that needs two (Note [The fleet's load from its own capacity]).
Status fleet_step(const BenchArgs& a, const std::string& model, const std::string& work,
                  json* result) {
  json& out = *result;
  out["fleet_max_batch"] = a.fleet_max_batch > 0 ? a.fleet_max_batch : a.max_batch;
  out["fleet_replica_capacity_rps"] = a.capacity_rps;  // 0: each replica as fast as it runs
  double one = 0, two = 0, target = a.target_queue;
  KILN_RETURN_IF_ERROR(fleet_capacity(a, model, work, &one, &two, &target, &out));
  out["fleet_capacity_rps"] = {{"one_replica", one}, {"two_replicas", two}};
  out["fleet_target_queue"] = target;
  BenchArgs with_target = a;
  with_target.target_queue = target;
  if (two < 1.05 * one) {
    return failed_precondition(fmt::format(
        "bench serve: two replicas behind the router serve {:.0f} req/s, one {:.0f}: this host "
        "has no load that needs two replicas and that two can serve within the SLO (pass "
        "--capacity-rps to give each replica a capacity the host can run twice)",
        two, one));
  }
  const double low = 0.4 * one;
  const double peak = std::min(1.3 * one, 0.5 * (one + two));
  out["peak_over_one_replica"] = peak / one;
  out["peak_over_two_replicas"] = peak / two;
  const double step_at = 15, duration = 40;
  auto step_load = [&](int port) {
    warm_up(port);
    return serve::run_load({.port = port,
                            .body = request_body(),
                            .rate = [&](double t) { return t < step_at ? low : peak; },
                            .duration_s = duration,
                            .clients = 128});
  };
  // The same step on the static fleet sized for the peak (two replicas
  // from the start), in the same run: what autoscaling saves, at what cost
  // in latency.
  {
    KILN_ASSIGN_OR_RETURN(Child fleet,
                          start_fleet(with_target, model, work, "2:2", 2, "static", ""));
    serve::LoadResult s = step_load(fleet.port);
    stop(fleet);
    const auto p99s = p99_per_second(s, duration);
    out["static"] = {{"p50_ms", serve::quantile(s.latencies_s, 0.5) * 1000},
                     {"p99_ms", serve::quantile(s.latencies_s, 0.99) * 1000},
                     {"throughput_rps", s.throughput_rps()},
                     {"dropped", s.dropped},
                     {"rejected_503", s.rejected},
                     {"seconds_within_slo", seconds_within(p99s, a.slo_ms)},
                     {"p99_ms_per_second", p99s}};
  }
  const std::string decisions = work + "/decisions.jsonl";
  KILN_ASSIGN_OR_RETURN(Child fleet,
                        start_fleet(with_target, model, work, "1:2", 1, "fleet", decisions));
  serve::LoadResult r = step_load(fleet.port);
  stop(fleet);
  out["p50_ms"] = serve::quantile(r.latencies_s, 0.5) * 1000;
  out["p99_ms"] = serve::quantile(r.latencies_s, 0.99) * 1000;
  out["throughput_rps"] = r.throughput_rps();
  out["dropped"] = r.dropped;
  out["drop_reasons"] = r.drop_reasons;
  out["rejected_503"] = r.rejected;
  out["load"] = {
      {"low_rps", low}, {"peak_rps", peak}, {"step_at_s", step_at}, {"duration_s", duration}};
  // Replicas started over time, from the decision log.
  double replica_seconds = 0, last_t = -1;
  int last_n = 1;
  std::ifstream log(decisions);
  for (std::string line; std::getline(log, line);) {
    auto j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("desired")) continue;
    const double t = j["time"].get<double>();
    if (last_t >= 0) replica_seconds += last_n * (t - last_t);
    last_t = t;
    last_n = j["desired"].get<int>();
  }
  out["replica_seconds"] = replica_seconds;
  out["static_peak_replica_seconds"] = 2 * std::max(0.0, last_t);
  // After the step, the first 1 s window from which every window's p99 is
  // within the SLO.
  const std::vector<double> p99s = p99_per_second(r, duration);
  double recover = -1;
  for (auto w = static_cast<std::size_t>(step_at); w < p99s.size(); ++w) {
    if (std::all_of(p99s.begin() + static_cast<std::ptrdiff_t>(w), p99s.end(),
                    [&](double p99) { return p99 <= a.slo_ms; })) {
      recover = static_cast<double>(w) - step_at;
      break;
    }
  }
  out["recover_after_step_s"] = recover;  // -1: never within this run
  out["seconds_within_slo"] = seconds_within(p99s, a.slo_ms);
  out["p99_ms_per_second"] = p99s;
  return Status::ok();
}

// Cold starts of `model`: a.runs replicas each with an empty node cache,
// then a.runs with the cache one of them filled. Keys "<prefix>cold_start_s"
// etc.
Status cold_starts(const BenchArgs& a, const std::string& model, const std::string& work,
                   const std::string& prefix, json* result) {
  json& out = *result;
  std::vector<double> cold, cached, cold_wall, cached_wall;
  json breakdown = json::array();
  const std::string warm_cache = fmt::format("{}/cache-{}warm-for-cold", work, prefix);
  for (int i = 0; i < 2 * a.runs; ++i) {
    const bool warm = i >= a.runs;
    const std::string cache = warm ? warm_cache : fmt::format("{}/cache-{}{}", work, prefix, i);
    if (i == 0) fs::create_directories(warm_cache);
    const auto t0 = Clock::now();
    KILN_ASSIGN_OR_RETURN(Child c,
                          start_replica({model, "--cache-dir", cache, "--threads", "1"},
                                        fmt::format("{}/start-{}{}.out", work, prefix, i)));
    auto s = wait_for(c, "cold start ([0-9.]+) s", 120);
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    stop(c);
    KILN_RETURN_IF_ERROR(s.status());
    breakdown.push_back({{"cached", warm}, {"ready_line", ready_line(c)}});
    (warm ? cached : cold).push_back(std::stod(*s));
    (warm ? cached_wall : cold_wall).push_back(wall);
    // The first cold replica's cache is the warm one of the cached starts.
    if (i == 0) {
      fs::remove_all(warm_cache);
      fs::rename(cache, warm_cache);
    }
  }
  out[prefix + "model_url"] = model;
  out[prefix + "cold_start_s"] = median(cold);
  out[prefix + "cold_start_cached_s"] = median(cached);
  out[prefix + "cached_vs_cold"] = median(cached) / median(cold);
  out[prefix + "cold_start_runs"] = stats(cold);
  out[prefix + "cold_start_cached_runs"] = stats(cached);
  out[prefix + "replica_start_to_ready_s"] = {{"cold", stats(cold_wall)},
                                              {"cached", stats(cached_wall)}};
  out[prefix + "cold_start_breakdown"] = breakdown;
  return Status::ok();
}

void print_summary(const json& out) {
  auto num = [&](const char* key) { return out.contains(key) ? out[key].get<double>() : -1.0; };
  if (out.contains("service_line")) {
    const json& s = out["service_line"];
    std::printf(
        "forward pass: %.2f ms + %.3f ms per image (x%.2f items/s at batch 32, x%.2f at %d)\n",
        s["base_ms"].get<double>(), s["per_item_ms"].get<double>(),
        s["forward_gain_32"].get<double>(), s["forward_gain_best"].get<double>(),
        s["forward_best_batch"].get<int>());
  }
  if (out.contains("forward_ops")) print_forward_ops(out["forward_ops"]);
  if (out.contains("cold_start_s")) {
    std::printf("cold start (file://) %.6f s, cached %.6f s (x%.3f)\n", num("cold_start_s"),
                num("cold_start_cached_s"), num("cached_vs_cold"));
  }
  if (out.contains("s3_cold_start_s")) {
    std::printf("cold start (s3://) %.6f s, cached %.6f s (x%.3f)\n", num("s3_cold_start_s"),
                num("s3_cold_start_cached_s"), num("s3_cached_vs_cold"));
  }
  if (out.contains("batching_gain")) {
    std::printf("batching gain x%.2f (%.0f vs %.0f req/s within p99 <= %.0f ms)\n",
                num("batching_gain"), num("throughput_batched_rps"),
                num("throughput_unbatched_rps"), num("slo_ms"));
  }
  if (out.contains("p99_ms")) {
    std::printf(
        "fleet: p50 %.1f ms p99 %.1f ms, %.0f req/s, dropped %.0f, 503 %.0f, "
        "replica-s %.1f vs static %.1f, recovered %.0f s after the step\n",
        num("p50_ms"), num("p99_ms"), num("throughput_rps"), num("dropped"), num("rejected_503"),
        num("replica_seconds"), num("static_peak_replica_seconds"), num("recover_after_step_s"));
  }
  if (out.contains("static")) {
    const json& s = out["static"];
    std::printf("static fleet of 2, same load: p50 %.1f ms p99 %.1f ms, %d s of %zu within the SLO "
                "(autoscaled: %d)\n",
                s["p50_ms"].get<double>(), s["p99_ms"].get<double>(),
                s["seconds_within_slo"].get<int>(), s["p99_ms_per_second"].size(),
                out["seconds_within_slo"].get<int>());
  }
}

Status measure(const BenchArgs& a, const std::string& model, const std::string& work, json out);

// Removes the bench's scratch directory however the bench ends (a part
// that fails returns early: its replicas are stopped by then, and what they
// printed is in the error).
struct ScratchDir {
  std::string path;
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

Status bench(const BenchArgs& a) {
  // Under $TMPDIR when set (a test points it at a directory of its own and
  // checks it is empty once the bench exits).
  const char* tmp = std::getenv("TMPDIR");
  const ScratchDir scratch{fmt::format("{}/kiln-bench-serve-{}",
                                       tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", ::getpid())};
  const std::string& work = scratch.path;
  fs::remove_all(work);
  fs::create_directories(work);
  std::string model = a.model;
  if (model.empty()) {
    model = work + "/ckpt";
    KILN_RETURN_IF_ERROR(write_checkpoint(model));
  }
  json out;
  out["slo_ms"] = a.slo_ms;
  BenchArgs args = a;
  if (a.part("service")) {
    KILN_ASSIGN_OR_RETURN(out["service_line"], service_line(model));
  }
  if (a.part("forward")) {
    KILN_ASSIGN_OR_RETURN(out["forward_ops"], forward_ops(model));
  }
  // Note [max_batch from the service line]: a batch larger than the one
  // with the forward pass's best items/s only adds latency; smaller gives up
  // throughput the model has. Without a service line, Triton's usual 32.
  if (args.max_batch <= 0) {
    args.max_batch =
        out.contains("service_line") ? out["service_line"]["forward_knee_batch"].get<int>() : 32;
  }
  out["max_batch"] = args.max_batch;
  return measure(args, model, work, std::move(out));
}

Status measure(const BenchArgs& a, const std::string& model, const std::string& work, json out) {
  // Every later part serves from this cache, warmed once (not measured).
  fs::create_directories(work + "/cache-warm");
  if (a.part("batching") || a.part("fleet") || a.part("probe")) {
    KILN_ASSIGN_OR_RETURN(
        Child w, start_replica({model, "--cache-dir", work + "/cache-warm"}, work + "/warm.out"));
    auto ok = wait_for(w, "cold start ([0-9.]+) s", 120);
    stop(w);
    KILN_RETURN_IF_ERROR(ok.status());
  }

  // 1. Cold starts: an empty node cache vs a warm one, with the weights on
  // the local disk (file://) and, as the design has them, in an object
  // store (s3rver on loopback).
  if (a.part("cold")) KILN_RETURN_IF_ERROR(cold_starts(a, model, work, "", &out));
  if (a.part("cold_s3") && !objstore::s3::LocalS3Server::installed()) {
    // Not a failure of what is measured: the other parts still run.
    out["s3_skipped"] = objstore::s3::LocalS3Server::kNotInstalled;
    std::fprintf(stderr, "bench serve: cold_s3 skipped: %s\n",
                 objstore::s3::LocalS3Server::kNotInstalled);
  } else if (a.part("cold_s3")) {
    KILN_ASSIGN_OR_RETURN(auto s3, objstore::s3::LocalS3Server::start("kiln-bench"));
    // The replicas find s3rver the way a user's would find S3.
    const auto o = s3->options();
    ::setenv("AWS_ENDPOINT_URL", o.endpoint.c_str(), 1);
    ::setenv("AWS_ACCESS_KEY_ID", o.access_key_id.c_str(), 1);
    ::setenv("AWS_SECRET_ACCESS_KEY", o.secret_access_key.c_str(), 1);
    const std::string url = s3->url("models/cnn");
    KILN_RETURN_IF_ERROR(write_checkpoint(url));
    KILN_RETURN_IF_ERROR(cold_starts(a, url, work, "s3_", &out));
  }

  // 2. Batching gain on one replica (one torch thread).
  std::vector<double> gains, batched_rps, single_rps;
  json ladders = json::array();
  json where = json::array();  // Note [Where a request's time goes]
  if (a.part("batching") && a.pin_load_gen) {
    // Where a replica pins its batch worker (KILN_SERVE_PIN_THREADS), the
    // load generator stays off that CPU: on the front's.
    (void)bench_cpus();  // the replicas' set, read before this thread is bound
    KILN_RETURN_IF_ERROR(serve::pin_calling_thread(serve::split_cpus(allowed_cpus()).front));
  }
  for (int run = 0; a.part("batching") && run < a.runs; ++run) {
    double rps[2];
    for (int batched = 0; batched < 2; ++batched) {
      KILN_ASSIGN_OR_RETURN(
          Child c,
          start_replica(
              {model, "--cache-dir", work + "/cache-warm", "--threads", "1", "--max-batch",
               batched ? std::to_string(a.max_batch) : "1", "--max-queue-delay-us",
               batched ? std::to_string(a.max_queue_delay_us) : "0", "--max-queue", "100000"},
              fmt::format("{}/batch-{}-{}.out", work, run, batched)));
      auto ready = wait_for(c, "(ready)", 120);
      json ladder = json::array();
      rps[batched] = ready.is_ok() ? max_rate_within_slo(c.port, a, 25, &ladder, &c) : 0;
      stop(c);
      KILN_RETURN_IF_ERROR(ready.status());
      const int max_batch = batched ? a.max_batch : 1;
      where.push_back({{"max_batch", max_batch}, {"run", run}, {"at_best", where_at_best(ladder)}});
      ladders.push_back({{"max_batch", max_batch}, {"run", run}, {"ladder", ladder}});
    }
    single_rps.push_back(rps[0]);
    batched_rps.push_back(rps[1]);
    gains.push_back(rps[0] > 0 ? rps[1] / rps[0] : 0);
  }
  if (a.part("batching") && a.pin_load_gen) {
    std::vector<int> all;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &bench_cpus())) all.push_back(cpu);
    }
    KILN_RETURN_IF_ERROR(serve::pin_calling_thread(all));
  }
  if (a.part("batching")) {
    out["pin_load_gen"] = a.pin_load_gen;
    out["batching_gain"] = median(gains);
    out["batching_gain_runs"] = stats(gains);
    out["throughput_batched_rps"] = median(batched_rps);
    out["throughput_unbatched_rps"] = median(single_rps);
    out["batching_ladders"] = ladders;
    out["batching_where"] = where;
  }
  if (a.part("probe")) {
    // One batched replica at one rate (to profile it from outside).
    KILN_ASSIGN_OR_RETURN(
        Child c, start_replica({model, "--cache-dir", work + "/cache-warm", "--threads", "1",
                                "--max-batch", std::to_string(a.max_batch), "--max-queue-delay-us",
                                std::to_string(a.max_queue_delay_us), "--max-queue", "100000"},
                               work + "/probe.out"));
    auto ready = wait_for(c, "(ready)", 120);
    json ladder = json::array();
    double achieved = 0;
    if (ready.is_ok()) {
      warm_up(c.port);
      ladder_step(c.port, a, a.probe_rps, &ladder, &achieved, &c);
    }
    stop(c);
    KILN_RETURN_IF_ERROR(ready.status());
    out["probe"] = ladder;
  }
  if (a.part("fleet")) KILN_RETURN_IF_ERROR(fleet_step(a, model, work, &out));
  if (a.json_out) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_summary(out);
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<BenchArgs>();
  auto* cmd = parent.add_subcommand("serve",
                                    "Serving load test: cold starts, batching gain, an "
                                    "autoscaled fleet under a step (docs/perf.md)");
  cmd->add_flag("--json", a->json_out, "JSON output");
  cmd->add_option("--slo-ms", a->slo_ms, "p99 latency SLO")->capture_default_str();
  cmd->add_option("--runs", a->runs, "Runs of the cold-start and batching measurements")
      ->capture_default_str();
  cmd->add_option("--rate-seconds", a->step_seconds, "Seconds per rate of the batching ladder")
      ->capture_default_str();
  cmd->add_option("--refine", a->refine,
                  "Bisections between the batching ladder's last rate within the SLO and the "
                  "first beyond it")
      ->capture_default_str();
  cmd->add_option("--model", a->model, "A checkpoint root to serve (default: a fresh CNN)");
  cmd->add_option("--parts", a->parts,
                  "Comma-separated parts to run: service (forward pass alone), forward (the "
                  "forward pass op by op per batch size, beside the core's FMA peak), cold (weights "
                  "on file://), cold_s3 (weights in s3rver on loopback), batching, fleet, probe "
                  "(one batched replica at --probe-rps)")
      ->capture_default_str();
  cmd->add_option("--max-batch", a->max_batch,
                  "The batched replica's max_batch (default: the batch size with the forward "
                  "pass's best items/s in the service part (within 3%), else 32)");
  cmd->add_option("--max-queue-delay-us", a->max_queue_delay_us,
                  "The batched replica's max_queue_delay")
      ->capture_default_str();
  cmd->add_flag("--pin-load-gen", a->pin_load_gen,
                "The batching part's load generator runs on every CPU but the last (where a "
                "replica started with KILN_SERVE_PIN_THREADS=1 runs its batch worker)");
  cmd->add_option("--fleet-max-batch", a->fleet_max_batch,
                  "The fleet's replicas' max_batch (default: --max-batch's)");
  cmd->add_option("--probe-rps", a->probe_rps,
                  "The probe part: one batched replica at this Poisson rate for --rate-seconds "
                  "(to profile it)");
  cmd->add_option("--target-queue", a->target_queue,
                  "The fleet's autoscaling target, outstanding requests per replica (default: "
                  "one replica's at 70% of its measured capacity, Note [The fleet's target])");
  cmd->add_option(
      "--capacity-rps", a->capacity_rps,
      "The fleet part: every replica serves at most this many req/s (kiln serve --capacity-rps, "
      "Note [A replica's capacity, enforced]), for a host where two replicas at full speed serve "
      "no more than one; the step is still sized from one and two replicas measured behind the "
      "router");
  cmd->callback(run_status([a]() -> Status { return bench(*a); }));
});

}  // namespace
}  // namespace kiln::cli
