#include "kiln/train/trainer.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kiln/base/blas_kernel.h"
#include "kiln/base/deadline.h"
#include "kiln/base/heap.h"
#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/data/loader.h"
#include "kiln/data/shard_cache.h"
#include "kiln/ddp/distributed_data_parallel.h"
#include "kiln/parallel/counting_allocator.h"
#include "kiln/parallel/zero/sharded_data_parallel.h"
#include "kiln/diag/metrics_server.h"
#include "kiln/diag/metrics_writer.h"
#include "kiln/diag/overhead_ab.h"
#include "kiln/diag/step_timer.h"
#include "kiln/diag/trace_session.h"
#include "kiln/elastic/worker_link.h"
#include "kiln/train/checkpoint_setup.h"
#include "kiln/train/ddp_sync_record.h"
#include "kiln/train/memory_cap.h"
#include "kiln/train/progress_line.h"
#include "kiln/train/resume.h"
#include "kiln/train/task.h"
#include "kiln/train/train_data.h"
#include "kiln/train/trainer_3d.h"
#include "kiln/train/optimizers.h"
#include "kiln/train/train_state.h"

namespace kiln::train {
namespace {

using diag::Phase;
using Clock = std::chrono::steady_clock;

const Knob<std::int64_t> kDiagAbSteps{
    "KILN_DIAG_AB_STEPS", 0,
    "benchmarking diagnosis (bench/diag_overhead.sh --ab): with a trace session, record only every "
    "other block of this many steps, pause system sampling in between, and log both blocks' step "
    "times (Note [Diagnosis overhead, A/B in one process]); 0 = record every step"};

// The last checkpoint: saved and committed (with every save before it).
constexpr std::chrono::seconds kFinalCheckpointTimeout = std::chrono::minutes(10);
// After the last evaluation: returning, closing the communicators (which
// waits for the peers) and exiting, beating meanwhile under kiln run.
constexpr std::chrono::seconds kTeardownTimeout = std::chrono::minutes(2);


// ---- evaluation -------------------------------------------------------------

struct EvalResult {
  double loss = 0;
  std::optional<double> accuracy;
};

// `busy` (under kiln run) keeps the agent from taking a long evaluation for
// a hang while each batch arrives within its deadline.
Result<EvalResult> evaluate(Task& task, Split& test, const TrainConfig& c, comm::Communicator& comm,
                            elastic::BusyBeat* busy) {
  task.module()->eval();
  data::Loader loader(test.cache.get(), test.index,
                      {.rank = comm.rank(), .world = comm.size(),
                       .sampler = {.shuffle = false},
                       .batch_size = static_cast<std::uint64_t>(c.eval.batch_size),
                       .workers = c.data.workers, .queue_depth = c.data.queue_depth});
  EvalSums sums;
  while (true) {
    KILN_ASSIGN_OR_RETURN(auto batch, loader.next(Deadline::after_seconds(kBatchTimeoutS)));
    if (!batch) break;
    KILN_RETURN_IF_ERROR(task.evaluate(*batch, &sums));
    if (busy != nullptr) busy->extend(Deadline::after_seconds(kBatchTimeoutS));
  }
  task.module()->train();
  if (busy != nullptr) busy->extend(Deadline::after(kCollectiveTimeout));
  double total[3] = {sums.loss_sum, sums.correct, sums.count};
  KILN_RETURN_IF_ERROR(comm.allreduce(total, 3, comm::DataType::kFloat64, comm::ReduceOp::kSum)
                           ->wait(kCollectiveTimeout));
  if (total[2] == 0) return failed_precondition("the test split is empty: nothing to evaluate");
  EvalResult r{total[0] / total[2], std::nullopt};
  if (task.classification()) r.accuracy = total[1] / total[2];
  return r;
}

constexpr double kMiB = 1 << 20;

// The training state per rank of each strategy for this model (the ZeRO
// formulas); ResourceExhausted before anything runs when the chosen one is
// over the per-rank cap (kiln/train/memory_cap.h), naming the strategies
// that would fit.
Status check_state_fits(const TrainConfig& c, const MemoryCap& memory_cap, std::int64_t parameters,
                        int world) {
  const auto cap = static_cast<std::size_t>(memory_cap.mib * kMiB);
  const parallel::zero::OptimizerOptions optimizer = zero_options(c).optimizer;
  const auto precision = zero_options(c).precision;
  auto need = [&](Strategy s) {
    const int stage = s == Strategy::kDdp ? 0 : s == Strategy::kZero1 ? 1 : s == Strategy::kZero2 ? 2 : 3;
    return parallel::zero::state_bytes_formula(stage, precision, optimizer, parameters, world);
  };
  if (need(c.parallel.strategy) <= cap) return Status::ok();
  std::vector<std::string> fit;
  for (Strategy s : {Strategy::kZero1, Strategy::kZero2, Strategy::kZero3}) {
    if (need(s) <= cap) fit.push_back(fmt::format("{} ({:.1f} MiB)", strategy_name(s), need(s) / kMiB));
  }
  return resource_exhausted(fmt::format(
      "out of memory: [parallel] strategy = \"{}\" holds {:.1f} MiB of training state per rank "
      "({} parameters, {} ranks), over the per-rank cap of {:.1f} MiB ({}); {}",
      strategy_name(c.parallel.strategy), need(c.parallel.strategy) / kMiB, parameters, world,
      memory_cap.mib, memory_cap.source,
      fit.empty() ? std::string("no strategy fits on this many ranks: add ranks or use bf16")
                  : fmt::format("{} would fit", fmt::join(fit, ", "))));
}

}  // namespace

Result<TrainResult> run_training(const TrainOptions& options, comm::Communicator& comm) {
  const TrainConfig& c = options.config;
  // Every step allocates the same activation- and gradient-sized tensors
  // again: keep what the last step freed instead of faulting in fresh pages
  // (Note [Keep freed tensor memory], kiln/base/heap.h; DDP's backward took
  // 1.5-8 k page faults a step without it, docs/perf.md, issue 24, session
  // 16). A process-wide allocator setting, so made here, where the process
  // becomes a training process, not inside a library factory. Not for the
  // sharded strategies: they are for runs bound by memory, where a freed
  // gather or staging block must go back (kept, a ZeRO-3 rank went past a
  // 193 MiB cgroup and was killed: test parallel.memory_cap_cgroup).
  if (c.parallel.strategy == Strategy::kDdp || c.parallel.three_d()) keep_freed_heap_memory();
  if (c.parallel.three_d()) return run_training_3d(options, comm);
  const int rank = comm.rank(), world = comm.size();
  const auto started = Clock::now();
  const std::int64_t per_step_rank = c.train.batch_size / world;
  if (c.train.batch_size % (static_cast<std::int64_t>(world) * c.train.grad_accum) != 0) {
    return invalid_argument(fmt::format(
        "train.batch_size {} must be divisible by world size {} x train.grad_accum {}",
        c.train.batch_size, world, c.train.grad_accum));
  }
  const auto micro = static_cast<std::uint64_t>(per_step_rank / c.train.grad_accum);

  const int threads = threads_per_rank(c.train);
  torch::set_num_threads(threads);
  set_openblas_threads(threads);  // Note [OpenBLAS's own thread pool]
  // Same initial model on every rank (DDP broadcasts rank 0's anyway); the
  // generator then differs per rank so dropout masks do.
  // The per-rank memory cap stands for a device's memory: it applies from
  // the moment the model is placed (replicated or sharded); the model is
  // built whole in host memory first, as FSDP builds it on the CPU (or the
  // meta device) before sharding it onto the devices.
  // Read before the model exists: the cgroup's usage now is what the process
  // holds besides its tensors.
  KILN_ASSIGN_OR_RETURN(const MemoryCap tensor_cap, memory_cap(c.parallel));
  parallel::CountingAllocator* memory = nullptr;
  if (tensor_cap.mib > 0) {
    memory = &parallel::CountingAllocator::install();
    if (c.parallel.memory_cap_from_cgroup) {
      log()->info("memory: per-rank cap {:.1f} MiB of tensors ({})", tensor_cap.mib, tensor_cap.source);
    }
  }
  torch::manual_seed(c.train.seed);
  std::unique_ptr<Task> task = make_task(c.model);
  if (memory != nullptr) {
    std::int64_t parameters = 0;
    for (const auto& p : task->module()->parameters()) parameters += p.numel();
    KILN_RETURN_IF_ERROR(check_state_fits(c, tensor_cap, parameters, world));
  }
  torch::manual_seed(c.train.seed + 1000003ull * static_cast<std::uint64_t>(rank + 1));

  KILN_RETURN_IF_ERROR(prepare_data(c.data, comm));
  KILN_ASSIGN_OR_RETURN(Split train_split, open_split(c.data, "train"));
  KILN_ASSIGN_OR_RETURN(Split test_split, open_split(c.data, "test"));

  // Data parallel (replicated model, LibTorch optimizer) or sharded (the
  // wrapper owns the optimizer state): exactly one of the two is set.
  std::unique_ptr<ddp::DistributedDataParallel> model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<parallel::zero::ShardedDataParallel> sharded;
  if (c.parallel.strategy == Strategy::kDdp) {
    ddp::DdpOptions ddp_options;
    if (c.ddp.bucket_cap_mib) {
      ddp_options.bucket_cap_bytes = static_cast<std::size_t>(*c.ddp.bucket_cap_mib * (1 << 20));
    } else {
      ddp_options.auto_bucket_cap = true;
    }
    ddp_options.compress_bf16 = c.ddp.bf16;
    KILN_ASSIGN_OR_RETURN(model, ddp::DistributedDataParallel::create(task->module(), comm, ddp_options));
    optimizer = make_optimizer(c.optim, task->module()->parameters());
  } else {
    KILN_ASSIGN_OR_RETURN(sharded, parallel::zero::ShardedDataParallel::create(task->module(), comm,
                                                                               zero_options(c)));
    log()->info("{}: {} parameters in {} units, {} precision; {:.1f} MiB of training state per rank",
                strategy_name(c.parallel.strategy), sharded->parameter_count(), sharded->unit_count(),
                c.parallel.precision == Precision::kBf16 ? "bf16" : "fp32",
                static_cast<double>(sharded->formula_state_bytes()) / (1 << 20));
  }
  if (memory != nullptr) {
    memory->set_cap(static_cast<std::size_t>(tensor_cap.mib * kMiB));
    memory->reset_peak();
    if (memory->live_bytes() > memory->cap()) {
      return resource_exhausted(fmt::format(
          "out of memory: the placed model holds {:.1f} MiB on this rank, over the cap of {:.1f} MiB ({})",
          static_cast<double>(memory->live_bytes()) / kMiB, tensor_cap.mib, tensor_cap.source));
    }
  }

  KILN_ASSIGN_OR_RETURN(CheckpointSetup ckpt, open_checkpoints(c.checkpoint, comm));
  Progress progress;
  RestoreFn restore = [&](const ckpt::LoadedState& loaded) -> Result<Progress> {
    if (sharded) return restore_sharded_state(loaded, *sharded, rank, comm);
    return restore_state(loaded, *task->module(), *optimizer, rank);
  };
  // Data parallel: a recovery from memory restores the parameters where they lie.
  const std::vector<ckpt::WholeTarget> in_place =
      sharded ? std::vector<ckpt::WholeTarget>() : whole_targets(*task->module());
  KILN_ASSIGN_OR_RETURN(auto resumed, resume(c, restore, /*whole=*/!sharded, comm, ckpt.memory.get(),
                                             ckpt.comm.get(), restarted_by_launcher(), in_place));
  if (resumed) progress = resumed->progress;
  const std::int64_t start_step = progress.step;

  std::unique_ptr<diag::MetricsWriter> metrics;
  if (!options.metrics_json.empty() && rank == 0) {
    KILN_ASSIGN_OR_RETURN(metrics, diag::MetricsWriter::open(options.metrics_json));
  }
  ProgressLine line(c.train.max_steps, c.train.log_every, options.progress && rank == 0);

  // Diagnosis (docs/diag.md): bottlenecks injected on purpose, the trace
  // session (summaries, live verdict, --trace-dir) and the /metrics endpoint.
  const diag::RankInjections inject = diag::injections_for_rank(options.diag.inject, rank);
  // A checkpoint is collective: if any rank injects ckpt-sync, every rank
  // saves every step; the injecting ranks wait for each commit.
  const bool ckpt_every_step =
      std::any_of(options.diag.inject.begin(), options.diag.inject.end(),
                  [](const diag::Injection& i) { return i.kind == diag::InjectKind::kCheckpointSync; });
  if (ckpt_every_step && !ckpt.enabled()) {
    return invalid_argument("--inject ckpt-sync needs checkpoints: set checkpoint.dir or --ckpt-dir");
  }
  std::unique_ptr<diag::TraceSession> session;
  if (options.diag.session()) {
    KILN_ASSIGN_OR_RETURN(session, diag::TraceSession::open(
                                       options.diag.trace_dir, rank,
                                       {.world_size = world, .summary_every = options.diag.every,
                                        .sample_interval_s = options.diag.sample_interval_s}));
  }
  std::unique_ptr<diag::MetricsServer> metrics_server;
  if (options.diag.metrics_port >= 0) {
    const char* local = std::getenv("LOCAL_RANK");
    int port = options.diag.metrics_port;
    if (port > 0 && local != nullptr) port += std::atoi(local);
    KILN_ASSIGN_OR_RETURN(metrics_server, diag::MetricsServer::start(options.diag.metrics_host, port, rank));
    log()->info("metrics: serving Prometheus text on port {} at /metrics (bound to {})",
                metrics_server->port(), options.diag.metrics_host);
  }

  EpochStream stream(&train_split, c.data, micro, rank, world, c.train.seed,
                     {progress.epoch, progress.consumed});
  diag::StepTimer timer(rank);
  auto snapshot = [&](std::int64_t step, Snapshot* snap) {
    data::SamplerState s = stream.state();
    if (sharded) return capture_sharded_state(*sharded, {step, s.epoch, s.consumed}, rank, world, snap);
    return capture_state(*task->module(), *optimizer, {step, s.epoch, s.consumed}, rank, world, snap);
  };
  elastic::WorkerLink& elastic = elastic::WorkerLink::instance();
  auto run_eval = [&](std::int64_t step) -> Result<EvalResult> {
    // Note [Busy beats end at the deadline] (worker_link.h): evaluating is
    // not a step, and may outlast kiln run's --hang-timeout.
    auto busy = elastic.busy(Deadline::after_seconds(kBatchTimeoutS));
    diag::inject_sleep(inject.eval_delay_ms);
    KILN_ASSIGN_OR_RETURN(EvalResult e, evaluate(*task, test_split, c, comm, busy.get()));
    if (metrics) KILN_RETURN_IF_ERROR(metrics->write_eval(step, e.loss, e.accuracy));
    if (session) KILN_RETURN_IF_ERROR(session->record_eval(step, e.loss, e.accuracy));
    line.eval(step, e.loss, e.accuracy);
    return e;
  };

  std::optional<std::int64_t> stopped_at;  // asked to stop after this step
  std::int64_t last_saved = start_step;
  // The diagnosis' own cost, outside the steps: recording (this thread's
  // work) and the summary exchange (which also absorbs the ranks' skew).
  double diag_record_s = 0, diag_exchange_s = 0, step_s_sum = 0;
  std::int64_t diag_steps = 0;
  diag::OverheadAB ab(session ? kDiagAbSteps.get() : 0);
  task->module()->train();
  for (std::int64_t step = start_step; step < c.train.max_steps; ++step) {
    const auto loop_t0 = Clock::now();
    const bool record = ab.recorded(step - start_step);
    if (ab.enabled()) session->set_sampling(record);
    timer.begin_step(step);
    const double lr = learning_rate(c.optim, step, c.train.max_steps);
    if (optimizer) set_learning_rate(*optimizer, lr);
    double loss_sum = 0, backward_s = 0;
    for (std::int64_t m = 0; m < c.train.grad_accum; ++m) {
      std::optional<data::Batch> batch;
      {
        auto scope = timer.phase(Phase::kDataWait);
        diag::inject_sleep(inject.data_delay_ms);
        KILN_ASSIGN_OR_RETURN(batch, stream.next());
      }
      torch::Tensor loss;
      {
        auto scope = timer.phase(Phase::kForward);
        diag::inject_spin(inject.compute_spin_ms);
        KILN_ASSIGN_OR_RETURN(loss, task->loss(*batch));
        loss = loss / static_cast<double>(c.train.grad_accum);
      }
      auto t0 = Clock::now();
      if (sharded) {
        // Reduced every micro-batch into the gradient shares (no whole
        // gradient is kept between micro-batches).
        KILN_RETURN_IF_ERROR(sharded->backward(loss));
      } else if (m + 1 < c.train.grad_accum) {
        auto no_sync = model->no_sync();
        KILN_RETURN_IF_ERROR(model->backward(loss));
      } else {
        KILN_RETURN_IF_ERROR(model->backward(loss));
      }
      backward_s += seconds_since(t0);
      loss_sum += loss.item<double>();
    }
    if (inject.comm_delay_ms > 0) {
      auto scope = timer.phase(Phase::kExposedComm);
      diag::inject_sleep(inject.comm_delay_ms);
    }
    if (sharded) {
      const parallel::zero::ZeroSyncStats& sync = sharded->last_sync();
      const double exposed = sync.exposed_comm_s + sync.gather_wait_s;
      timer.add(Phase::kExposedComm, exposed);
      timer.add(Phase::kBackward, std::max(0.0, backward_s - sync.exposed_comm_s));
      timer.current().comm_bytes = sync.bytes;
      timer.current().comm_s = exposed;
    } else {
      const ddp::SyncStats& sync = model->last_sync();
      timer.add(Phase::kExposedComm, sync.exposed_comm_s);
      timer.add(Phase::kBackward, std::max(0.0, backward_s - sync.exposed_comm_s));
      timer.current().comm_bytes = sync.bytes;
      add_ddp_sync(sync, timer.current());
    }
    timer.current().cache_hit_rate = stream.cache_hit_rate();
    {
      auto scope = timer.phase(Phase::kOptimizer);
      if (sharded) {
        if (c.optim.grad_clip > 0) KILN_RETURN_IF_ERROR(sharded->clip_grad_norm(c.optim.grad_clip).status());
        KILN_RETURN_IF_ERROR(sharded->step(lr));
      } else {
      if (c.optim.grad_clip > 0) {
        torch::nn::utils::clip_grad_norm_(task->module()->parameters(), c.optim.grad_clip);
      }
      optimizer->step();
      // In place, so .grad stays a view into DDP's buckets (LibTorch 2.x's
      // zero_grad() would drop it and cost a copy per gradient next step).
      for (auto& p : task->module()->parameters()) {
        if (p.grad().defined()) p.mutable_grad().zero_();
      }
      }
    }
    const std::int64_t done = step + 1;
    if (ckpt.enabled() &&
        (ckpt_every_step || (c.checkpoint.every > 0 && done % c.checkpoint.every == 0)) &&
        done < c.train.max_steps) {
      auto scope = timer.phase(Phase::kCheckpointStall);
      Snapshot snap;
      KILN_RETURN_IF_ERROR(snapshot(done, &snap));
      if (inject.ckpt_sync) {
        KILN_RETURN_IF_ERROR(ckpt.checkpointer->save(snap.view, done, Deadline::after_seconds(600)));
      } else {
        KILN_RETURN_IF_ERROR(ckpt.checkpointer->save_async(snap.view, done).status());
      }
      last_saved = done;
    }
    diag::StepRecord step_record =
        timer.end_step(loss_sum, static_cast<std::uint64_t>(c.train.batch_size));
    if (metrics) KILN_RETURN_IF_ERROR(metrics->write_step(step_record));
    line.step(step_record);
    const auto diag_t0 = Clock::now();
    if (session && record) KILN_RETURN_IF_ERROR(session->record_step(step_record));
    if (metrics_server && record) metrics_server->record_step(step_record);
    diag_record_s += seconds_since(diag_t0);
    // Every rank reaches this after the same steps, so the exchange lines up.
    if (session && record && session->summary_due()) {
      const auto exchange_t0 = Clock::now();
      KILN_ASSIGN_OR_RETURN(diag::Verdict verdict, session->summarize(&comm, kCollectiveTimeout));
      if (rank == 0) line.note(diag::verdict_line(verdict));
      diag_exchange_s += seconds_since(exchange_t0);
    }
    ab.add(step - start_step, seconds_since(loop_t0));
    step_s_sum += step_record.step_s;
    ++diag_steps;
    if (c.eval.every > 0 && done % c.eval.every == 0 && done < c.train.max_steps) {
      KILN_RETURN_IF_ERROR(run_eval(done).status());
    }
    // Under kiln run: tell the agent a step finished, and stop at a
    // checkpoint boundary if any rank was asked to (agent.h, Note [Stopping
    // at a checkpoint boundary]).
    if (elastic.active()) {
      elastic.heartbeat();
      KILN_ASSIGN_OR_RETURN(bool stop, any_rank_asked_to_stop(comm, elastic.stop_requested()));
      if (stop) {
        log()->info("stop requested: checkpointing step {} and exiting", done);
        stopped_at = done;
        break;
      }
    }
    if (done == options.crash_after_step) {
      log()->warn("crash injected after step {}: SIGKILL", done);
      ::kill(::getpid(), SIGKILL);
    }
  }

  if (session) {
    // The sampler thread's CPU is the diagnosis' work off this thread (the
    // /metrics server only works when scraped); read before close() stops it.
    const double sampler_cpu_s = session->sampler_cpu_seconds();
    KILN_RETURN_IF_ERROR(session->close());  // the trace's closing "]"
    // bench/diag_overhead.sh reads this line.
    const double n = static_cast<double>(std::max<std::int64_t>(1, diag_steps));
    auto pct = [&](double s) { return step_s_sum > 0 ? 100 * s / step_s_sum : 0.0; };
    log()->info(
        "diag: recording cost {:.1f} us per step ({:.3f}% of the mean step time); summary "
        "exchange {:.1f} us per step ({:.3f}%); sampler thread CPU {:.1f} ms ({:.3f}%)",
        1e6 * diag_record_s / n, pct(diag_record_s), 1e6 * diag_exchange_s / n,
        pct(diag_exchange_s), 1e3 * sampler_cpu_s, pct(sampler_cpu_s));
    if (ab.enabled()) {
      // bench/diag_overhead.sh --ab reads this line.
      diag::OverheadAB::Result r = ab.result();
      log()->info(
          "diag A/B: recorded blocks {:.3f} ms/step, unrecorded {:.3f} ms/step, recorded/unrecorded "
          "{:.4f} (median of {} block pairs of {} steps)",
          1e3 * r.recorded_s, 1e3 * r.unrecorded_s, r.ratio, r.pairs, kDiagAbSteps.get());
    }
  }
  TrainResult result;
  result.start_step = start_step;
  result.resumed_in_place = resumed ? resumed->in_place : 0;
  result.steps = stopped_at ? *stopped_at : std::max(start_step, c.train.max_steps);
  result.stopped = stopped_at.has_value();
  // No more steps from here to the exit: the last save and the wait for
  // every save to commit (minutes on a large model), the last evaluation,
  // closing and exiting. Beat meanwhile, each part bounded by its own
  // deadline (Note [Busy beats end at the deadline]).
  const Deadline finish = Deadline::after(kFinalCheckpointTimeout);
  elastic.finishing(finish);
  if (ckpt.enabled()) {
    if (result.steps > last_saved) {
      Snapshot snap;
      KILN_RETURN_IF_ERROR(snapshot(result.steps, &snap));
      KILN_RETURN_IF_ERROR(ckpt.checkpointer->save(snap.view, result.steps, finish));
    }
    KILN_RETURN_IF_ERROR(ckpt.checkpointer->wait(finish));
  }
  // A stopped (preempted) run keeps its in-memory snapshots for the restart,
  // and leaves old steps' deletes to the next generation's retention.
  if (!result.stopped) ckpt.drop_memory_snapshots();
  if (!result.stopped) ckpt.finish_retention(finish);
  // The digest (and, for tests, the parameters) of the final model; a
  // sharded model is read one gathered unit at a time.
  auto read_parameters = [&](bool keep) -> Status {
    ParameterDigest digest;
    auto add = [&](const torch::Tensor& p) {
      digest.add(p);
      if (!keep) return;
      torch::Tensor t = p.detach().to(torch::kFloat32).contiguous().view(-1);
      result.parameters.insert(result.parameters.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    };
    if (sharded) {
      KILN_RETURN_IF_ERROR(sharded->visit_parameters(add));
    } else {
      for (const auto& p : task->module()->parameters()) add(p);
    }
    result.parameter_digest = digest.value();
    return Status::ok();
  };
  if (result.stopped) {
    // The grace period is for the checkpoint, not for an evaluation.
    elastic.finishing(Deadline::after(kTeardownTimeout));
    line.finish();
    KILN_RETURN_IF_ERROR(read_parameters(false));
    result.seconds = seconds_since(started);
    return result;
  }
  // A bound of its own for the evaluation (which also beats per batch).
  elastic.finishing(Deadline::after(kFinalCheckpointTimeout));
  KILN_ASSIGN_OR_RETURN(EvalResult final_eval, run_eval(result.steps));
  elastic.finishing(Deadline::after(kTeardownTimeout));
  line.finish();
  result.eval_loss = final_eval.loss;
  result.eval_accuracy = final_eval.accuracy;
  KILN_RETURN_IF_ERROR(read_parameters(options.keep_parameters));
  result.seconds = seconds_since(started);
  if (memory != nullptr) {
    log()->info("memory: peak {:.1f} MiB of tensors on this rank since the model was placed, cap {:.1f} MiB",
                static_cast<double>(memory->peak_bytes()) / kMiB, tensor_cap.mib);
  }
  return result;
}

}  // namespace kiln::train
