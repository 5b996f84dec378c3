#include "kiln/train/trainer_3d.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kiln/base/blas_kernel.h"
#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ddp/distributed_data_parallel.h"
#include "kiln/diag/metrics_writer.h"
#include "kiln/diag/step_timer.h"
#include "kiln/diag/trace_session.h"
#include "kiln/elastic/worker_link.h"
#include "kiln/parallel/mesh/device_mesh.h"
#include "kiln/parallel/pipeline/engine.h"
#include "kiln/train/batch_tensors.h"
#include "kiln/train/checkpoint_setup.h"
#include "kiln/train/ddp_sync_record.h"
#include "kiln/train/gpt_3d.h"
#include "kiln/train/gpt_3d_state.h"
#include "kiln/train/gpt_3d_zero.h"
#include "kiln/train/optimizers.h"
#include "kiln/train/progress_line.h"
#include "kiln/train/resume.h"
#include "kiln/train/task.h"
#include "kiln/train/train_data.h"
#include "kiln/train/train_state.h"

namespace kiln::train {
namespace {

using Clock = std::chrono::steady_clock;
using diag::Phase;
namespace pp = parallel::pipeline;


struct TokenBatch {
  torch::Tensor inputs, targets;  // int64 [B, seq_len]
};

Result<TokenBatch> token_batch(const data::Batch& batch, const ModelConfig& m) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor tokens, column_view(batch, "tokens"));
  if (tokens.scalar_type() != torch::kInt32 || tokens.dim() != 2 || tokens.size(1) != m.seq_len + 1) {
    return invalid_argument(fmt::format("column 'tokens' must be int32 [B, {}] (model.seq_len + 1)", m.seq_len + 1));
  }
  torch::Tensor t = tokens.to(torch::kLong);
  if (t.max().item<std::int64_t>() >= m.vocab || t.min().item<std::int64_t>() < 0) {
    return invalid_argument(fmt::format("a token is outside the vocabulary 0..{}", m.vocab - 1));
  }
  return TokenBatch{t.narrow(1, 0, m.seq_len), t.narrow(1, 1, m.seq_len)};
}

// Data parallelism across the pipeline replicas: kiln::ddp per model chunk
// and a LibTorch optimizer, or ZeRO-1 (gpt_3d_zero.h).
class ReplicaSync {
 public:
  static Result<std::unique_ptr<ReplicaSync>> create(const TrainConfig& c, Gpt3d& model, comm::Communicator& dp,
                                                     int tp_rank) {
    auto s = std::unique_ptr<ReplicaSync>(new ReplicaSync(c));
    if (c.parallel.strategy == Strategy::kZero1) {
      KILN_ASSIGN_OR_RETURN(s->zero_, Gpt3dZero::create(model, dp, tp_rank, zero_options(c), c.optim.grad_clip > 0));
      return s;
    }
    for (int chunk = 0; chunk < model.chunk_count(); ++chunk) {
      ddp::DdpOptions o;
      if (c.ddp.bucket_cap_mib) o.bucket_cap_bytes = static_cast<std::size_t>(*c.ddp.bucket_cap_mib * (1 << 20));
      o.compress_bf16 = c.ddp.bf16;
      KILN_ASSIGN_OR_RETURN(auto w, ddp::DistributedDataParallel::create(model.chunk_module(chunk), dp, o));
      s->ddp_.push_back(std::move(w));
    }
    std::vector<torch::Tensor> params;
    for (const Gpt3dParam& p : model.params()) params.push_back(p.value);
    s->optimizer_ = make_optimizer(c.optim, params);
    return s;
  }

  // Backpropagates one micro-batch of `chunk`; with ddp, the chunk's last
  // one of the step also averages its gradients over the replicas (ZeRO-1
  // reduce-scatters every micro-batch's into the shares).
  Status backward(int chunk, const torch::Tensor& scalar, bool last) {
    if (zero_) return zero_->backward(chunk, scalar);
    auto& d = *ddp_[static_cast<std::size_t>(chunk)];
    if (last) return d.backward(scalar);
    auto no_sync = d.no_sync();
    return d.backward(scalar);
  }

