#include "kiln/serve/replica.h"

#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <future>
#include <optional>

#include "kiln/base/heap.h"
#include "kiln/base/knobs.h"
#include "kiln/base/resource_usage.h"
#include "kiln/base/logging.h"
#include "kiln/serve/capped_model.h"
#include "kiln/serve/step_weights.h"
#include "kiln/serve/thread_cpus.h"
#include "kiln/serve/torch_model.h"
#include "kiln/serve/weight_cache.h"

namespace kiln::serve {
namespace {

const Knob<std::string> kCacheDir{"KILN_SERVE_CACHE_DIR", "/var/tmp/kiln-weights",
                                  "node-local weight cache of kiln serve, shared by its replicas"};
const Knob<bool> kPinThreads{
    "KILN_SERVE_PIN_THREADS", false,
    "1: a replica with one torch thread runs its batch worker on a CPU of its own and its HTTP "
    "front on the others (Note [The batch worker's own core])"};
const Knob<double> kFetchTimeout{"KILN_SERVE_FETCH_TIMEOUT", 600.0,
                                 "seconds a replica may take to get its weights into the cache"};

struct Loaded {
  std::unique_ptr<Model> model;
  double fetch_s = 0, load_s = 0;
  double lookup_s = 0;         // of fetch_s: the remote's newest step and its manifest
  long build_faults = 0;       // page faults while building the model
  long fill_faults = 0;        // and filling it (Note [Weights served where they lie])
  double torch_warm_s = 0;  // LibTorch's first use, on its own thread (Note [LibTorch's first use])
  bool hit = false;
  bool built_early = false;  // from the manifest, before the weights were checked and mapped
  bool built_from_guess = false;  // from the node cache's newest manifest, before the store named one
  StampCheck check = StampCheck::kMatched;
  // When each step ended, in ms from the start of the cold start (the
  // replica's "ready:" line, to the µs): the node cache's guess read, the
  // manifest known, the model's build begun and ended, the weights checked
  // and mapped, the model filled with them; and LibTorch's thread caps, set
  // on their own thread.
  double guess_ms = 0, manifest_ms = 0, build_began_ms = 0, built_ms = 0, mapped_ms = 0,
         filled_ms = 0, caps_ms = 0;
};

// The newest step in the node cache, its stamp checked and its weights
// mapped; or why not.
struct MappedStep {
  WeightLease lease;
  Result<StampCheck> check = StampCheck::kMatched;
  Result<StepWeights> weights = unavailable("not mapped");
};

Result<MappedStep> acquire_and_map(WeightCache& cache, Deadline deadline,
                                   const WeightCache::ManifestCallback& on_manifest = {}) {
  KILN_ASSIGN_OR_RETURN(WeightLease lease, cache.acquire_latest(deadline, on_manifest));
  MappedStep out;
  out.check = check_verified_stamp(lease.step_dir);
  out.weights = out.check.is_ok() ? StepWeights::open(lease.step_dir, is_weight_entry)
                                  : Result<StepWeights>(out.check.status());
  out.lease = std::move(lease);
  return out;
}

// The process's minor page faults so far: building a model faults in its
// fresh parameter memory, which on a paravirtualised VM costs more than the
// copy itself (docs/perf.md, issue 20, session 6).
long minor_faults() { return ResourceUsage::of_process().minor_faults; }

const char* describe(StampCheck c) {
  switch (c) {
    case StampCheck::kMatched:
      return "stamp matched";
    case StampCheck::kRehashed:
      return "files touched, rehashed";
    case StampCheck::kVerified:
      return "no stamp, every checksum verified";
  }
  return "";
}

// Object store -> node cache -> memory. A cached copy that differs from
// what was verified at fetch (Note [Verified stamp]), or fails its
// checksums, is discarded and downloaded once more.
//
// Note [Building the model while the weights come]: the model depends on
// the step's tensor shapes, not on their values, and the manifest the store
// names first lists the shapes. So one thread asks the store, then fetches
// (or finds in the node cache), checks and maps the step, while this one
// builds the model from the manifest as soon as it is named, its
// parameters left unwritten (Note [Layers without random initial values],
// kiln/train/task.cc), and then makes them views of the mapped weights
// (Note [Weights served where they lie], torch_model.h). A cold start hides
// the build behind the download; a cache hit behind its stamp check and
// mapping. The manifest and the mapped weights are the same step's: the
// cache names a step by its manifest's checksum.
//
// Note [A model built from the node cache's guess]: on a node that served
// the model before, the store almost always names the step the node cache
// used last, and asking it took 3-6 ms of a cache hit's ~11 ms (docs/perf.md,
// issue 20, session 10). So this thread does not wait for the store's
// answer to start building: it builds from the shapes of the manifest the
// cache used last while the lookup thread asks, and keeps that model if the
// named step's shapes are the same (the model depends on nothing else),
// else builds again for the named ones. A wrong guess costs one build.
Result<Loaded> load_weights(const ReplicaRunOptions& o) {
  KILN_ASSIGN_OR_RETURN(auto store, data::open_object_store(o.model_url));
  const std::string dir = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  WeightCache cache(store.get(), {.dir = dir, .capacity_bytes = o.cache_bytes});
  const Deadline deadline = Deadline::after_seconds(kFetchTimeout.get());
  const auto begin = Clock::now();
  auto ms_since_begin = [begin] {
    return std::chrono::duration<double, std::milli>(Clock::now() - begin).count();
  };
  // The step's shapes, as soon as the store names its manifest; an error
  // when the lookup ends without naming one (an empty or unreachable store).
  std::promise<Result<StepShapes>> shapes_promise;
  auto shapes_named = shapes_promise.get_future();
  bool named = false;  // the lookup thread's
  auto on_manifest = [&](std::int64_t step, const std::string& text) {
    named = true;
    shapes_promise.set_value(StepShapes::from_manifest(
        text, fmt::format("{} step {}", o.model_url, step), is_weight_entry));
  };
  std::atomic<double> mapped_ms{0};
  auto lookup = std::async(std::launch::async, [&] {
    Result<MappedStep> r = acquire_and_map(cache, deadline, on_manifest);
    mapped_ms = ms_since_begin();
    if (!named) shapes_promise.set_value(unavailable("the store named no step"));
    return r;
  });
  // Note [LibTorch's first use] (torch_model.h): inside the same window.
  std::atomic<double> caps_ms{0};
  auto torch_ready =
      std::async(std::launch::async, [threads = o.threads, &caps_ms, ms_since_begin] {
        const auto t0 = Clock::now();
        warm_up_torch(threads);
        caps_ms = ms_since_begin();
        return std::chrono::duration<double>(Clock::now() - t0).count();
      });
  Loaded out;
  const TorchModelOptions build_options{
      .config_path = o.config_path, .threads = o.threads, .threads_capped_by_caller = true};
  std::unique_ptr<UnfilledModel> early;
  std::optional<StepShapes> built_for;  // the shapes `early` was built for
  auto build_early = [&](StepShapes shapes) {
    out.build_began_ms = ms_since_begin();
    const long faults_before = minor_faults();
    auto built = build_torch_model(shapes, build_options);
    out.build_faults = minor_faults() - faults_before;
    // A model that cannot be built is reported against the weights below.
    if (built.is_ok()) {
      early = std::move(built).value();
      built_for = std::move(shapes);
    }
    out.built_ms = ms_since_begin();
  };
  // Note [A model built from the node cache's guess].
  if (auto text = cache.newest_cached_manifest()) {
    if (auto guess = StepShapes::from_manifest(*text, dir, is_weight_entry); guess.is_ok()) {
      out.guess_ms = ms_since_begin();
      build_early(std::move(guess).value());
    }
  }
  // Bounded by the lookup's deadline.
  if (Result<StepShapes> shapes = shapes_named.get(); shapes.is_ok()) {
    out.manifest_ms = ms_since_begin();
    out.built_from_guess = early != nullptr && built_for->tensors == shapes->tensors;
    if (!out.built_from_guess) {
      early.reset();
      build_early(std::move(shapes).value());
    }
  }
  for (int attempt = 1;; ++attempt) {
    KILN_ASSIGN_OR_RETURN(MappedStep step,
                          attempt == 1 ? lookup.get() : acquire_and_map(cache, deadline));
    if (!step.weights.is_ok() && step.weights.status().code() == Code::kDataLoss && attempt == 1) {
      log()->warn("serve: cached weights {} are corrupt ({}); discarding them", step.lease.step_dir,
                  step.weights.status().to_string());
      KILN_RETURN_IF_ERROR(cache.discard(std::move(step.lease), deadline));
      early.reset();  // built for the discarded copy's manifest: build again for the new one
      out.built_from_guess = false;
      continue;
    }
    KILN_RETURN_IF_ERROR(step.weights.status());
    out.mapped_ms = attempt == 1 ? mapped_ms.load() : ms_since_begin();
    out.check = *step.check;
    out.built_early = early != nullptr;
    if (!early) {
      out.build_began_ms = ms_since_begin();
      const long faults_before = minor_faults();
      KILN_ASSIGN_OR_RETURN(early, build_torch_model(step.weights->shapes(), build_options));
      out.build_faults = minor_faults() - faults_before;
      out.built_ms = ms_since_begin();
    }
    const long faults_before_fill = minor_faults();
    auto weights = std::make_shared<const StepWeights>(std::move(step.weights).value());
    KILN_ASSIGN_OR_RETURN(out.model, fill_torch_model_in_place(std::move(early), weights));
    out.fill_faults = minor_faults() - faults_before_fill;
    out.filled_ms = ms_since_begin();
    if (torch_ready.valid()) out.torch_warm_s = torch_ready.get();
    out.caps_ms = caps_ms;
    out.fetch_s = step.lease.lookup_seconds + step.lease.fetch_seconds;
    // Wall clock from the start: what the populate took beyond the lookup,
    // and a discarded first attempt, count as loading.
    out.load_s = std::chrono::duration<double>(Clock::now() - begin).count() - out.fetch_s;
    out.lookup_s = step.lease.lookup_seconds;
    out.hit = step.lease.hit;
    // The lease ends here; the model keeps the mapping (Note [Weights served
    // where they lie]).
    return out;
  }
}

}  // namespace

std::string default_cache_dir() { return kCacheDir.get(); }

Status run_replica(const ReplicaRunOptions& o) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // threads started below inherit it

