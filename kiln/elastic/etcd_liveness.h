// Node liveness on etcd leases: each agent holds a lease of the node TTL
// and puts "alive/NODE" with it; etcd deletes the key a TTL after the last
// keep-alive, so a dead agent's key vanishes without anyone's clock
// involved. An observer calls a node lost once its key is absent (after a
// first TTL of grace for a node that has not put it yet); the key being
// there proves the node alive only a TTL later.
#pragma once

#include <memory>

#include "kiln/elastic/liveness.h"
#include "kiln/store/etcd/etcd_store.h"

namespace kiln::elastic {

LivenessBackend lease_liveness(std::shared_ptr<store::etcd::EtcdStore> store, Clock::duration ttl);

}  // namespace kiln::elastic
