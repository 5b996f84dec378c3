// The human-readable renderings.
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <map>
#include <vector>

#include "kiln/plan/report.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

namespace {

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string gb(double bytes) { return fmt("%.1f GB", bytes / 1e9); }

std::string seconds(double s) {
  if (s >= 100) return fmt("%.0f s", s);
  if (s >= 1) return fmt("%.2f s", s);
  return fmt("%.1f ms", s * 1e3);
}

std::string minutes(double s) { return fmt("%.0f s (%.1f min)", s, s / 60); }

std::string pct(double x) { return fmt("%.1f%%", 100 * x); }

std::string layout_line(const LayoutSpec& l) {
  return fmt(
      "TP %lld  PP %lld  DP %lld  vpp %lld  micro-batch %lld  global batch %lld  "
      "recompute %s  SP %s  ZeRO %d  attention %s  MMA %s",
      static_cast<long long>(l.tp), static_cast<long long>(l.pp), static_cast<long long>(l.dp),
      static_cast<long long>(l.vpp), static_cast<long long>(l.micro_batch),
      static_cast<long long>(l.global_batch), std::string(recompute_name(l.recompute)).c_str(),
      l.sequence_parallel ? "on" : "off", l.zero, std::string(attention_name(l.attention)).c_str(),
      std::string(mma_name(l.mma)).c_str());
}

}  // namespace

