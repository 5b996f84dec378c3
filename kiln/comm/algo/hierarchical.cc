// Two-level allreduce for fast links inside a host and slow links between:
// reduce to a leader per host over shared memory, allreduce among the
// leaders over the network, broadcast back inside each host. Only one rank
// per host touches the slow links, with the whole host's sum.
#include <cstring>
#include <map>

#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/collectives.h"

namespace kiln::comm::algo {

Status allreduce_hierarchical(const Env& env, const AllreduceArgs& a,
                              const std::vector<int>& host_of,
                              Status (*inter)(const Env&, const AllreduceArgs&)) {
  if (accumulates_in_float32(a.dtype, a.op)) {
    return allreduce_in_float32(env, a, [&](const Env& e, const AllreduceArgs& wide) {
      return allreduce_hierarchical(e, wide, host_of, inter);
    });
  }
  const int n = env.group.size();
  const int me = env.group.me;
  // Members of my host (group order), and the leader (first member) of every host.
  std::vector<int> local_members;
  std::map<int, int> leader_of_host;
  for (int i = 0; i < n; ++i) {
    if (host_of[i] == host_of[me]) local_members.push_back(i);
    leader_of_host.emplace(host_of[i], i);
  }
  // Global ranks of each subgroup; they outlive the Envs that point at them.
  std::vector<int> local_ranks, leader_ranks;
  auto subgroup = [&](const std::vector<int>& members, std::vector<int>& ranks) {
    Group g{env.group.ctx, {}, 0};
    for (int m : members) {
      if (m == me) g.me = static_cast<int>(ranks.size());
      ranks.push_back(env.group.ranks[m]);
    }
    g.ranks = ranks;
    return g;
  };
  Env local_env{subgroup(local_members, local_ranks), env.deadline, env.what, env.scratch};
  const bool leader = local_members.front() == me;
  // Sum (not average) inside the host; averaging happens once, at the end.
  ReduceOp inner = a.op == ReduceOp::kAvg ? ReduceOp::kSum : a.op;
  KILN_RETURN_IF_ERROR(reduce_tree(local_env, a.send, a.recv, a.count, a.dtype, inner, 0));
  if (leader && leader_of_host.size() > 1) {
    std::vector<int> leaders;
    for (auto& [host, member] : leader_of_host) leaders.push_back(member);
    Env leaders_env{subgroup(leaders, leader_ranks), env.deadline, env.what, env.scratch};
    KILN_RETURN_IF_ERROR(inter(leaders_env, {a.recv, a.recv, a.count, a.dtype, inner}));
  }
  if (leader && a.op == ReduceOp::kAvg) finish_avg(a.dtype, a.recv, a.count, n);
  return broadcast_tree(local_env, a.recv, a.count * dtype_size(a.dtype), 0);
}

}  // namespace kiln::comm::algo
