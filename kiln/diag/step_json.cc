#include "kiln/diag/step_json.h"

#include <limits>
#include <string>

namespace kiln::diag {

nlohmann::json step_to_json(const StepRecord &r) {
  nlohmann::json j = {{"type", "step"},      {"step", r.step}, {"rank", r.rank},
                      {"t", r.start_unix_s}, {"loss", r.loss}, {"samples", r.samples},
                      {"step_s", r.step_s}};
  for (int i = 0; i < kPhaseCount; ++i) j[phase_name(static_cast<Phase>(i))] = r.phase_s[i];
  j["comm_bytes"] = r.comm_bytes;
  j["comm_s"] = r.comm_s;
  j["cache_hit_rate"] = r.cache_hit_rate;
  if (r.mesh.known()) j["mesh"] = {{"dp", r.mesh.dp}, {"pp", r.mesh.pp}, {"tp", r.mesh.tp}};
  if (r.collectives_in_backward >= 0) j["collectives_in_backward"] = r.collectives_in_backward;
  if (!r.collectives.empty()) {
    // [bytes, seconds, bytes/s] per collective: bandwidth written out so a
    // reader of metrics.jsonl need not divide.
    nlohmann::json cs = nlohmann::json::array();
    for (const auto& c : r.collectives) {
      cs.push_back({c.bytes, c.seconds, c.seconds > 0 ? static_cast<double>(c.bytes) / c.seconds : 0.0});
    }
    j["collectives"] = std::move(cs);
  }
  return j;
}

namespace {

template <typename T>
Status read_field(const nlohmann::json &j, const char *key, T *out, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (!required) return Status::ok();
    return invalid_argument(std::string("step record: missing field \"") + key + "\"");
  }
  if (!it->is_number()) {
    return invalid_argument(std::string("step record: field \"") + key + "\" is " +
                            it->type_name() + ", expected a number");
  }
  *out = it->get<T>();
  return Status::ok();
}

}  // namespace

Result<StepRecord> step_from_json(const nlohmann::json &j) {
  if (!j.is_object()) return invalid_argument("step record: not a JSON object");
  StepRecord r;
  KILN_RETURN_IF_ERROR(read_field(j, "step", &r.step, true));
  KILN_RETURN_IF_ERROR(read_field(j, "rank", &r.rank, true));
  KILN_RETURN_IF_ERROR(read_field(j, "step_s", &r.step_s, true));
  KILN_RETURN_IF_ERROR(read_field(j, "t", &r.start_unix_s, false));
  // JSON has no NaN: a diverged loss is written as null and read back as NaN.
  r.loss = std::numeric_limits<double>::quiet_NaN();
  KILN_RETURN_IF_ERROR(read_field(j, "loss", &r.loss, false));
  KILN_RETURN_IF_ERROR(read_field(j, "samples", &r.samples, false));
  for (int i = 0; i < kPhaseCount; ++i) {
    KILN_RETURN_IF_ERROR(read_field(j, phase_name(static_cast<Phase>(i)), &r.phase_s[i], false));
  }
  KILN_RETURN_IF_ERROR(read_field(j, "comm_bytes", &r.comm_bytes, false));
  KILN_RETURN_IF_ERROR(read_field(j, "comm_s", &r.comm_s, false));
  KILN_RETURN_IF_ERROR(read_field(j, "cache_hit_rate", &r.cache_hit_rate, false));
  KILN_RETURN_IF_ERROR(read_field(j, "collectives_in_backward", &r.collectives_in_backward, false));
  if (auto it = j.find("mesh"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return invalid_argument("step record: \"mesh\" is " + it->dump() + ", expected {dp, pp, tp}");
    KILN_RETURN_IF_ERROR(read_field(*it, "dp", &r.mesh.dp, true).with_context("step record \"mesh\""));
    KILN_RETURN_IF_ERROR(read_field(*it, "pp", &r.mesh.pp, true).with_context("step record \"mesh\""));
    KILN_RETURN_IF_ERROR(read_field(*it, "tp", &r.mesh.tp, true).with_context("step record \"mesh\""));
  }
  if (auto it = j.find("collectives"); it != j.end() && !it->is_null()) {
    for (const auto& c : *it) {
      if (!c.is_array() || c.size() < 2 || !c[0].is_number_unsigned() || !c[1].is_number()) {
        return invalid_argument("step record: \"collectives\" holds " + c.dump() +
                                ", expected [bytes, seconds, bytes_per_s]");
      }
      r.collectives.push_back({c[0].get<std::uint64_t>(), c[1].get<double>()});
    }
  }
  return r;
}

}  // namespace kiln::diag
