// The SVG rendering: two stacked bars, step time and memory per GPU.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "kiln/base/markup.h"
#include "kiln/plan/report.h"

namespace kiln::plan {

namespace {

struct Segment {
  std::string label;
  double value;
  const char* color;
};


// One bar at height y: segments scaled so `scale_max` spans the width; a
// legend row under it.
std::string bar(const std::string& title, const std::vector<Segment>& segs, double scale_max,
                const char* unit, double unit_div, int y, double limit = 0) {
  constexpr int kLeft = 20, kWidth = 760, kHeight = 36;
  char buf[512];
  std::string o;
  double total = 0;
  for (const auto& s : segs) total += s.value;
  std::snprintf(
      buf, sizeof buf,
      "<text x=\"%d\" y=\"%d\" font-size=\"15\" font-weight=\"bold\">%s: %.2f %s</text>\n", kLeft,
      y - 8, markup_escape(title).c_str(), total / unit_div, unit);
  o += buf;
  double x = kLeft;
  for (const auto& s : segs) {
    if (s.value <= 0) continue;
    const double w = s.value / scale_max * kWidth;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\">"
                  "<title>%s: %.3f %s</title></rect>\n",
                  x, y, w, kHeight, s.color, markup_escape(s.label).c_str(), s.value / unit_div, unit);
    o += buf;
    x += w;
  }
  if (limit > 0) {
    const double lx = kLeft + limit / scale_max * kWidth;
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"black\" "
                  "stroke-width=\"2\" stroke-dasharray=\"4 3\"/>"
                  "<text x=\"%.1f\" y=\"%d\" font-size=\"11\">capacity</text>\n",
                  lx, y - 4, lx, y + kHeight + 4, lx + 3, y + kHeight + 14);
    o += buf;
  }
  int lx = kLeft;
  const int ly = y + kHeight + 30;
  for (const auto& s : segs) {
    if (s.value <= 0) continue;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                  "<text x=\"%d\" y=\"%d\" font-size=\"12\">%s %.0f%%</text>\n",
                  lx, ly - 9, s.color, lx + 14, ly, markup_escape(s.label).c_str(), 100 * s.value / total);
    o += buf;
    lx += 18 + 8 * static_cast<int>(s.label.size() + 5);
  }
  return o;
}

}  // namespace

std::string render_svg(const Plan& p) {
  const auto& st = p.step;
  const auto& mem = p.memory;
  const std::vector<Segment> step = {
      {"compute", st.compute_s - st.recompute_s, "#4e79a7"},
      {"recompute", st.recompute_s, "#a0cbe8"},
      {"TP comm", st.tp_comm_s, "#f28e2b"},
      {"PP p2p", st.pp_comm_s, "#ffbe7d"},
      {"PP bubble", st.pp_bubble_s, "#e15759"},
      {"DP comm", st.dp_exposed_s, "#76b7b2"},
      {"optimizer", st.optimizer_s, "#59a14f"},
  };
  const std::vector<Segment> memory = {
      {"weights", mem.weights, "#4e79a7"},     {"gradients", mem.gradients, "#f28e2b"},
      {"optimizer", mem.optimizer, "#59a14f"}, {"activations", mem.activations, "#e15759"},
      {"buffers", mem.buffers, "#bab0ac"},
  };
  std::string o =
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"260\" "
      "font-family=\"sans-serif\">\n<rect width=\"800\" height=\"260\" fill=\"white\"/>\n";
  char head[512];
  std::snprintf(head, sizeof head,
                "<text x=\"20\" y=\"22\" font-size=\"13\">%s, %lld x %s, TP %lld PP %lld DP %lld: "
                "MFU %.1f%%, bottleneck %s</text>\n",
                markup_escape(p.config.model.name).c_str(),
                static_cast<long long>(p.config.cluster.gpus()), p.config.cluster.gpu.id.c_str(),
                static_cast<long long>(p.config.layout.tp),
                static_cast<long long>(p.config.layout.pp),
                static_cast<long long>(p.config.layout.dp), 100 * p.mfu, p.bottleneck.c_str());
  o += head;
  o += bar("Step time", step, st.step_s, "s", 1, 60);
  const double mem_scale = std::max(mem.total, mem.capacity);
  o += bar("Memory per GPU", memory, mem_scale, "GB", 1e9, 170, mem.capacity);
  o += "</svg>\n";
  return o;
}

}  // namespace kiln::plan
