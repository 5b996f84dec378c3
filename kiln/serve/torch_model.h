// The LibTorch models `kiln train` saves (kiln/train/task.h), loaded from a
// checkpoint for inference. This header does not include LibTorch.
//
// A checkpoint holds tensors, not the [model] section of the training
// config. The CNN's shape is read off its tensors (channels from conv1,
// hidden from fc1). The GPT's attention heads (and, with rotary positions,
// its context length) are not in any tensor's shape, so a GPT needs the
// training config (`--config TRAIN.toml`); a config, when given, is checked
// against the tensors.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "kiln/base/status.h"
#include "kiln/serve/cnn_forward.h"
#include "kiln/serve/model.h"
#include "kiln/serve/step_weights.h"

namespace kiln::serve {

struct TorchModelOptions {
  std::string config_path;  // the training TOML; "" = infer from the checkpoint
  // Threads of the forward pass: torch's intra-op threads and the BLAS's
  // (one per replica on a small host; Note [BLAS threads]).
  int threads = 1;
  // The caller capped the threads already (warm_up_torch on another thread,
  // Note [LibTorch's first use]): not again here, concurrently with it.
  bool threads_capped_by_caller = false;
  // The CNN's forward pass (Note [The CNN's forward in oneDNN's layout],
  // blocked_cnn.h; Note [The CNN's forward on oneDNN's own API],
  // onednn_cnn.h); the GPT ignores it. A CNN whose weights the chosen
  // forward cannot take (not float32, other shapes) serves with the
  // module's, with a warning.
  CnnForward cnn_forward = default_cnn_forward();
  // Tests only: the oneDNN forward runs this with a batch size before it
  // builds that size's plan; what it throws fails the plan (Note [A oneDNN
  // plan that fails], torch_model.cc).
  std::function<void(int batch)> before_onednn_plan_for_test;
};

// A model built for a step's tensors, its parameters allocated and not yet
// written (Note [Layers without random initial values], kiln/train/task.cc).
// Opaque: this header does not include LibTorch.
class UnfilledModel {
 public:
  virtual ~UnfilledModel() = default;
};

// Builds the model the tensors describe (the CNN's shape is read off them; a
// config, when given, decides and is checked against them when filled);
// caps torch's and the BLAS's threads at options.threads (process-wide)
// unless the caller did. FailedPrecondition: a GPT without a config, or
// tensors of no known model; config parse errors name the file and field.
Result<std::unique_ptr<UnfilledModel>> build_torch_model(const StepShapes& shapes,
                                                         const TorchModelOptions& options);

// Copies every parameter and buffer in from `weights`. DataLoss: a tensor
// missing or shaped unlike the model's (another model's checkpoint, or a
// config that does not match it).
Result<std::unique_ptr<Model>> fill_torch_model(std::unique_ptr<UnfilledModel> model,
                                                const StepWeights& weights);

// Note [Weights served where they lie]: a replica's weights are the node
// cache's shard files, mapped read-only (StepWeights::open). Instead of
// copying them into freshly allocated parameters (3-4 ms of a cache hit's
// ~11 ms start on the 2-core VM, docs/perf.md, issue 20, session 10), each
// parameter and buffer becomes a view of its bytes in the mapping, which the
// model then owns: every replica on a node serves from the same page-cache
// pages, and nothing is copied or faulted in. A tensor whose bytes are not
// aligned for its element type is copied instead. The mapping is
// read-only, so a write to a parameter (nothing in inference writes one)
// would fault rather than change the cached file. The cache never rewrites a
// committed file in place (a download is renamed into place; eviction and
// discard unlink, and an unlinked file stays mapped), so the mapped bytes
// stay the ones the stamp check accepted; the replica need not hold its
// cache lease past the load. What the copy guarded against and this does
// not: another process writing into a cached file after the replica
// started (the cache never does) reaches the running replica, as it reaches
// every reader of those pages; the next replica to start catches it by the
// stamp (Note [Verified stamp]).
// DataLoss as fill_torch_model.
Result<std::unique_ptr<Model>> fill_torch_model_in_place(std::unique_ptr<UnfilledModel> model,
                                                         std::shared_ptr<const StepWeights> weights);

// build_torch_model for the weights' own shapes, then fill_torch_model.
Result<std::unique_ptr<Model>> load_torch_model(const StepWeights& weights,
                                                const TorchModelOptions& options);

// Note [LibTorch's first use]: the first torch::set_num_threads in a
// process costs up to ~15 ms (OpenMP's and LibTorch's thread-pool setup):
// on a node cache hit, a large part of a replica's cold start, spent after
// the weights were found. warm_up_torch() caps the threads (torch's and the
// BLAS's) on whatever thread calls it: a replica runs it on a thread of its
// own from the start of the cold-start window, builds the model meanwhile
// (threads_capped_by_caller), and joins it before serving. Process-wide.
// The first set_num_threads creates caffe2's pthreadpool, by default with
// one thread per core, and then recreates it with the threads asked for:
// on the 2-core VM its worker spun on a core for 2-5 ms while the build and
// the lookup waited for one, and the caps took 5-13 ms of a ~2 ms cache hit
// (docs/perf.md, issue 20, session 12). So the pool is created at the
// size asked for (c10's pthreadpool_size flag, where nothing set it).
// (Tiny modules and a forward pass in the warm-up too cost more than they
// saved: on a hit there is only ~1 ms of lookup to overlap them with.)
void warm_up_torch(int threads);

// Note [BLAS threads]: LibTorch's linear layers call the system BLAS
// (Debian: OpenBLAS, pthreads build), which keeps a pool of its own, one
// thread per core, that torch::set_num_threads does not reach. A GEMM big
// enough to split runs on two threads, and the helper then spins on
// sched_yield for a while before it sleeps: under steady load it never
// sleeps. Measured on the 2-core VM (docs/perf.md, issue 20): 60% of all
// CPU samples of a saturated replica in sched_yield, and the replica at
// batch 1 saturating at 1,405 req/s instead of 2,734 with one BLAS thread.
// "One thread per replica" has to cap the BLAS too. Returns the BLAS's
// thread count now in effect, or 0 if the BLAS offers no such control
// (not OpenBLAS: MKL follows torch::set_num_threads). Process-wide.
int limit_blas_threads(int threads);

}  // namespace kiln::serve