  double exposed_comm_s() const {
    if (zero_) return zero_->exposed_comm_s();
    double s = 0;
    for (const auto& d : ddp_) s += d->last_sync().exposed_comm_s;
    return s;
  }

  // The step's gradient sync for diagnosis (ddp): each chunk's buckets, how
  // long their sync took, and how many were issued while the backward that
  // produced them still ran (overlap).
  void describe_sync(diag::StepRecord& r) const {
    if (zero_) return;
    r.collectives_in_backward = 0;
    for (const auto& d : ddp_) add_ddp_sync(d->last_sync(), r);
  }

  // Clipping by the global norm over every shard of the model.
  Status step(double lr, Gpt3d& model, comm::Communicator& world, int dp_size, int tp_rank) {
    if (zero_) {
      if (c_.optim.grad_clip > 0) KILN_RETURN_IF_ERROR(zero_->clip_grad_norm(c_.optim.grad_clip, world).status());
      return zero_->step(lr);
    }
    set_learning_rate(*optimizer_, lr);
    if (c_.optim.grad_clip > 0) KILN_RETURN_IF_ERROR(clip(model, world, dp_size, tp_rank));
    optimizer_->step();
    for (const Gpt3dParam& p : model.params()) {
      if (p.value.grad().defined()) p.value.mutable_grad().zero_();
    }
    return Status::ok();
  }

  // Checkpoint state in the layout-free mesh/ form (gpt_3d_state.h);
  // collective over the data group with ZeRO-1, which gathers its shares.
  Status capture(Gpt3d& model, const parallel::MeshLayout& mesh, int rank, const Progress& progress, Snapshot* out) {
    if (!zero_) return capture_3d_state(model, *optimizer_, mesh, rank, progress, out);
    OptimizerRecord record;
    KILN_ASSIGN_OR_RETURN(std::vector<ShardState> states, zero_->gather_states(&record));
    return capture_3d_states(model, states, record, mesh, rank, progress, out);
  }

  Result<Progress> restore(const ckpt::LoadedState& loaded, Gpt3d& model, int rank) {
    if (!zero_) return restore_3d_state(loaded, model, *optimizer_, rank);
    OptimizerRecord record;
    KILN_ASSIGN_OR_RETURN(std::vector<ShardState> states, load_3d_states(loaded, model, rank, &record));
    KILN_RETURN_IF_ERROR(zero_->restore_states(states, record, loaded.dir));
    KILN_RETURN_IF_ERROR(restore_rng(loaded, rank));
    return restore_progress(loaded);
  }

 private:
  explicit ReplicaSync(const TrainConfig& c) : c_(c) {}

  // LibTorch's clip_grad_norm_ over the whole model: replicated parameters
  // count once (tensor rank 0), replicas' identical gradients once (/ dp).
  Status clip(Gpt3d& model, comm::Communicator& world, int dp_size, int tp_rank) {
    double sq = 0;
    for (const Gpt3dParam& p : model.params()) {
      if (!p.value.grad().defined() || (p.spec.replicated() && tp_rank != 0)) continue;
      sq += p.value.grad().pow(2).sum().item<double>();
    }
    KILN_RETURN_IF_ERROR(world.allreduce(&sq, 1, comm::DataType::kFloat64, comm::ReduceOp::kSum)->wait(kCollectiveTimeout));
    const double norm = std::sqrt(sq / dp_size);
    const double coef = c_.optim.grad_clip / (norm + 1e-6);
    if (coef < 1) {
      for (const Gpt3dParam& p : model.params()) {
        if (p.value.grad().defined()) p.value.mutable_grad().mul_(coef);
      }
    }
    return Status::ok();
  }

  TrainConfig c_;
  std::vector<std::unique_ptr<ddp::DistributedDataParallel>> ddp_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // ddp
  std::unique_ptr<Gpt3dZero> zero_;
};

