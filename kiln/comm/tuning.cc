#include "kiln/comm/tuning.h"

#include <cmath>

#include <fmt/format.h>

#include "kiln/base/knobs.h"

namespace kiln::comm {
namespace {

const Knob<double> kShmAlpha{"KILN_SHM_ALPHA_US", 1.5, "cost model: shm per-message latency, µs"};
const Knob<double> kShmGbps{"KILN_SHM_GBPS", 6.0, "cost model: shm bandwidth, GB/s"};
const Knob<double> kTcpAlpha{"KILN_TCP_ALPHA_US", 30.0, "cost model: tcp per-message latency, µs"};
const Knob<double> kTcpGbps{"KILN_TCP_GBPS", 1.0, "cost model: tcp bandwidth, GB/s"};

int floor_pow2(int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

int log2_ceil(int n) {
  int k = 0;
  while ((1 << k) < n) ++k;
  return k;
}

}  // namespace

double ring_allreduce_s(double bytes, std::int64_t n, const LinkCost& l) {
  return 2 * ring_allgather_s(bytes, n, l);
}

double ring_allgather_s(double bytes, std::int64_t n, const LinkCost& l) {
  if (n <= 1 || bytes <= 0) return 0;
  const double nd = static_cast<double>(n);
  return (nd - 1) * l.alpha_s + (nd - 1) / nd * bytes / l.beta_bps;
}

double ring_reduce_scatter_s(double bytes, std::int64_t n, const LinkCost& l) {
  return ring_allgather_s(bytes, n, l);
}

double p2p_s(double bytes, const LinkCost& l) {
  if (bytes <= 0) return 0;
  return l.alpha_s + bytes / l.beta_bps;
}

std::string_view allreduce_algo_name(AllreduceAlgo a) {
  switch (a) {
    case AllreduceAlgo::kAuto: return "auto";
    case AllreduceAlgo::kRing: return "ring";
    case AllreduceAlgo::kRecursiveDoubling: return "recursive_doubling";
    case AllreduceAlgo::kHalvingDoubling: return "halving_doubling";
    case AllreduceAlgo::kHierarchical: return "hierarchical";
  }
  return "?";
}

Result<AllreduceAlgo> parse_allreduce_algo(std::string_view n) {
  if (n.empty() || n == "auto") return AllreduceAlgo::kAuto;
  if (n == "ring") return AllreduceAlgo::kRing;
  if (n == "recursive_doubling" || n == "rd") return AllreduceAlgo::kRecursiveDoubling;
  if (n == "halving_doubling" || n == "rabenseifner" || n == "hd") return AllreduceAlgo::kHalvingDoubling;
  if (n == "hierarchical" || n == "hier") return AllreduceAlgo::kHierarchical;
  return invalid_argument(fmt::format(
      "KILN_ALGO={:?}: expected auto, ring, recursive_doubling, halving_doubling or hierarchical", n));
}

CostModel CostModel::from_env() {
  CostModel m;
  m.shm = {kShmAlpha.get() * 1e-6, kShmGbps.get() * 1e9};
  m.tcp = {kTcpAlpha.get() * 1e-6, kTcpGbps.get() * 1e9};
  return m;
}

double CostModel::ring(std::size_t bytes, int n, const LinkCost& l) const {
  if (n <= 1) return 0;
  // A zero-byte all-reduce still pays its latency steps.
  if (bytes == 0) return 2.0 * (n - 1) * l.alpha_s;
  return ring_allreduce_s(static_cast<double>(bytes), n, l);
}

double CostModel::recursive_doubling(std::size_t bytes, int n, const LinkCost& l) const {
  if (n <= 1) return 0;
  int p = floor_pow2(n);
  double fold = p == n ? 0 : 2 * (l.alpha_s + bytes / l.beta_bps);
  return fold + log2_ceil(p) * (l.alpha_s + bytes / l.beta_bps + bytes * gamma_s_per_byte);
}

double CostModel::halving_doubling(std::size_t bytes, int n, const LinkCost& l) const {
  if (n <= 1) return 0;
  int p = floor_pow2(n);
  double fold = p == n ? 0 : 2 * (l.alpha_s + bytes / l.beta_bps);
  return fold + 2.0 * log2_ceil(p) * l.alpha_s + 2.0 * (p - 1) / p * bytes / l.beta_bps;
}

double CostModel::hierarchical(std::size_t bytes, const Topology& t) const {
  int local = t.max_ranks_per_host;
  // Binomial reduce and broadcast inside the host each move the whole buffer
  // log2(local) times; the leaders run the better flat algorithm.
  double intra = 2.0 * log2_ceil(local) * (shm.alpha_s + bytes / shm.beta_bps);
  double inter = std::min(ring(bytes, t.hosts, tcp), halving_doubling(bytes, t.hosts, tcp));
  inter = std::min(inter, recursive_doubling(bytes, t.hosts, tcp));
  return intra + inter;
}

AllreduceAlgo CostModel::pick_allreduce(std::size_t bytes, const Topology& t) const {
  const LinkCost& flat = t.any_remote ? tcp : shm;
  AllreduceAlgo best = AllreduceAlgo::kRing;
  double best_t = ring(bytes, t.world, flat);
  auto consider = [&](AllreduceAlgo a, double cost) {
    if (cost < best_t) {
      best = a;
      best_t = cost;
    }
  };
  consider(AllreduceAlgo::kRecursiveDoubling, recursive_doubling(bytes, t.world, flat));
  consider(AllreduceAlgo::kHalvingDoubling, halving_doubling(bytes, t.world, flat));
  if (t.hosts > 1 && t.max_ranks_per_host > 1) {
    consider(AllreduceAlgo::kHierarchical, hierarchical(bytes, t));
  }
  return best;
}

}  // namespace kiln::comm
