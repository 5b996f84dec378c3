// The JSON renderings.
#include "kiln/plan/report.h"

namespace kiln::plan {

namespace {

nlohmann::json comm_json(const CommVolume& v) {
  return {{"link", v.link}, {"bytes_per_gpu", v.bytes_per_gpu}, {"time_s", v.time_s}};
}

nlohmann::json layout_json(const LayoutSpec& l) {
  return {{"tp", l.tp},
          {"pp", l.pp},
          {"dp", l.dp},
          {"vpp", l.vpp},
          {"micro_batch", l.micro_batch},
          {"global_batch", l.global_batch},
          {"recompute", std::string(recompute_name(l.recompute))},
          {"sequence_parallel", l.sequence_parallel},
          {"zero", l.zero},
          {"attention", std::string(attention_name(l.attention))},
          {"overlap_grad_reduce", l.overlap_grad_reduce},
          {"tp_comm_overlap", l.tp_comm_overlap},
          {"pp_scatter_gather", l.pp_scatter_gather},
          {"zero3_gather", std::string(gather_unit_name(l.zero3_gather))},
          {"zero3_param_bytes", l.zero3_param_bytes},
          {"zero3_shards", l.zero3_shards()},
          {"mma", std::string(mma_name(l.mma))}};
}

template <typename T>
nlohmann::json optional_json(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json plan_to_json(const Plan& p) {
  const auto& c = p.config;
  const auto& m = c.model;
  const auto& st = p.step;
  const auto& mem = p.memory;
  const auto& cp = p.checkpoint;
  nlohmann::json j;
  j["source"] = c.source;
  j["model"] = {{"name", m.name},   {"layers", m.layers},     {"hidden", m.hidden},
                {"heads", m.heads}, {"kv_heads", m.kv_heads}, {"ffn_hidden", m.ffn_hidden},
                {"glu", m.glu},     {"seq_len", m.seq_len},   {"vocab", m.vocab}};
  j["cluster"] = {{"gpu", c.cluster.gpu.id},
                  {"gpus", c.cluster.gpus()},
                  {"nodes", c.cluster.nodes},
                  {"gpus_per_node", c.cluster.gpus_per_node},
                  {"nvlink_bytes_per_s", c.cluster.nvlink_bytes_per_s},
                  {"nic_bits_per_s", c.cluster.nic_bits_per_s},
                  {"storage_write_bytes_per_s", c.cluster.storage_write_bytes_per_s}};
  j["layout"] = layout_json(c.layout);
  j["layout"]["stage_layers"] = p.step.stage_layers;
  j["stage_times_s"] = p.step.stage_times_s;
  j["slowest_stage"] = p.step.slowest_stage;
  j["parameters"] = p.params.total;
  j["parameters_per_layer"] = p.params.per_layer;
  j["model_flops_per_step"] = p.flops.model;
  j["hardware_flops_per_step"] = p.flops.hardware;
  j["memory_per_gpu_bytes"] = mem.total;
  j["memory"] = {{"weights_bytes", mem.weights},
                 {"gradients_bytes", mem.gradients},
                 {"optimizer_bytes", mem.optimizer},
                 {"activations_bytes", mem.activations},
                 {"buffers_bytes", mem.buffers},
                 {"total_bytes", mem.total},
                 {"capacity_bytes", mem.capacity},
                 {"used_fraction", mem.used_fraction},
                 {"fits", mem.fits}};
  j["fits_in_memory"] = mem.fits;
  j["communication"] = {{"tp", comm_json(st.tp)},
                        {"pp", comm_json(st.pp)},
                        {"dp", comm_json(st.dp)},
                        {"dp_exposed_s", st.dp_exposed_s},
                        {"dp_overlap_fraction", st.dp_overlap_fraction}};
  j["layer"] = {{"forward_s", st.layer.forward_s},
                {"backward_s", st.layer.backward_s},
                {"recompute_s", st.layer.recompute_s},
                {"tp_comm_s", st.layer.tp_comm_s},
                {"gemm_efficiency", st.layer.gemm_efficiency}};
  j["step_breakdown_s"] = {{"compute", st.compute_s - st.recompute_s},
                           {"recompute", st.recompute_s},
                           {"tp_comm", st.tp_comm_s},
                           {"pp_p2p", st.pp_comm_s},
                           {"pp_bubble", st.pp_bubble_s},
                           {"dp_comm_exposed", st.dp_exposed_s},
                           {"optimizer", st.optimizer_s}};
  j["micro_batches"] = st.micro_batches;
  j["pipeline_bubble_fraction"] = st.pp_bubble_s / st.step_s;
  j["step_time_s"] = st.step_s;
  j["tokens_per_s"] = p.tokens_per_s;
  j["mfu"] = p.mfu;
  j["hfu"] = p.hfu;
  j["bottleneck"] = p.bottleneck;
  j["largest_overhead"] = p.largest_overhead;
  j["checkpoint_size_bytes"] = cp.size_bytes;
  j["checkpoint_write_s"] = cp.write_s;
  j["checkpoint_interval_s"] = cp.daly_interval_s;
  j["checkpoint"] = {{"size_bytes", cp.size_bytes},
                     {"write_s", cp.write_s},
                     {"blocking_s", cp.blocking_s},
                     {"job_mtbf_s", cp.mtbf_s},
                     {"restart_s", cp.restart_s},
                     {"young_interval_s", cp.young_interval_s},
                     {"daly_interval_s", cp.daly_interval_s},
                     {"daly_interval_steps", cp.daly_interval_steps},
                     {"goodput_at_daly", cp.goodput_at_daly},
                     {"configured_every_steps", c.reliability.checkpoint_every_steps},
                     {"configured_interval_s", cp.configured_interval_s},
                     {"goodput_at_configured", cp.goodput_at_configured},
                     {"verdict", cp.verdict}};
  j["expected_goodput"] = cp.goodput_at_daly;
  return j;
}

nlohmann::json search_to_json(const SearchResult& r) {
  nlohmann::json j;
  j["considered"] = r.considered;
  j["feasible"] = r.feasible;
  j["rejected"] = nlohmann::json::object();
  for (const auto& [why, n] : r.rejected) j["rejected"][why] = n;
  j["top"] = nlohmann::json::array();
  for (const auto& p : r.top) {
    nlohmann::json e = layout_json(p.config.layout);
    e["tokens_per_s"] = p.tokens_per_s;
    e["step_time_s"] = p.step.step_s;
    e["mfu"] = p.mfu;
    e["memory_per_gpu_bytes"] = p.memory.total;
    e["bottleneck"] = p.bottleneck;
    j["top"].push_back(std::move(e));
  }
  return j;
}

nlohmann::json validation_to_json(const ValidationReport& r) {
  nlohmann::json j;
  j["source"] = r.source;
  j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json e = {{"name", row.name},
                        {"line", row.line},
                        {"predicted_step_time_s", optional_json(row.predicted_s)},
                        {"measured_step_time_s", optional_json(row.measured_s)},
                        {"error", optional_json(row.error)}};
    if (!row.problem.empty()) e["problem"] = row.problem;
    if (!row.source_id.empty()) e["source_id"] = row.source_id;
    if (!row.run_class.empty()) e["class"] = row.run_class;
    j["rows"].push_back(std::move(e));
  }
  j["compared"] = r.compared;
  j["median_abs_error"] = optional_json(r.median_abs_error);
  j["max_abs_error"] = optional_json(r.max_abs_error);
  return j;
}

nlohmann::json loso_to_json(const LosoReport& r) {
  nlohmann::json j;
  j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    j["rows"].push_back({{"name", row.name},
                         {"source_id", row.source_id},
                         {"class", row.run_class},
                         {"predicted_step_time_s", row.predicted_s},
                         {"measured_step_time_s", row.measured_s},
                         {"error", row.error}});
  }
  j["folds"] = nlohmann::json::array();
  for (const auto& fold : r.folds) {
    nlohmann::json constants;
    for (const FitParameter& p : fit_parameters())
      constants[std::string(p.name)] = fold.fitted.*p.field;
    j["folds"].push_back(
        {{"source_id", fold.source_id}, {"runs", fold.runs}, {"constants", constants}});
  }
  j["median_abs_error"] = optional_json(r.median_abs_error);
  j["max_abs_error"] = optional_json(r.max_abs_error);
  return j;
}

}  // namespace kiln::plan