  ReplicaOptions server_options = o.server;
  if (kPinThreads.get() && o.threads == 1) {
    // Note [The batch worker's own core].
    const ThreadCpus cpus = split_cpus(allowed_cpus());
    server_options.front_cpus = cpus.front;
    server_options.batcher.worker_cpus = cpus.batch;
  }
  KILN_ASSIGN_OR_RETURN(auto server, ReplicaServer::start(server_options));
  std::printf("listening on %s:%d\n", o.server.host.c_str(), server->port());
  std::fflush(stdout);

  keep_freed_heap_memory();  // Note [Keep freed tensor memory] (kiln/base/heap.h)
  auto loaded = load_weights(o);
  if (!loaded.is_ok()) {
    server->drain();
    return loaded.status().with_context("kiln serve " + o.model_url);
  }
  const ModelInfo info = loaded->model->info();
  server->metrics().set_cold_start(loaded->fetch_s, loaded->load_s, loaded->hit);
  if (o.capacity_rps > 0) {
    loaded->model = cap_capacity(std::move(loaded->model), o.capacity_rps);
    log()->info("serve: capacity capped at {} req/s (Note [A replica's capacity, enforced])",
                o.capacity_rps);
  }
  server->set_model(std::move(loaded->model));
  // Seconds to the µs: a cached start is a few ms (docs/perf.md, issue 20).
  std::printf(
      "ready: %s step %lld from %s; cold start %.6f s (fetch %.6f s: lookup %.6f s%s; load %.6f "
      "s: stamp %s; model built %s; page faults %ld building it, %ld filling it; LibTorch's "
      "thread caps %.6f s beside it); ms from the start: guess read %.3f, manifest %.3f, build "
      "began %.3f, built %.3f, mapped %.3f, filled %.3f, thread caps %.3f\n",
      info.name.c_str(), static_cast<long long>(info.step), o.model_url.c_str(),
      loaded->fetch_s + loaded->load_s, loaded->fetch_s, loaded->lookup_s,
      loaded->hit ? ", node cache hit" : "", loaded->load_s, describe(loaded->check),
      loaded->built_from_guess ? "from the node cache's guess"
      : loaded->built_early    ? "from the manifest"
                               : "after the weights",
      loaded->build_faults, loaded->fill_faults, loaded->torch_warm_s, loaded->guess_ms,
      loaded->manifest_ms,
      loaded->build_began_ms, loaded->built_ms, loaded->mapped_ms, loaded->filled_ms,
      loaded->caps_ms);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  log()->info("serve: signal {}: draining (refusing new requests, answering queued ones)", sig);
  server->drain();
  std::printf("drained: %llu requests answered\n",
              static_cast<unsigned long long>(server->metrics().requests_ok()));
  std::fflush(stdout);
  return Status::ok();
}

}  // namespace kiln::serve