// What the pipeline engine asks of the model for one step (or evaluation).
struct StepModel {
  Gpt3d* model;
  int microbatches = 1;
  std::vector<TokenBatch> batches;  // this replica's micro-batches
  ReplicaSync* sync = nullptr;      // null: evaluation
  torch::ScalarType activation_dtype = torch::kFloat32;  // bf16 precision: what the stages send
  double eval_loss_sum = 0, eval_correct = 0, eval_count = 0;

  pp::StageCallbacks callbacks() {
    pp::StageCallbacks cb;
    cb.forward = [this](int chunk, int mb, const torch::Tensor& input) -> torch::Tensor {
      const TokenBatch& b = batches.at(static_cast<std::size_t>(mb));
      torch::Tensor out = model->forward(chunk, model->holds_embedding(chunk) ? b.inputs : input);
      if (!model->holds_head(chunk)) return out;
      if (sync == nullptr) {
        auto [loss, correct] = model->loss_sum_and_correct(out, b.targets);
        eval_loss_sum += loss;
        eval_correct += correct;
        eval_count += static_cast<double>(b.targets.numel());
        return torch::zeros({});
      }
      return model->loss(out, b.targets) / static_cast<double>(microbatches);
    };
    cb.backward = [this](int chunk, int, const torch::Tensor& scalar, bool last) {
      return sync->backward(chunk, scalar, last);
    };
    cb.input_shape = [this](int) {
      return model->activation_shape(batches.front().inputs.size(0));
    };
    cb.activation_dtype = activation_dtype;
    return cb;
  }
};

}  // namespace