std::string format_plan(const Plan& p) {
  const auto& c = p.config;
  const auto& m = c.model;
  const auto& st = p.step;
  const auto& mem = p.memory;
  const auto& cp = p.checkpoint;
  std::string o;
  o += fmt("Plan: %s on %lld x %s (%lld nodes x %lld)   [%s]\n", m.name.c_str(),
           static_cast<long long>(c.cluster.gpus()), c.cluster.gpu.id.c_str(),
           static_cast<long long>(c.cluster.nodes), static_cast<long long>(c.cluster.gpus_per_node),
           c.source.c_str());
  o += "  layout     " + layout_line(c.layout) + "\n";
  if (stages_are_uneven(p.step.stage_layers)) {
    o += fmt("  stages     layers %s (stage %d paces the pipeline)\n",
             format_stage_layers(p.step.stage_layers).c_str(), p.step.slowest_stage);
  }
  o +=
      fmt("  links      NVLink %.0f GB/s per GPU (bidirectional), NIC %.0f Gb/s per GPU, "
          "storage %.0f GB/s\n",
          c.cluster.nvlink_bytes_per_s / 1e9, c.cluster.nic_bits_per_s / 1e9,
          c.cluster.storage_write_bytes_per_s / 1e9);
  o += "\nModel\n";
  o += fmt("  parameters           %.2f B (%.2f B per layer x %lld, embeddings %.2f B)\n",
           p.params.total / 1e9, p.params.per_layer / 1e9, static_cast<long long>(m.layers),
           (p.params.embedding + p.params.output) / 1e9);
  o += fmt("  FLOPs per step       model %.3g, hardware %.3g (with recompute)\n", p.flops.model,
           p.flops.hardware);
  o += "\nMemory per GPU (first pipeline stage)\n";
  o += "  weights              " + gb(mem.weights) + "\n";
  o += "  gradients            " + gb(mem.gradients) + "\n";
  o += "  optimizer states     " + gb(mem.optimizer) + "\n";
  o += "  activations          " + gb(mem.activations) +
       fmt("  (%.1f micro-batches in flight)\n", micro_batches_in_flight(c.layout));
  o += "  buffers              " + gb(mem.buffers) + "\n";
  o += "  total                " + gb(mem.total) + " of " + gb(mem.capacity) + " (" +
       pct(mem.used_fraction) + ") " + (mem.fits ? "fits" : "DOES NOT FIT") + "\n";
  o += "\nCommunication per step (per GPU)\n";
  auto comm = [&](const char* name, const CommVolume& v) {
    o += fmt("  %-4s on %-26s %9.2f GB  %s\n", name, v.link.c_str(), v.bytes_per_gpu / 1e9,
             seconds(v.time_s).c_str());
  };
  comm("TP", st.tp);
  comm("PP", st.pp);
  comm("DP", st.dp);
  o += fmt("  DP overlap           %s of DP/ZeRO time hidden behind backward\n",
           pct(st.dp_overlap_fraction).c_str());
  o += "\nStep time\n";
  o +=
      fmt("  per layer            fwd %s, bwd %s, recompute %s, TP comm %s; weight GEMMs at %s "
          "of peak\n",
          seconds(st.layer.forward_s).c_str(), seconds(st.layer.backward_s).c_str(),
          seconds(st.layer.recompute_s).c_str(), seconds(st.layer.tp_comm_s).c_str(),
          pct(st.layer.gemm_efficiency).c_str());
  auto part = [&](const char* name, double s) {
    o += fmt("  %-20s %10s  %5.1f%%\n", name, seconds(s).c_str(), 100 * s / st.step_s);
  };
  part("compute", st.compute_s - st.recompute_s);
  part("recompute", st.recompute_s);
  part("TP comm", st.tp_comm_s);
  part("PP p2p", st.pp_comm_s);
  part("PP bubble", st.pp_bubble_s);
  part("DP comm (exposed)", st.dp_exposed_s);
  part("optimizer", st.optimizer_s);
  o += fmt("  step                 %10s  (%.0f micro-batches)\n", seconds(st.step_s).c_str(),
           st.micro_batches);
  o += fmt("  throughput           %.0f tokens/s (%.0f per GPU)\n", p.tokens_per_s,
           p.tokens_per_s / static_cast<double>(c.cluster.gpus()));
  o += "  MFU                  " + pct(p.mfu) + "  (HFU " + pct(p.hfu) + ")\n";
  o += "  bottleneck           " + p.bottleneck + " (largest overhead: " + p.largest_overhead +
       ")\n";
  o += "\nCheckpointing\n";
  o += "  size                 " + gb(cp.size_bytes) +
       " (14 B/param: bf16 weights, fp32 master, Adam m, v)\n";
  o += "  write time           " + seconds(cp.write_s) +
       fmt(" at %.0f GB/s", c.cluster.storage_write_bytes_per_s / 1e9) +
       (c.reliability.async_checkpoint ? "; the step blocks " + seconds(cp.blocking_s) + " (async)"
                                       : "; the step blocks for all of it") +
       "\n";
  o += "  job MTBF             " + minutes(cp.mtbf_s) + ", restart " + minutes(cp.restart_s) + "\n";
  o += "  optimal interval     Young " + minutes(cp.young_interval_s) + ", Daly " +
       minutes(cp.daly_interval_s) + fmt(" = %.0f steps\n", cp.daly_interval_steps);
  o += "  expected goodput     " + pct(cp.goodput_at_daly) + " at Daly's interval\n";
  o += "  verdict              " + cp.verdict + "\n";
  return o;
}

