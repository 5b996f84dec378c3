#include "kiln/train/progress_line.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include <fmt/format.h>

namespace kiln::train {
namespace {

constexpr int kBarWidth = 20;
constexpr std::array<const char*, diag::kPhaseCount> kShortNames = {"data", "fwd", "bwd", "comm",
                                                                     "opt", "ckpt", "other"};

std::string clock_text(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto total = static_cast<long long>(s + 0.5);
  if (total >= 3600) return fmt::format("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60);
  return fmt::format("{}:{:02}", total / 60, total % 60);
}

}  // namespace

ProgressLine::ProgressLine(std::int64_t total_steps, std::int64_t log_every, bool enabled)
    : total_(total_steps), log_every_(std::max<std::int64_t>(1, log_every)), enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) == 1) {}

std::string ProgressLine::format(std::int64_t step, std::int64_t total, double loss,
                                 double samples_per_s, double eta_s,
                                 const std::array<double, diag::kPhaseCount>& phase_s,
                                 double step_s) {
  int filled = total > 0 ? static_cast<int>(kBarWidth * std::min<double>(1, double(step) / total)) : 0;
  std::string bar(static_cast<std::size_t>(filled), '=');
  if (filled < kBarWidth) bar += '>';
  bar.resize(kBarWidth, ' ');
  std::string phases;
  for (int p = 0; p < diag::kPhaseCount; ++p) {
    double pct = step_s > 0 ? 100 * phase_s[p] / step_s : 0;
    phases += fmt::format(" {} {:.0f}%", kShortNames[p], pct);
  }
  return fmt::format("step {:>{}}/{} [{}] loss {:.4f} {:>7.0f} samples/s ETA {} |{}", step,
                     std::to_string(total).size(), total, bar, loss, samples_per_s,
                     clock_text(eta_s), phases);
}

void ProgressLine::step(const diag::StepRecord& r) {
  if (!enabled_) return;
  for (int p = 0; p < diag::kPhaseCount; ++p) phase_s_[p] += r.phase_s[p];
  step_s_ += r.step_s;
  loss_ += r.loss;
  samples_ += r.samples;
  ++steps_;
  ema_step_s_ = ema_step_s_ == 0 ? r.step_s : 0.9 * ema_step_s_ + 0.1 * r.step_s;
  std::int64_t done = r.step + 1;
  if (done % log_every_ != 0 && done != total_) return;
  emit(format(done, total_, loss_ / steps_, step_s_ > 0 ? samples_ / step_s_ : 0,
              ema_step_s_ * static_cast<double>(total_ - done), phase_s_, step_s_),
       false);
  phase_s_ = {};
  step_s_ = loss_ = 0;
  samples_ = 0;
  steps_ = 0;
}

void ProgressLine::eval(std::int64_t step, double loss, std::optional<double> accuracy) {
  if (!enabled_) return;
  std::string acc = accuracy ? fmt::format(" accuracy {:.4f}", *accuracy) : "";
  emit(fmt::format("eval at step {}: loss {:.4f}{}", step, loss, acc), true);
}

void ProgressLine::finish() {
  if (enabled_ && dirty_) std::fputc('\n', stderr);
  dirty_ = false;
}

void ProgressLine::note(const std::string& text) {
  if (dirty_) std::fputc('\n', stderr);
  dirty_ = false;
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
}

void ProgressLine::emit(const std::string& text, bool final_line) {
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", text.c_str(), final_line ? "\n" : "");
    dirty_ = !final_line;
  } else {
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  std::fflush(stderr);
}

}  // namespace kiln::train
