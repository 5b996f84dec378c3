#include "kiln/plan/host_report.h"

#include <fmt/format.h>

#include "kiln/plan/flops.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

namespace {

double tokens_per_s(const PlanConfig& c, const HostStepTime& st) {
  return static_cast<double>(c.layout.global_batch * c.model.seq_len) / st.step_s;
}

std::string ms(double s) { return fmt::format("{:.2f} ms", s * 1e3); }

}  // namespace

std::string format_host_plan(const PlanConfig& c, const HostStepTime& st) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const HostProfile& hp = *c.cluster.host;
  const ParamCount pc = count_params(m);
  std::string out;
  out += fmt::format("kiln plan: {} ({})\n", m.name, c.source);
  out += fmt::format("  model      {} layers, hidden {}, {} heads, seq {}, vocab {}: {:.3f} M parameters\n",
                     m.layers, m.hidden, m.heads, m.seq_len, m.vocab, pc.total / 1e6);
  out += fmt::format("  host       {} ({}, {} cores; {})\n", hp.host.empty() ? "?" : hp.host,
                     hp.source, hp.cores, hp.blas.empty() ? "BLAS ?" : hp.blas);
  out += fmt::format("  layout     TP {} x PP {} x DP {}{}, {} ranks on {} host(s), {} thread(s) each; "
                     "{} micro-batches of {} sequences; stages {}\n",
                     l.tp, l.pp, l.dp, l.vpp > 1 ? fmt::format(" (vpp {})", l.vpp) : "",
                     l.tp * l.pp * l.dp, c.cluster.nodes, st.threads_per_rank, st.micro_batches,
                     l.micro_batch, format_stage_layers(st.stage_layers));
  out += fmt::format("  sharing    {:.2f} runnable threads per core in the steady state; compute x{:.2f}, "
                     "{:.0f} us per blocking message (Note [Core sharing])\n",
                     st.oversubscription, st.sharing_slowdown, st.handoff_per_message_s * 1e6);
  out += fmt::format("  layer      forward {} (linear {}, attention {}, elementwise {}), backward {}, "
                     "TP comm {}\n",
                     ms(st.layer.forward_s), ms(st.layer.gemm_fwd_s), ms(st.layer.attention_fwd_s),
                     ms(st.layer.elementwise_fwd_s), ms(st.layer.backward_s), ms(st.layer.tp_comm_s));
  out += "\nstep time\n";
  auto row = [&](const char* name, double s) {
    out += fmt::format("  {:<12} {:>12} {:6.1f}%\n", name, ms(s), 100 * s / st.step_s);
  };
  row("compute", st.compute_s);
  row("TP comm", st.tp_comm_s);
  row("PP p2p", st.pp_comm_s);
  row("hand-offs", st.handoff_s);
  row("PP bubble", st.pp_bubble_s);
  row("DP comm", st.dp_comm_s);
  row("optimizer", st.optimizer_s);
  out += fmt::format("  {:<12} {:>12}   {:.0f} tokens/s\n", "step", ms(st.step_s), tokens_per_s(c, st));
  if (l.pp > 1) {
    out += fmt::format("  bubble: {:.3f} of the ideal time here; (p-1)/(v m) = {:.3f} on dedicated devices\n",
                       st.bubble_fraction, st.bubble_formula);
  }
  return out;
}

nlohmann::json host_plan_to_json(const PlanConfig& c, const HostStepTime& st) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const HostProfile& hp = *c.cluster.host;
  nlohmann::json j;
  j["source"] = c.source;
  j["model"] = {{"name", m.name},   {"layers", m.layers},   {"hidden", m.hidden},
                {"heads", m.heads}, {"seq_len", m.seq_len}, {"vocab", m.vocab},
                {"parameters", count_params(m).total}};
  j["host"] = {{"profile", hp.source},
               {"name", hp.host},
               {"cores", hp.cores},
               {"hosts", c.cluster.nodes},
               {"ranks_per_host", st.ranks_per_host},
               {"threads_per_rank", st.threads_per_rank},
               {"oversubscription", st.oversubscription},
               {"sharing_slowdown", st.sharing_slowdown},
               {"handoff_per_message_s", st.handoff_per_message_s},
               {"tp_work_between_messages_s", st.tp_work_between_messages_s}};
  j["layout"] = {{"tp", l.tp},
                 {"pp", l.pp},
                 {"dp", l.dp},
                 {"vpp", l.vpp},
                 {"micro_batch", l.micro_batch},
                 {"microbatches", st.micro_batches},
                 {"global_batch", l.global_batch},
                 {"stage_layers", st.stage_layers}};
  j["layer"] = {{"forward_s", st.layer.forward_s},
                {"linear_forward_s", st.layer.gemm_fwd_s},
                {"attention_forward_s", st.layer.attention_fwd_s},
                {"elementwise_forward_s", st.layer.elementwise_fwd_s},
                {"backward_s", st.layer.backward_s},
                {"tp_comm_s", st.layer.tp_comm_s}};
  j["stages"] = {{"forward_s", st.stage_forward_s},
                 {"backward_s", st.stage_backward_s},
                 {"p2p_bytes", st.stage_p2p_bytes},
                 {"slowest", st.slowest_stage},
                 {"busy_s", st.pipeline.busy_s},
                 {"finish_s", st.pipeline.finish_s}};
  j["breakdown"] = {{"compute_s", st.compute_s},   {"tp_comm_s", st.tp_comm_s},
                    {"pp_comm_s", st.pp_comm_s},   {"handoff_s", st.handoff_s},
                    {"pp_bubble_s", st.pp_bubble_s},
                    {"dp_comm_s", st.dp_comm_s},   {"optimizer_s", st.optimizer_s}};
  j["bubble"] = {{"formula", st.bubble_formula}, {"simulated", st.bubble_fraction}};
  j["step_time_s"] = st.step_s;
  j["tokens_per_s"] = tokens_per_s(c, st);
  return j;
}

}  // namespace kiln::plan
