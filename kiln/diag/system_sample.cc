#include "kiln/diag/system_sample.h"

#include <algorithm>

namespace kiln::diag {

double SystemSample::net_util() const {
  double u = -1;
  for (const auto& i : net) {
    if (i.speed_Bps > 0) u = std::max(u, std::max(i.rx_Bps, i.tx_Bps) / i.speed_Bps);
  }
  return u;
}

double SystemSample::net_rx_Bps() const {
  double t = 0;
  for (const auto& i : net) {
    if (i.name != "lo") t += i.rx_Bps;
  }
  return t;
}

double SystemSample::net_tx_Bps() const {
  double t = 0;
  for (const auto& i : net) {
    if (i.name != "lo") t += i.tx_Bps;
  }
  return t;
}

nlohmann::json system_to_json(const SystemSample& s) {
  nlohmann::json j = {{"type", "system"},
                      {"t", s.t_unix_s},
                      {"interval_s", s.interval_s},
                      {"cpu_cores", s.cpu_cores},
                      {"cpu_count", s.cpu_count},
                      {"host_cpu_util", s.host_cpu_util},
                      {"rss_bytes", s.rss_bytes},
                      {"mem_available_bytes", s.mem_available_bytes},
                      {"mem_total_bytes", s.mem_total_bytes},
                      {"disk_read_Bps", s.disk_read_Bps},
                      {"disk_write_Bps", s.disk_write_Bps},
                      {"disk_util", s.disk_util}};
  nlohmann::json net = nlohmann::json::object();
  for (const auto& i : s.net) {
    net[i.name] = {{"rx_Bps", i.rx_Bps}, {"tx_Bps", i.tx_Bps}, {"speed_Bps", i.speed_Bps}};
  }
  j["net"] = std::move(net);
  if (s.gpu_available) {
    nlohmann::json gpus = nlohmann::json::array();
    for (const auto& g : s.gpus) {
      gpus.push_back({{"index", g.index},
                      {"util", g.util},
                      {"mem_used_bytes", g.mem_used_bytes},
                      {"mem_total_bytes", g.mem_total_bytes}});
    }
    j["gpu"] = std::move(gpus);
  } else {
    j["gpu"] = "not available: " + s.gpu_unavailable_reason;
  }
  return j;
}

SystemSample system_from_json(const nlohmann::json& j) {
  SystemSample s;
  auto num = [&](const char* key, double dflt) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : dflt;
  };
  s.t_unix_s = num("t", 0);
  s.interval_s = num("interval_s", 0);
  s.cpu_cores = num("cpu_cores", 0);
  s.cpu_count = static_cast<int>(num("cpu_count", 0));
  s.host_cpu_util = num("host_cpu_util", -1);
  s.rss_bytes = num("rss_bytes", 0);
  s.mem_available_bytes = num("mem_available_bytes", 0);
  s.mem_total_bytes = num("mem_total_bytes", 0);
  s.disk_read_Bps = num("disk_read_Bps", 0);
  s.disk_write_Bps = num("disk_write_Bps", 0);
  s.disk_util = num("disk_util", -1);
  if (auto it = j.find("net"); it != j.end() && it->is_object()) {
    for (const auto& [name, v] : it->items()) {
      s.net.push_back(
          {name, v.value("rx_Bps", 0.0), v.value("tx_Bps", 0.0), v.value("speed_Bps", -1.0)});
    }
  }
  if (auto it = j.find("gpu"); it != j.end() && it->is_array()) {
    s.gpu_available = true;
    for (const auto& g : *it) {
      s.gpus.push_back({g.value("index", 0), g.value("util", 0.0), g.value("mem_used_bytes", 0.0),
                        g.value("mem_total_bytes", 0.0)});
    }
  } else if (it != j.end() && it->is_string()) {
    s.gpu_unavailable_reason = it->get<std::string>();
  }
  return s;
}

}  // namespace kiln::diag
