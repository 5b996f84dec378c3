#include "kiln/serve/replica.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <future>

#include "kiln/base/heap.h"
#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/serve/prefault.h"
#include "kiln/serve/step_weights.h"
#include "kiln/serve/torch_model.h"
#include "kiln/serve/weight_cache.h"

namespace kiln::serve {
namespace {

const Knob<std::string> kCacheDir{"KILN_SERVE_CACHE_DIR", "/var/tmp/kiln-weights",
                                  "node-local weight cache of kiln serve, shared by its replicas"};
const Knob<double> kFetchTimeout{"KILN_SERVE_FETCH_TIMEOUT", 600.0,
                                 "seconds a replica may take to get its weights into the cache"};
const Knob<double> kPrefaultMib{
    "KILN_SERVE_PREFAULT_MIB", 16.0,
    "heap a replica makes resident while it looks up its weights, before building the model "
    "(Note [Pre-faulted heap]); the model's own size is added once known"};

struct Loaded {
  std::unique_ptr<Model> model;
  double fetch_s = 0, load_s = 0;
  double lookup_s = 0;         // of fetch_s: the remote's newest step and its manifest
  double read_s = 0;           // of load_s: checking the stamp and mapping the step
  long build_faults = 0;       // page faults while building the model (fresh memory)
  std::size_t prefaulted = 0;  // bytes of heap made resident in advance (Note [Pre-faulted heap])
  double torch_warm_s = 0;  // LibTorch's first use, on its own thread (Note [LibTorch's first use])
  double torch_wait_s = 0;  // of load_s: waiting for it after the model was built
  bool hit = false;
  StampCheck check = StampCheck::kMatched;
};

// The process's minor page faults so far: building a model faults in its
// fresh parameter memory, which on a paravirtualised VM costs more than the
// copy itself (docs/perf.md, issue 20, session 6).
long minor_faults() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

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
Result<Loaded> load_weights(const ReplicaRunOptions& o) {
  KILN_ASSIGN_OR_RETURN(auto store, data::open_object_store(o.model_url));
  const std::string dir = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  WeightCache cache(store.get(), {.dir = dir, .capacity_bytes = o.cache_bytes});
  const Deadline deadline = Deadline::after_seconds(kFetchTimeout.get());
  const auto begin = Clock::now();
  // Note [Pre-faulted heap]: the store is asked on another thread while this
  // one, which builds the model next, makes heap pages resident for it.
  auto lookup =
      std::async(std::launch::async, [&cache, deadline] { return cache.acquire_latest(deadline); });
  // Note [LibTorch's first use] (torch_model.h): inside the same window.
  auto torch_ready = std::async(std::launch::async, [threads = o.threads] {
    const auto t0 = Clock::now();
    warm_up_torch(threads);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  });
  const double prefault_mib = std::max(0.0, kPrefaultMib.get());
  std::size_t prefaulted = prefault_heap(static_cast<std::size_t>(prefault_mib * (1 << 20)));
  for (int attempt = 1;; ++attempt) {
    KILN_ASSIGN_OR_RETURN(WeightLease lease,
                          attempt == 1 ? lookup.get() : cache.acquire_latest(deadline));
    const auto start = Clock::now();
    // The weights only: the optimizer's state (2x the weights for AdamW) is
    // not read.
    auto check = check_verified_stamp(lease.step_dir);
    Result<StepWeights> weights =
        check.is_ok()
            ? StepWeights::open(lease.step_dir,
                                [](std::string_view name) {
                                  return name.starts_with("param/") || name.starts_with("buffer/");
                                })
            : Result<StepWeights>(check.status());
    if (!weights.is_ok() && weights.status().code() == Code::kDataLoss && attempt == 1) {
      log()->warn("serve: cached weights {} are corrupt ({}); discarding them", lease.step_dir,
                  weights.status().to_string());
      KILN_RETURN_IF_ERROR(cache.discard(std::move(lease), deadline));
      continue;
    }
    KILN_RETURN_IF_ERROR(weights.status());
    Loaded out;
    out.read_s = std::chrono::duration<double>(Clock::now() - start).count();
    // A model bigger than the guess: the rest of its parameters' pages too.
    if (prefault_mib > 0 && weights->bytes() > prefaulted) {
      prefaulted += prefault_heap(weights->bytes() - prefaulted);
    }
    out.prefaulted = prefaulted;
    const long faults_before = minor_faults();
    out.check = *check;
    auto model = load_torch_model(
        *weights,
        {.config_path = o.config_path, .threads = o.threads, .threads_capped_by_caller = true});
    out.build_faults = minor_faults() - faults_before;
    const auto waited_from = Clock::now();
    if (torch_ready.valid()) out.torch_warm_s = torch_ready.get();
    out.torch_wait_s = std::chrono::duration<double>(Clock::now() - waited_from).count();
    KILN_ASSIGN_OR_RETURN(out.model, std::move(model));
    out.fetch_s = lease.lookup_seconds + lease.fetch_seconds;
    // Wall clock from the start: what the populate took beyond the lookup,
    // and a discarded first attempt, count as loading.
    out.load_s = std::chrono::duration<double>(Clock::now() - begin).count() - out.fetch_s;
    out.lookup_s = lease.lookup_seconds;
    out.hit = lease.hit;
    return out;  // the lease and the mapping end here: the weights are in the model now
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

  KILN_ASSIGN_OR_RETURN(auto server, ReplicaServer::start(o.server));
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
  server->set_model(std::move(loaded->model));
  std::printf(
      "ready: %s step %lld from %s; cold start %.3f s (fetch %.3f s: lookup %.3f s%s; load %.3f "
      "s: check and "
      "map %.3f s (%s), build the model %.3f s, LibTorch's thread caps %.3f s beside it (%.3f s "
      "waited for), %ld page faults, %.1f MiB pre-faulted)\n",
      info.name.c_str(), static_cast<long long>(info.step), o.model_url.c_str(),
      loaded->fetch_s + loaded->load_s, loaded->fetch_s, loaded->lookup_s,
      loaded->hit ? ", node cache hit" : "", loaded->load_s, loaded->read_s,
      describe(loaded->check), loaded->load_s - loaded->read_s - loaded->torch_wait_s,
      loaded->torch_warm_s, loaded->torch_wait_s, loaded->build_faults,
      static_cast<double>(loaded->prefaulted) / (1 << 20));
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
