// The alpha-beta cost model that picks a collective algorithm (style
// principle 2; NCCL's tuning.cc). Each candidate's time is predicted as
// α·(latency-bound steps) + bytes/β per link class; the cheapest wins.
// KILN_ALGO overrides; the choice is logged at debug level.
//
// The planner (kiln/plan) prices a training step's collectives with the same
// functions, so this file is its own small library (kiln_comm_tuning) that
// needs only kiln_base: plan links it without the transports.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::comm {

enum class AllreduceAlgo { kAuto, kRing, kRecursiveDoubling, kHalvingDoubling, kHierarchical };

std::string_view allreduce_algo_name(AllreduceAlgo a);
Result<AllreduceAlgo> parse_allreduce_algo(std::string_view name);

struct LinkCost {
  double alpha_s;  // per message
  double beta_bps; // bytes per second
};

// Hockney alpha-beta cost of the ring forms (Thakur, Rabenseifner & Gropp
// 2005) over n ranks; `bytes` is the whole buffer (an all-reduce's input, an
// all-gather's output, a reduce-scatter's input). Zero when n <= 1 or there
// is nothing to move.
//   all-reduce:              2(n-1)·α + 2(n-1)/n · bytes/β
//   all-gather, reduce-scatter: (n-1)·α +  (n-1)/n · bytes/β
double ring_allreduce_s(double bytes, std::int64_t n, const LinkCost& l);
double ring_allgather_s(double bytes, std::int64_t n, const LinkCost& l);
double ring_reduce_scatter_s(double bytes, std::int64_t n, const LinkCost& l);
// One message of `bytes` to one peer: α + bytes/β.
double p2p_s(double bytes, const LinkCost& l);

struct Topology {
  int world = 1;
  int hosts = 1;
  int max_ranks_per_host = 1;
  bool any_remote = false;  // some pair crosses hosts
};

struct CostModel {
  LinkCost shm{1.5e-6, 6.0e9};
  LinkCost tcp{30e-6, 1.0e9};
  // Seconds per byte of one extra pass over memory: what recursive doubling
  // pays at every step to receive into scratch and fold it in afterwards
  // (the others fold incoming data in place as it arrives).
  double gamma_s_per_byte = 1.0 / 20e9;

  // Defaults, overridable by KILN_SHM_ALPHA_US / KILN_SHM_GBPS / KILN_TCP_ALPHA_US / KILN_TCP_GBPS.
  static CostModel from_env();

  double ring(std::size_t bytes, int n, const LinkCost& l) const;
  double recursive_doubling(std::size_t bytes, int n, const LinkCost& l) const;
  double halving_doubling(std::size_t bytes, int n, const LinkCost& l) const;
  double hierarchical(std::size_t bytes, const Topology& t) const;

  // The cheapest applicable algorithm for an allreduce of `bytes` per rank.
  AllreduceAlgo pick_allreduce(std::size_t bytes, const Topology& t) const;
};

}  // namespace kiln::comm
