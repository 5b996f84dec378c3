// Phase timing for one training step on one rank.
//
// The trainer brackets each part of a step with a Scope (or reports time it
// measured itself with add()); end_step() closes the step and returns its
// StepRecord, which feeds the metrics file, the trace and the verdict
// (docs/diag.md). Everything the verdict needs is in the record: it is a pure
// function of StepRecords.
//
//   kiln::diag::StepTimer timer(rank);
//   timer.begin_step(step);
//   { auto s = timer.phase(Phase::kDataWait); batch = loader.next(); }
//   { auto s = timer.phase(Phase::kForward);  loss = model(batch); }
//   ...
//   timer.current().comm_bytes = reducer.bytes_last_step();
//   StepRecord r = timer.end_step(loss, batch_size);
//
// Threads: a StepTimer belongs to the thread that runs the training loop; it
// takes no locks. Scopes may nest: a nested scope's time is taken out of the
// enclosing one (e.g. a checkpoint stall inside the optimizer phase counts as
// ckpt_stall only), so the phases of a step never add up to more than its
// wall time. Cost: two steady_clock reads per scope.
//
// Adjustments to the agreed API (names unchanged):
//   - StepRecord carries `spans`, the timeline of scopes within the step, for
//     the Chrome trace. Time given to add() appears in the totals only.
//   - MetricsWriter lives in kiln/diag/metrics_writer.h.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace kiln::diag {

enum class Phase : int {
  kDataWait,
  kForward,
  kBackward,
  kExposedComm,
  kOptimizer,
  kCheckpointStall,
  kOther,
  kCount
};
inline constexpr int kPhaseCount = static_cast<int>(Phase::kCount);

// "data_wait", "forward", "backward", "exposed_comm", "optimizer",
// "ckpt_stall", "other": the keys of the metrics file and of diagnose --json.
const char *phase_name(Phase p);
// The inverse of phase_name; nullopt for an unknown name.
std::optional<Phase> phase_from_name(std::string_view name);

// One timed scope within a step, relative to the step's start.
struct PhaseSpan {
  Phase phase = Phase::kOther;
  double begin_s = 0;  // from begin_step
  double dur_s = 0;    // inclusive of nested scopes (the trace nests them too)
};

// One collective of the step's gradient sync (a DDP bucket's allreduce).
struct CollectiveRecord {
  std::uint64_t bytes = 0;  // each rank's buffer, in the dtype sent
  double seconds = 0;       // the time the operation itself ran
};

// A rank's coordinate in a 3D run's device mesh (kiln/parallel/mesh): its
// data-parallel replica, pipeline stage and tensor-parallel rank; -1 where
// the run has no mesh (a data-parallel run).
struct MeshPosition {
  int dp = -1, pp = -1, tp = -1;
  bool known() const { return dp >= 0 && pp >= 0 && tp >= 0; }
};

struct StepRecord {
  std::int64_t step = 0;
  int rank = 0;
  MeshPosition mesh;  // every record of a 3D run carries it (StepTimer::set_mesh)
  double start_unix_s = 0;  // wall clock at begin_step
  double step_s = 0;        // begin_step .. end_step
  // Exclusive seconds per phase; kOther = step_s - sum(others), >= 0.
  std::array<double, kPhaseCount> phase_s{};
  double loss = 0;
  std::uint64_t samples = 0;
  std::uint64_t comm_bytes = 0;  // gradient sync volume this step (0 if unknown)
  double comm_s = 0;             // time the gradient sync took, overlapped or not
  std::vector<CollectiveRecord> collectives;  // in issue order; empty if unknown
  // Of those, the ones issued before the backward that produced their
  // gradients returned: overlapped with it (-1: unknown).
  int collectives_in_backward = -1;
  double cache_hit_rate = -1;    // loader, -1 = unknown
  std::vector<PhaseSpan> spans;  // in order of ending

  double &operator[](Phase p) { return phase_s[static_cast<int>(p)]; }
  double operator[](Phase p) const { return phase_s[static_cast<int>(p)]; }
};

class StepTimer {
 public:
  using Clock = std::chrono::steady_clock;

  explicit StepTimer(int rank);
  StepTimer(const StepTimer &) = delete;
  StepTimer &operator=(const StepTimer &) = delete;

  // Every record from now on carries this mesh coordinate.
  void set_mesh(MeshPosition at) { mesh_ = at; }

  // Starts a step; an unfinished previous step is discarded.
  void begin_step(std::int64_t step);

  // Adds the elapsed seconds to its phase when destroyed (less any nested
  // scope's). Must be destroyed before end_step() and in reverse order of
  // creation, which block scoping gives.
  class [[nodiscard]] Scope {
   public:
    Scope(Scope &&other) noexcept;
    Scope(const Scope &) = delete;
    Scope &operator=(const Scope &) = delete;
    Scope &operator=(Scope &&) = delete;
    ~Scope();

   private:
    friend class StepTimer;
    Scope(StepTimer *timer, Phase phase);
    StepTimer *timer_;
    Phase phase_;
    Clock::time_point begin_;
    double nested_s_ = 0;  // time of scopes nested in this one
    Scope *parent_;
  };
  [[nodiscard]] Scope phase(Phase p);

  // Time measured elsewhere (e.g. the loader's own wait clock). Goes into the
  // totals, not the trace timeline; kOther is ignored (it is derived).
  void add(Phase p, double seconds);

  // The step being timed: fill comm_bytes, comm_s, cache_hit_rate here.
  StepRecord &current() { return rec_; }

  // Closes the step: sets step_s, kOther, loss and samples, and returns the
  // record. The timer is then idle until the next begin_step().
  StepRecord end_step(double loss, std::uint64_t samples);

 private:
  void close_scope(Scope *scope);

  int rank_;
  MeshPosition mesh_;
  bool in_step_ = false;
  Clock::time_point step_begin_{};
  Scope *innermost_ = nullptr;
  StepRecord rec_;
};

}  // namespace kiln::diag
