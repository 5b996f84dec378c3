#include "kiln/train/testing/train_on.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "kiln/comm/testing/multiprocess.h"

namespace kiln::train::testing {

using comm::testing::run_ranks;

Result<TrainResult> train_on(int world, const TrainConfig& config, const std::string& out_file,
                             std::int64_t crash_after_step, const DiagOptions& diag) {
  std::remove((out_file + ".err").c_str());
  auto run = run_ranks(world, [&](comm::Communicator& comm) -> Status {
    TrainOptions o{.config = config, .progress = false, .keep_parameters = true,
                   .crash_after_step = crash_after_step, .diag = diag};
    auto r = run_training(o, comm);
    if (!r.is_ok()) {
      std::ofstream(out_file + ".err") << r.status().to_string();
      return r.status();
    }
    if (comm.rank() != 0) return Status::ok();
    std::ofstream out(out_file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&r->start_step), sizeof r->start_step);
    out.write(reinterpret_cast<const char*>(&r->resumed_in_place), sizeof r->resumed_in_place);
    out.write(reinterpret_cast<const char*>(&r->parameter_digest), sizeof r->parameter_digest);
    out.write(reinterpret_cast<const char*>(&r->eval_loss), sizeof r->eval_loss);
    out.write(reinterpret_cast<const char*>(r->parameters.data()),
              static_cast<std::streamsize>(r->parameters.size() * sizeof(float)));
    return out ? Status::ok() : internal_error("writing " + out_file);
  }, {.deadline = std::chrono::seconds(240)});
  if (!run.ok()) {
    std::ifstream err(out_file + ".err");
    std::string why((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
    return aborted(run.report + why);
  }
  std::ifstream in(out_file, std::ios::binary);
  TrainResult r;
  in.read(reinterpret_cast<char*>(&r.start_step), sizeof r.start_step);
  in.read(reinterpret_cast<char*>(&r.resumed_in_place), sizeof r.resumed_in_place);
  in.read(reinterpret_cast<char*>(&r.parameter_digest), sizeof r.parameter_digest);
  in.read(reinterpret_cast<char*>(&r.eval_loss), sizeof r.eval_loss);
  float f;
  while (in.read(reinterpret_cast<char*>(&f), sizeof f)) r.parameters.push_back(f);
  return r;
}

std::vector<nlohmann::json> step_records(const std::string& trace_dir, int rank) {
  std::vector<nlohmann::json> out;
  std::ifstream in(trace_dir + "/rank-" + std::to_string(rank) + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["type"] == "step") out.push_back(std::move(j));
  }
  return out;
}

double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double scale = std::max({std::fabs(a[i]), std::fabs(b[i]), 1e-3f});
    worst = std::max(worst, std::fabs(a[i] - b[i]) / scale);
  }
  return worst;
}

}  // namespace kiln::train::testing