Result<TrainResult> run_training_3d(const TrainOptions& options, comm::Communicator& world) {
  const TrainConfig& c = options.config;
  const auto started = Clock::now();
  const int rank = world.rank();
  KILN_ASSIGN_OR_RETURN(pp::ScheduleKind kind, pp::parse_schedule(c.parallel.schedule));
  if (c.model.kind != ModelKind::kGpt) {
    return invalid_argument("tensor and pipeline parallelism split the GPT: set model.kind = \"gpt\"");
  }
  if (c.parallel.strategy != Strategy::kDdp && c.parallel.strategy != Strategy::kZero1) {
    return invalid_argument(fmt::format("parallel.strategy = \"{}\": with tp or pp > 1 the replicas use ddp or zero1",
                                        strategy_name(c.parallel.strategy)));
  }
  if (c.parallel.precision == Precision::kBf16 && c.parallel.strategy != Strategy::kZero1) {
    return invalid_argument("parallel.precision = \"bf16\" with tp or pp > 1 needs parallel.strategy = \"zero1\" "
                            "(it keeps the fp32 master weights)");
  }
  if (c.train.grad_accum != 1) {
    return invalid_argument("train.grad_accum must be 1 with tp or pp > 1: parallel.microbatches splits each step");
  }
  KILN_ASSIGN_OR_RETURN(auto mesh, parallel::DeviceMesh::create(
                                       world, {.tp = c.parallel.tp, .pp = c.parallel.pp,
                                               .wrap_channels = kind == pp::ScheduleKind::kInterleaved}));
  const parallel::MeshShape shape = mesh->layout().shape();
  const parallel::MeshCoord at = mesh->coord();
  const pp::ScheduleSpec spec{kind, shape.pp, c.parallel.microbatches, c.parallel.chunks};
  KILN_RETURN_IF_ERROR(pp::validate(spec));
  const std::int64_t per_replica = c.train.batch_size / shape.dp;
  if (c.train.batch_size % (static_cast<std::int64_t>(shape.dp) * c.parallel.microbatches) != 0) {
    return invalid_argument(fmt::format("train.batch_size {} must be divisible by dp {} x parallel.microbatches {}",
                                        c.train.batch_size, shape.dp, c.parallel.microbatches));
  }
  const auto micro = static_cast<std::uint64_t>(per_replica / c.parallel.microbatches);

  const int threads = threads_per_rank(c.train);
  torch::set_num_threads(threads);
  set_openblas_threads(threads);  // Note [OpenBLAS's own thread pool] (kiln/base/blas_kernel.h)

  // The whole model as one process builds it, then this rank's shards.
  torch::manual_seed(c.train.seed);
  std::unique_ptr<Gpt3d> model;
  {
    std::unique_ptr<Task> whole = make_task(c.model);
    KILN_ASSIGN_OR_RETURN(model, Gpt3d::create(c.model, *whole->module(), mesh->layout(), rank, mesh->tensor(),
                                               {.chunks = spec.chunks, .stage_layers = c.parallel.stage_layers,
                                                .sequence_parallel = c.parallel.sequence_parallel}));
  }
  // Dropout: the ranks of a tensor group draw the same masks (their
  // activations are replicated), the replicas different ones.
  torch::manual_seed(c.train.seed + 1000003ull * static_cast<std::uint64_t>(at.dp + 1) + 7919ull * at.pp);
  log()->info("3D parallel: {} ({}), {} schedule, {} micro-batches of {} samples, {} chunk(s) per rank, {} across "
              "replicas, {}",
              mesh->layout().describe_shape(), mesh->describe(), pp::schedule_name(kind), spec.microbatches, micro,
              spec.chunks, strategy_name(c.parallel.strategy),
              c.parallel.precision == Precision::kBf16 ? "bf16 (fp32 masters)" : "fp32");

  KILN_RETURN_IF_ERROR(prepare_data(c.data, world));
  KILN_ASSIGN_OR_RETURN(Split train_split, open_split(c.data, "train"));
  KILN_ASSIGN_OR_RETURN(Split test_split, open_split(c.data, "test"));
  KILN_ASSIGN_OR_RETURN(auto sync, ReplicaSync::create(c, *model, mesh->data(), at.tp));
  pp::PipelineEngine engine(*mesh, spec, kCollectiveTimeout);
  // precision = "bf16" (zero1 only, train_config.cc): the wrapper holds the
  // parameters as bfloat16 over fp32 master shares, so every layer, the
  // tensor group's collectives and the stages' messages run in bfloat16.
  const torch::ScalarType activation_dtype =
      c.parallel.precision == Precision::kBf16 ? torch::kBFloat16 : torch::kFloat32;

  // Checkpoints hold canonical rows (gpt_3d_state.h, Note [Canonical rows]),
  // which follow the mesh: the in-memory tier hands back the rows each rank
  // saved and the ranks gather the whole tensors (kiln/ckpt/gather.h), from
  // which every rank cuts its own shards, whatever the layout.
  KILN_ASSIGN_OR_RETURN(CheckpointSetup ckpt, open_checkpoints(c.checkpoint, world, /*rows_as_saved=*/true));
  Progress progress;
  RestoreFn restore = [&](const ckpt::LoadedState& loaded) -> Result<Progress> {
    return sync->restore(loaded, *model, rank);
  };
  // Nothing to resume (no checkpoint.dir, or none saved yet): nullopt.
  KILN_ASSIGN_OR_RETURN(auto resumed, resume(c, restore, /*whole=*/true, world, ckpt.memory.get(), ckpt.comm.get(),
                                             restarted_by_launcher()));
  if (resumed) progress = resumed->progress;
  const std::int64_t start_step = progress.step;

  std::unique_ptr<diag::MetricsWriter> metrics;
  if (!options.metrics_json.empty() && rank == 0) {
    KILN_ASSIGN_OR_RETURN(metrics, diag::MetricsWriter::open(options.metrics_json));
  }
  ProgressLine line(c.train.max_steps, c.train.log_every, options.progress && rank == 0);
  EpochStream stream(&train_split, c.data, micro, at.dp, shape.dp, c.train.seed, {progress.epoch, progress.consumed});
  auto save = [&](std::int64_t step, bool wait) -> Status {
    Snapshot snap;
    const data::SamplerState s = stream.state();
    KILN_RETURN_IF_ERROR(sync->capture(*model, mesh->layout(), rank, {step, s.epoch, s.consumed}, &snap));
    if (wait) return ckpt.checkpointer->save(snap.view, step, Deadline::after_seconds(600));
    return ckpt.checkpointer->save_async(snap.view, step).status();
  };
  std::int64_t last_saved = start_step;
  diag::StepTimer timer(rank);
  timer.set_mesh({.dp = at.dp, .pp = at.pp, .tp = at.tp});
  // Diagnosis (docs/diag.md): per-rank step records carrying the mesh
  // coordinate (--trace-dir), summaries and the live verdict.
  std::unique_ptr<diag::TraceSession> session;
  if (options.diag.session()) {
    KILN_ASSIGN_OR_RETURN(session, diag::TraceSession::open(
                                       options.diag.trace_dir, rank,
                                       {.world_size = world.size(), .summary_every = options.diag.every,
                                        .sample_interval_s = options.diag.sample_interval_s}));
  }
  elastic::WorkerLink& elastic = elastic::WorkerLink::instance();
  const bool reports_loss = engine.holds_loss() && at.tp == 0;

  auto evaluate = [&](std::int64_t step) -> Result<double> {
    for (int chunk = 0; chunk < model->chunk_count(); ++chunk) model->chunk_module(chunk)->eval();
    data::Loader loader(test_split.cache.get(), test_split.index,
                        {.rank = at.dp, .world = shape.dp, .sampler = {.shuffle = false},
                         .batch_size = static_cast<std::uint64_t>(c.eval.batch_size),
                         .workers = c.data.workers, .queue_depth = c.data.queue_depth});
    StepModel sm{.model = model.get(), .activation_dtype = activation_dtype};
    pp::StageCallbacks cb = sm.callbacks();
    torch::NoGradGuard no_grad;
    while (true) {
      KILN_ASSIGN_OR_RETURN(auto batch, loader.next(Deadline::after_seconds(kBatchTimeoutS)));
      if (!batch) break;
      KILN_ASSIGN_OR_RETURN(TokenBatch b, token_batch(*batch, c.model));
      sm.batches = {b};
      KILN_RETURN_IF_ERROR(engine.forward_only(cb, 0));
    }
    for (int chunk = 0; chunk < model->chunk_count(); ++chunk) model->chunk_module(chunk)->train();
    double sums[3] = {reports_loss ? sm.eval_loss_sum : 0, reports_loss ? sm.eval_correct : 0,
                      reports_loss ? sm.eval_count : 0};
    KILN_RETURN_IF_ERROR(world.allreduce(sums, 3, comm::DataType::kFloat64, comm::ReduceOp::kSum)->wait(kCollectiveTimeout));
    if (sums[2] == 0) return failed_precondition("the test split is empty: nothing to evaluate");
    // Next-token prediction reports no accuracy, as on one process.
    const double loss = sums[0] / sums[2];
    if (metrics) KILN_RETURN_IF_ERROR(metrics->write_eval(step, loss, std::nullopt));
    if (session) KILN_RETURN_IF_ERROR(session->record_eval(step, loss, std::nullopt));
    line.eval(step, loss, std::nullopt);
    return loss;
  };

  std::optional<std::int64_t> stopped_at;
  for (std::int64_t step = start_step; step < c.train.max_steps; ++step) {
    timer.begin_step(step);
    StepModel sm{.model = model.get(), .microbatches = spec.microbatches, .sync = sync.get(),
                 .activation_dtype = activation_dtype};
    {
      auto scope = timer.phase(Phase::kDataWait);
      for (int m = 0; m < spec.microbatches; ++m) {
        KILN_ASSIGN_OR_RETURN(data::Batch batch, stream.next());
        KILN_ASSIGN_OR_RETURN(TokenBatch b, token_batch(batch, c.model));
        sm.batches.push_back(b);
      }
    }
    pp::StageCallbacks cb = sm.callbacks();
    KILN_ASSIGN_OR_RETURN(pp::PipelineStepStats stats, engine.train_step(cb));
    const double exposed = stats.wait_s + stats.send_wait_s + sync->exposed_comm_s();
    timer.add(Phase::kForward, stats.forward_s);
    timer.add(Phase::kBackward, std::max(0.0, stats.backward_s - sync->exposed_comm_s()));
    timer.add(Phase::kExposedComm, exposed);
    timer.current().comm_bytes = stats.bytes_sent;
    sync->describe_sync(timer.current());
    {
      auto scope = timer.phase(Phase::kOptimizer);
      KILN_RETURN_IF_ERROR(model->reduce_sequence_partial_grads());
      KILN_RETURN_IF_ERROR(sync->step(learning_rate(c.optim, step, c.train.max_steps), *model, world, shape.dp, at.tp));
    }
    // The loss lives on the last stage: one small allreduce brings the
    // replicas' mean to every rank (rank 0 prints it).
    double loss = reports_loss ? stats.loss_sum : 0;
    KILN_RETURN_IF_ERROR(world.allreduce(&loss, 1, comm::DataType::kFloat64, comm::ReduceOp::kSum)->wait(kCollectiveTimeout));
    loss /= shape.dp;
    const std::int64_t done = step + 1;
    if (ckpt.enabled() && c.checkpoint.every > 0 && done % c.checkpoint.every == 0 && done < c.train.max_steps) {
      auto scope = timer.phase(Phase::kCheckpointStall);
      KILN_RETURN_IF_ERROR(save(done, false));
      last_saved = done;
    }
    diag::StepRecord record = timer.end_step(loss, static_cast<std::uint64_t>(c.train.batch_size));
    if (metrics) KILN_RETURN_IF_ERROR(metrics->write_step(record));
    line.step(record);
    if (session) KILN_RETURN_IF_ERROR(session->record_step(record));
    // Every rank reaches this after the same steps, so the exchange lines up.
    if (session && session->summary_due()) {
      KILN_ASSIGN_OR_RETURN(diag::Verdict verdict, session->summarize(&world, kCollectiveTimeout));
      if (rank == 0) line.note(diag::verdict_line(verdict));
    }
    if (c.eval.every > 0 && done % c.eval.every == 0 && done < c.train.max_steps) {
      KILN_RETURN_IF_ERROR(evaluate(done).status());
    }
    if (elastic.active()) {
      elastic.heartbeat();
      KILN_ASSIGN_OR_RETURN(bool stop, any_rank_asked_to_stop(world, elastic.stop_requested()));
      if (stop) {
        stopped_at = done;
        break;
      }
    }
    if (done == options.crash_after_step) {
      log()->warn("crash injected after step {}: SIGKILL", done);
      ::kill(::getpid(), SIGKILL);
    }
  }

  TrainResult result;
  result.start_step = start_step;
  result.steps = stopped_at ? *stopped_at : std::max(start_step, c.train.max_steps);
  result.stopped = stopped_at.has_value();
  if (ckpt.enabled()) {
    if (result.steps > last_saved) {
      KILN_RETURN_IF_ERROR(save(result.steps, true));
    }
    KILN_RETURN_IF_ERROR(ckpt.checkpointer->wait(Deadline::after_seconds(600)));
  }
  if (!result.stopped) ckpt.drop_memory_snapshots();
  if (!result.stopped) ckpt.finish_retention(Deadline::after_seconds(600));
  if (!result.stopped) {
    KILN_ASSIGN_OR_RETURN(result.eval_loss, evaluate(result.steps));
  }
  if (session) KILN_RETURN_IF_ERROR(session->close());
  line.finish();
  KILN_ASSIGN_OR_RETURN(result.parameter_digest, layout_digest(*model, mesh->layout(), world));
  if (options.keep_parameters) {
    KILN_ASSIGN_OR_RETURN(result.parameters, gather_whole_parameters(*model, c.model, mesh->layout(), world));
  }
  result.seconds = seconds_since(started);
  return result;
}

}  // namespace kiln::train
