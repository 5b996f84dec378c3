#include "kiln/diag/html_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "kiln/base/fs.h"
#include "kiln/base/markup.h"

namespace kiln::diag {
namespace {

// Steps as buckets of `width` consecutive steps: each series holds the mean.
struct Bucketed {
  std::vector<double> step;  // first step of each bucket
  std::array<std::vector<double>, kPhaseCount> phase;
  std::vector<double> loss;
};

// Phase seconds averaged over ranks per step, then bucketed.
Bucketed breakdown(const TraceDir& t, std::int64_t skip) {
  std::map<std::int64_t, std::pair<std::array<double, kPhaseCount>, int>> per_step;
  std::map<std::int64_t, double> loss;  // rank 0's (every rank's mean loss is the same model)
  for (const auto& r : t.ranks) {
    for (const auto& s : r.steps) {
      if (s.step < skip) continue;
      auto& [sum, n] = per_step[s.step];
      for (int i = 0; i < kPhaseCount; ++i) sum[i] += s.phase_s[i];
      ++n;
      if (r.rank == t.ranks.front().rank) loss[s.step] = s.loss;
    }
  }
  Bucketed b;
  const std::size_t width =
      std::max<std::size_t>(1, (per_step.size() + kHtmlMaxPoints - 1) / kHtmlMaxPoints);
  std::size_t k = 0;
  std::array<double, kPhaseCount> acc{};
  double loss_acc = 0;
  int loss_n = 0;
  std::int64_t first = 0;
  for (auto it = per_step.begin(); it != per_step.end(); ++it, ++k) {
    if (k % width == 0) first = it->first;
    const auto& [sum, n] = it->second;
    for (int i = 0; i < kPhaseCount; ++i) acc[i] += sum[i] / n;
    if (auto l = loss.find(it->first); l != loss.end() && l->second == l->second) {
      loss_acc += l->second;
      ++loss_n;
    }
    if (k % width == width - 1 || std::next(it) == per_step.end()) {
      const double cnt = static_cast<double>(k % width + 1);
      b.step.push_back(static_cast<double>(first));
      for (int i = 0; i < kPhaseCount; ++i) b.phase[i].push_back(acc[i] / cnt);
      b.loss.push_back(loss_n > 0 ? loss_acc / loss_n : 0);
      acc = {};
      loss_acc = 0;
      loss_n = 0;
    }
  }
  return b;
}

nlohmann::json rank_series(const RankTrace& r, std::int64_t skip) {
  std::vector<const StepRecord*> kept;
  for (const auto& s : r.steps) {
    if (s.step >= skip) kept.push_back(&s);
  }
  const std::size_t width =
      std::max<std::size_t>(1, (kept.size() + kHtmlMaxPoints - 1) / kHtmlMaxPoints);
  nlohmann::json steps = nlohmann::json::array(), secs = nlohmann::json::array();
  for (std::size_t i = 0; i < kept.size(); i += width) {
    double sum = 0;
    std::size_t n = 0;
    for (; n < width && i + n < kept.size(); ++n) sum += kept[i + n]->step_s;
    steps.push_back(kept[i]->step);
    secs.push_back(sum / static_cast<double>(n));
  }
  return {{"rank", r.rank}, {"step", steps}, {"step_s", secs}};
}

// The page's script: draws each chart into its <svg> from DATA and marks it
// data-drawn="N" (N shapes) so a headless browser test can see it ran.
constexpr char kScript[] = R"JS(
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#4e79a7','#f28e2b','#e15759','#76b7b2','#59a14f','#edc948','#b07aa1','#9c755f'];
function el(parent, tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  parent.appendChild(e);
  return e;
}
function frame(svg, xs, ymax, ylabel) {
  const W = 760, H = 260, L = 60, R = 10, T = 10, B = 30;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (ymax > 0 ? y / ymax : 0) * (H - T - B);
  el(svg, 'line', {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#333'});
  el(svg, 'line', {x1: L, y1: T, x2: L, y2: H - B, stroke: '#333'});
  const lab = (x, y, s, anchor) => { const t = el(svg, 'text', {x, y, 'font-size': 11, 'text-anchor': anchor}); t.textContent = s; };
  lab(L - 4, sy(ymax) + 4, ymax.toPrecision(3), 'end');
  lab(L - 4, H - B, '0', 'end');
  lab(L, H - 10, 'step ' + x0, 'start');
  lab(W - R, H - 10, 'step ' + x1, 'end');
  lab(L + 4, T + 12, ylabel, 'start');
  return {sx, sy};
}
function line(svg, f, xs, ys, color, cls) {
  const d = xs.map((x, i) => (i ? 'L' : 'M') + f.sx(x).toFixed(1) + ' ' + f.sy(ys[i]).toFixed(1)).join(' ');
  return el(svg, 'path', {d, fill: 'none', stroke: color, 'stroke-width': 2, class: cls});
}
function legend(div, names) {
  names.forEach((n, i) => {
    const s = document.createElement('span');
    s.innerHTML = `<i style="background:${COLORS[i % COLORS.length]}"></i>${n}`;
    div.appendChild(s);
  });
}
function drawBreakdown() {
  const svg = document.getElementById('breakdown'), b = DATA.breakdown;
  if (!b.step.length) return;
  const totals = b.step.map((_, i) => b.phases.reduce((a, p) => a + p.s[i], 0));
  const f = frame(svg, b.step, Math.max(...totals) * 1.05, 'seconds per step (mean over ranks)');
  const base = b.step.map(() => 0);
  let n = 0;
  b.phases.forEach((p, k) => {
    const top = base.map((v, i) => v + p.s[i]);
    const pts = b.step.map((x, i) => f.sx(x).toFixed(1) + ',' + f.sy(top[i]).toFixed(1));
    const back = b.step.map((x, i) => f.sx(x).toFixed(1) + ',' + f.sy(base[i]).toFixed(1)).reverse();
    if (b.step.length === 1) { pts.push((f.sx(b.step[0]) + 8) + ',' + f.sy(top[0])); back.unshift((f.sx(b.step[0]) + 8) + ',' + f.sy(base[0])); }
    el(svg, 'polygon', {points: pts.concat(back).join(' '), fill: COLORS[k % COLORS.length], class: 'phase ' + p.name});
    top.forEach((v, i) => base[i] = v);
    ++n;
  });
  legend(document.getElementById('breakdown-legend'), b.phases.map(p => p.name));
  svg.dataset.drawn = n;
}
function drawLoss() {
  const svg = document.getElementById('loss'), b = DATA.breakdown;
  if (!b.step.length) return;
  const f = frame(svg, b.step, Math.max(...b.loss) * 1.05, 'training loss');
  line(svg, f, b.step, b.loss, COLORS[0], 'loss');
  svg.dataset.drawn = 1;
}
function drawRanks() {
  const svg = document.getElementById('ranks');
  const all = DATA.ranks.flatMap(r => r.step), ys = DATA.ranks.flatMap(r => r.step_s);
  if (!all.length) return;
  const f = frame(svg, all, Math.max(...ys) * 1.05, 'step seconds per rank');
  DATA.ranks.forEach((r, i) => line(svg, f, r.step, r.step_s, COLORS[i % COLORS.length], 'rank rank-' + r.rank));
  legend(document.getElementById('ranks-legend'), DATA.ranks.map(r => 'rank ' + r.rank));
  svg.dataset.drawn = DATA.ranks.length;
}
drawBreakdown(); drawLoss(); drawRanks();
// Where each chart landed, for tests that look at a screenshot's pixels.
document.querySelectorAll('svg[data-drawn]').forEach(svg => {
  const r = svg.getBoundingClientRect();
  svg.dataset.rect = [r.left, r.top + window.scrollY, r.width, r.height].map(Math.round).join(',');
});
document.body.dataset.charts = document.querySelectorAll('svg[data-drawn]').length;
)JS";

constexpr char kStyle[] = R"CSS(
body { font: 14px sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.verdict { border-left: 6px solid #e15759; padding: 8px 16px; background: #fafafa; }
.verdict b.name { font-size: 18px; }
svg { width: 760px; height: 260px; display: block; }
.legend span { margin-right: 14px; } .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; }
)CSS";

}  // namespace

std::string render_html_report(const TraceDir& t, const Verdict& v, std::int64_t skip) {
  Bucketed b = breakdown(t, skip);
  nlohmann::json phases = nlohmann::json::array();
  for (int i = 0; i < kPhaseCount; ++i) {
    phases.push_back({{"name", phase_name(static_cast<Phase>(i))}, {"s", b.phase[i]}});
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& r : t.ranks) ranks.push_back(rank_series(r, skip));
  nlohmann::json data = {{"breakdown", {{"step", b.step}, {"phases", phases}, {"loss", b.loss}}},
                         {"ranks", ranks},
                         {"verdict", verdict_to_json(v)}};
  // JSON inside <script>: a "</" would end the element early.
  std::string json = data.dump();
  for (size_t pos = 0; (pos = json.find("</", pos)) != std::string::npos; pos += 3) {
    json.replace(pos, 2, "<\\/");
  }

  std::string evidence;
  for (const auto& e : v.evidence) evidence += "<li>" + markup_escape(e) + "</li>";
  std::string fractions;
  for (const auto& [name, f] : v.phase_fractions) {
    fractions += fmt::format("<tr><th>{}</th><td>{:.1f}%</td></tr>", markup_escape(name), 100 * f);
  }
  std::string rank = v.rank >= 0 ? fmt::format(" (rank {})", v.rank) : "";
  return fmt::format(
      R"(<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kiln diagnose: {dir}</title><style>{style}</style></head>
<body>
<h1>kiln diagnose: {dir}</h1>
<div class="verdict" id="verdict"><b class="name">bottleneck: {verdict}{rank}</b>
<ul>{evidence}</ul><p><b>next:</b> {next}</p>
<p><b>rule of thumb (utilisation counters only):</b> {rule} &mdash; {rule_reason}</p>
<p>{world} ranks, {steps} steps summarised, mean step {step_ms:.2f} ms; the charts start at
step {skip} (the warm-up before it is left out, <code>--skip</code>)</p></div>
<h2>Where the step time goes</h2><svg id="breakdown"></svg><div class="legend" id="breakdown-legend"></div>
<table>{fractions}</table>
<h2>Loss</h2><svg id="loss"></svg>
<h2>Step time per rank</h2><svg id="ranks"></svg><div class="legend" id="ranks-legend"></div>
<script>const DATA = {data};</script>
<script>{script}</script>
</body></html>
)",
      fmt::arg("dir", markup_escape(t.dir)), fmt::arg("style", kStyle),
      fmt::arg("verdict", markup_escape(v.verdict)), fmt::arg("rank", rank),
      fmt::arg("evidence", evidence), fmt::arg("next", markup_escape(v.next)),
      fmt::arg("rule", markup_escape(v.rule.verdict)),
      fmt::arg("rule_reason", markup_escape(v.rule.reason)), fmt::arg("world", v.world_size),
      fmt::arg("skip", skip), fmt::arg("steps", v.steps), fmt::arg("step_ms", 1e3 * v.step_s),
      fmt::arg("fractions", fractions), fmt::arg("data", json), fmt::arg("script", kScript));
}

Status write_html_report(const std::string& path, const TraceDir& t, const Verdict& v,
                         std::int64_t skip) {
  return write_file_atomic(path, render_html_report(t, v, skip), Durability::kAtomicOnly);
}

}  // namespace kiln::diag