std::string format_search(const SearchResult& r, const PlanConfig& base) {
  std::string o;
  o += fmt("Layouts for %s on %lld x %s, global batch %lld: %lld considered, %lld feasible\n",
           base.model.name.c_str(), static_cast<long long>(base.cluster.gpus()),
           base.cluster.gpu.id.c_str(), static_cast<long long>(base.layout.global_batch),
           static_cast<long long>(r.considered), static_cast<long long>(r.feasible));
  for (const auto& [why, n] : r.rejected) {
    o += fmt("  rejected: %lld %s\n", static_cast<long long>(n), why.c_str());
  }
  o += fmt("\n%-3s %3s %3s %4s %3s %3s %-9s %4s %10s %9s %6s %8s  %s\n", "#", "tp", "pp", "dp",
           "vpp", "mb", "recompute", "zero", "tokens/s", "step", "MFU", "mem/GPU", "bottleneck");
  int rank = 0;
  for (const auto& p : r.top) {
    const auto& l = p.config.layout;
    o +=
        fmt("%-3d %3lld %3lld %4lld %3lld %3lld %-9s %4d %10.0f %9s %5.1f%% %8s  %s\n", ++rank,
            static_cast<long long>(l.tp), static_cast<long long>(l.pp),
            static_cast<long long>(l.dp), static_cast<long long>(l.vpp),
            static_cast<long long>(l.micro_batch), std::string(recompute_name(l.recompute)).c_str(),
            l.zero, p.tokens_per_s, seconds(p.step.step_s).c_str(), 100 * p.mfu,
            gb(p.memory.total).c_str(), p.bottleneck.c_str());
  }
  if (r.top.empty()) o += "  no layout fits\n";
  return o;
}

std::string format_validation(const ValidationReport& r) {
  std::string o = fmt("%-48s %12s %12s %8s\n", "run", "predicted", "measured", "error");
  for (const auto& row : r.rows) {
    if (!row.problem.empty()) {
      o += fmt("%-48s  not predicted: %s\n", row.name.c_str(), row.problem.c_str());
      continue;
    }
    o += fmt("%-48s %11.3fs %12s %8s\n", row.name.c_str(), *row.predicted_s,
             row.measured_s ? fmt("%.3fs", *row.measured_s).c_str() : "-",
             row.error ? fmt("%+.1f%%", 100 * *row.error).c_str() : "-");
  }
  if (r.median_abs_error) {
    o += fmt("\n%d rows compared: median |error| %.1f%%, max |error| %.1f%%\n", r.compared,
             100 * *r.median_abs_error, 100 * *r.max_abs_error);
  } else {
    o += "\nno measured rows: predictions only\n";
  }
  return o;
}

std::string format_constants(const EfficiencyModel& e) {
  std::string o;
  for (const FitParameter& p : fit_parameters()) {
    o += fmt("  %-26s %g\n", std::string(p.name).c_str(), e.*p.field);
  }
  return o;
}

std::string format_loso(const LosoReport& r) {
  std::string o =
      "Leave-one-source-out: each source's runs predicted with the constants fitted on "
      "all the others\n\n";
  o += fmt("%-48s %-16s %-12s %10s %10s %8s\n", "run", "source", "class", "predicted", "measured",
           "error");
  std::map<std::string, std::vector<double>> by_class;
  for (const auto& row : r.rows) {
    o += fmt("%-48s %-16s %-12s %9.3fs %9.3fs %+7.1f%%\n", row.name.c_str(), row.source_id.c_str(),
             row.run_class.c_str(), row.predicted_s, row.measured_s, 100 * row.error);
    by_class[row.run_class.empty() ? "-" : row.run_class].push_back(row.error);
  }
  o += "\nper class:\n";
  for (const auto& [cls, errors] : by_class) {
    const ErrorSummary s = summarize_errors(errors);
    o += fmt("  %-14s %3zu runs  median |error| %5.1f%%  worst %5.1f%%\n", cls.c_str(),
             errors.size(), 100 * *s.median_abs, 100 * *s.max_abs);
  }
  if (r.median_abs_error) {
    o += fmt("\n%zu runs from %zu sources: median |error| %.1f%%, worst |error| %.1f%%\n",
             r.rows.size(), r.folds.size(), 100 * *r.median_abs_error, 100 * *r.max_abs_error);
  } else {
    o += "\nno measured runs\n";
  }
  o += "\nconstants fitted without each source:\n";
  for (const auto& fold : r.folds) {
    o += fmt("  without %s (%d runs):\n", fold.source_id.c_str(), fold.runs);
    o += format_constants(fold.fitted);
  }
  return o;
}

}  // namespace kiln::plan
