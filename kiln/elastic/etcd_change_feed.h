// The rendezvous' ChangeFeed on etcd: mark() reads the store's revision,
// wait() watches every key of the job (the store's prefix) from just after
// it. A waiting agent then costs etcd one watch, not a read every 20 ms.
#pragma once

#include <memory>

#include "kiln/elastic/rendezvous.h"
#include "kiln/store/etcd/etcd_store.h"

namespace kiln::elastic {

// One caller at a time (a Rendezvous' join).
std::shared_ptr<ChangeFeed> etcd_change_feed(std::shared_ptr<store::etcd::EtcdStore> store);

}  // namespace kiln::elastic
