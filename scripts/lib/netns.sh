# Shared by tests and benchmarks that need two "hosts": sourced, not run.
#
# join_namespaces NS_A NS_B VETH_A VETH_B ADDR_A ADDR_B
#   Creates NS_B (NS_A must exist already: callers create it first to detect
#   a machine where namespaces cannot be made), a veth pair between them with
#   ADDR_A/24 and ADDR_B/24, and brings every link up.
join_namespaces() {
  local ns_a=$1 ns_b=$2 veth_a=$3 veth_b=$4 addr_a=$5 addr_b=$6
  ip netns add "$ns_b"
  ip link add "$veth_a" netns "$ns_a" type veth peer name "$veth_b" netns "$ns_b"
  ip -n "$ns_a" addr add "$addr_a/24" dev "$veth_a"
  ip -n "$ns_b" addr add "$addr_b/24" dev "$veth_b"
  local ns
  for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_a" link set "$veth_a" up
  ip -n "$ns_b" link set "$veth_b" up
}
