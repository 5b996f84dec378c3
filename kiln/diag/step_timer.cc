#include "kiln/diag/step_timer.h"

#include <chrono>
#include <utility>

#include "kiln/base/check.h"

namespace kiln::diag {
namespace {

constexpr std::array<const char *, kPhaseCount> kPhaseNames = {
    "data_wait", "forward", "backward", "exposed_comm", "optimizer", "ckpt_stall", "other"};

double seconds(StepTimer::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double unix_now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

const char *phase_name(Phase p) {
  int i = static_cast<int>(p);
  KILN_CHECK(i >= 0 && i < kPhaseCount);
  return kPhaseNames[i];
}

std::optional<Phase> phase_from_name(std::string_view name) {
  for (int i = 0; i < kPhaseCount; ++i) {
    if (name == kPhaseNames[i]) return static_cast<Phase>(i);
  }
  return std::nullopt;
}

StepTimer::StepTimer(int rank) : rank_(rank) {}

void StepTimer::begin_step(std::int64_t step) {
  KILN_CHECK_MSG(innermost_ == nullptr, "begin_step with a phase scope still open");
  rec_ = StepRecord{};
  rec_.step = step;
  rec_.rank = rank_;
  rec_.mesh = mesh_;
  rec_.start_unix_s = unix_now_s();
  step_begin_ = Clock::now();
  in_step_ = true;
}

StepTimer::Scope StepTimer::phase(Phase p) {
  KILN_CHECK_MSG(in_step_, "StepTimer::phase outside begin_step/end_step");
  KILN_CHECK(p != Phase::kCount);
  return Scope(this, p);
}

StepTimer::Scope::Scope(StepTimer *timer, Phase phase)
    : timer_(timer), phase_(phase), begin_(Clock::now()), parent_(timer->innermost_) {
  timer->innermost_ = this;
}

StepTimer::Scope::Scope(Scope &&other) noexcept
    : timer_(std::exchange(other.timer_, nullptr)),
      phase_(other.phase_),
      begin_(other.begin_),
      nested_s_(other.nested_s_),
      parent_(other.parent_) {
  // Guaranteed elision makes this rare, but the stack must follow the object.
  if (timer_ != nullptr && timer_->innermost_ == &other) timer_->innermost_ = this;
}

StepTimer::Scope::~Scope() {
  if (timer_ != nullptr) timer_->close_scope(this);
}

void StepTimer::close_scope(Scope *scope) {
  KILN_CHECK_MSG(innermost_ == scope, "phase scopes must close in reverse order of opening");
  auto now = Clock::now();
  double total = seconds(now - scope->begin_);
  double exclusive = total - scope->nested_s_;
  rec_[scope->phase_] += exclusive > 0 ? exclusive : 0;
  rec_.spans.push_back({scope->phase_, seconds(scope->begin_ - step_begin_), total});
  innermost_ = scope->parent_;
  if (innermost_ != nullptr) innermost_->nested_s_ += total;
}

void StepTimer::add(Phase p, double secs) {
  KILN_CHECK(p != Phase::kCount);
  if (p == Phase::kOther || !(secs > 0)) return;
  rec_[p] += secs;
  // Keeps an enclosing scope from counting the same seconds twice.
  if (innermost_ != nullptr) innermost_->nested_s_ += secs;
}

StepRecord StepTimer::end_step(double loss, std::uint64_t samples) {
  KILN_CHECK_MSG(in_step_, "end_step without begin_step");
  KILN_CHECK_MSG(innermost_ == nullptr, "end_step with a phase scope still open");
  rec_.step_s = seconds(Clock::now() - step_begin_);
  double named = 0;
  for (int i = 0; i < kPhaseCount; ++i) {
    if (i != static_cast<int>(Phase::kOther)) named += rec_.phase_s[i];
  }
  // add() may report more than the wall time (a loader clock that started
  // before begin_step); step_s stays the wall time and kOther stays >= 0.
  rec_[Phase::kOther] = named < rec_.step_s ? rec_.step_s - named : 0;
  rec_.loss = loss;
  rec_.samples = samples;
  in_step_ = false;
  return std::move(rec_);
}

}  // namespace kiln::diag
