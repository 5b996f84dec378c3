// Rank 0's live progress: one line, redrawn in place on a terminal (a line
// every log_every steps otherwise), with loss, samples/s, ETA and where the
// step's time went:
//
//   step  420/1000 [========>          ] loss 0.412  3120 samples/s  ETA 0:21 |
//     data 1% fwd 31% bwd 44% comm 6% opt 9% ckpt 0% other 9%
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "kiln/diag/step_timer.h"

namespace kiln::train {

class ProgressLine {
 public:
  ProgressLine(std::int64_t total_steps, std::int64_t log_every, bool enabled);

  void step(const diag::StepRecord& r);
  void eval(std::int64_t step, double loss, std::optional<double> accuracy);
  void finish();  // ends the in-place line
  // A whole line of its own (the live verdict), printed even when the
  // progress display is off: the caller picks the rank that speaks.
  void note(const std::string& text);

  // The text for a window of steps (exposed for tests).
  static std::string format(std::int64_t step, std::int64_t total, double loss,
                            double samples_per_s, double eta_s,
                            const std::array<double, diag::kPhaseCount>& phase_s, double step_s);

 private:
  void emit(const std::string& text, bool final_line);

  std::int64_t total_, log_every_;
  bool enabled_, tty_;
  bool dirty_ = false;  // an in-place line is showing
  // The window since the last print.
  std::array<double, diag::kPhaseCount> phase_s_{};
  double step_s_ = 0, loss_ = 0;
  std::uint64_t samples_ = 0;
  std::int64_t steps_ = 0;
  double ema_step_s_ = 0;
};

}  // namespace kiln::train
