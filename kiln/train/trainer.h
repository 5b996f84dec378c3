// The training loop behind `kiln train`: data-parallel over kiln::comm with
// kiln::ddp, data from kiln::data's loader, checkpoints with kiln::ckpt and
// phase timing with kiln::diag.
//
// One optimizer step = grad_accum micro-batches on every rank; together the
// ranks consume batch_size consecutive samples of the epoch's global order
// per step, so the same samples form each step on any world size (and a
// resumed run continues the exact sequence). A partial last step of an epoch
// is dropped: every rank must run the same number of collectives.
//
// Resume (checkpoint.resume, on by default): the newest valid checkpoint under
// checkpoint.dir restores the model, optimizer, generators and sampler
// position; training continues from its step, bit-identically to a run that
// never stopped (same world size and thread count).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/diag/inject.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// Diagnosis (docs/diag.md): phase timing always runs; these add the rest.
struct DiagOptions {
  // Per-rank trace.json, metrics.jsonl and meta.json, and rank 0's
  // summaries.jsonl, under this directory ("" = none).
  std::string trace_dir;
  // Every this many steps the ranks exchange summaries (a collective) and
  // rank 0 prints the verdict. 0 = never.
  std::int64_t every = 0;
  double sample_interval_s = 1.0;  // system sampling while diagnosing
  // Prometheus /metrics on metrics_host, port + LOCAL_RANK; -1 = off.
  int metrics_port = -1;
  // Loopback by default: metrics name hosts, paths and timings, so opening
  // them to the network is an explicit choice (--metrics-host).
  std::string metrics_host = "127.0.0.1";
  std::vector<diag::Injection> inject;  // --inject: bottlenecks on purpose

  bool session() const { return !trace_dir.empty() || every > 0; }
};

struct TrainOptions {
  TrainConfig config;
  std::string metrics_json;  // JSON lines (kiln::diag::MetricsWriter); "" = none
  bool progress = true;      // rank 0's live progress line on stderr
  bool keep_parameters = false;  // return every parameter (tests compare runs)
  // Fault injection: SIGKILL this process once this many steps are done (a
  // crash with whatever checkpoints were committed by then). -1 = never.
  std::int64_t crash_after_step = -1;
  DiagOptions diag;
};

struct TrainResult {
  std::int64_t start_step = 0;  // > 0 when resumed
  int resumed_in_place = 0;     // tensors a recovery from memory restored in the model's memory
  std::int64_t steps = 0;       // the step reached
  bool stopped = false;         // stopped early on request (kiln run), checkpointed
  double eval_loss = 0;
  std::optional<double> eval_accuracy;
  std::uint64_t parameter_digest = 0;  // train_state.h
  std::vector<float> parameters;       // flattened, with keep_parameters
  double seconds = 0;
};

// Collective: every rank of `comm` calls it with the same config.
Result<TrainResult> run_training(const TrainOptions& options, comm::Communicator& comm);

}  // namespace kiln::train
