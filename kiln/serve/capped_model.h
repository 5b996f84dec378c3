// A replica that serves at most a given number of requests per second, for
// a fleet measured on a host too small for its replicas' own capacity.
//
// Note [A replica's capacity, enforced]: on the 2-core VM one batched CNN
// replica serves 10-14 K req/s and takes both cores (with the router and the
// load generator), so a second replica adds nothing and no load there
// "needs two replicas" (docs/perf.md, issue 20, session 10). `kiln serve
// --capacity-rps R` gives every replica a capacity of its own: a batch of n
// requests takes at least n / R seconds, its forward pass included (the
// batch worker waits out the rest), as on a device whose time per request
// is 1/R. The queue, the batching, the router and the autoscaler see a
// replica that really cannot serve more; nothing else is emulated. With R
// well under what one core serves, N replicas stay off the CPU's limit.
#pragma once

#include <memory>

#include "kiln/serve/model.h"

namespace kiln::serve {

// `model`, each of whose batches takes at least size / capacity_rps seconds
// (capacity_rps > 0). The wait is on run()'s thread (the batch worker).
std::unique_ptr<Model> cap_capacity(std::unique_ptr<Model> model, double capacity_rps);

}  // namespace kiln::serve
