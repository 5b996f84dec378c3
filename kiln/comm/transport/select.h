// Transport selection and connection setup: builds a rank's Context by
// meeting every other rank through the store.
//
// Peers on the same host (same host id: hostname, boot id and network
// namespace, or KILN_HOST_ID) get a shared-memory pair; the others a tcp pair.
// KILN_TRANSPORT=auto|shm|tcp overrides the choice.
#pragma once

#include <memory>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/comm/transport/context.h"
#include "kiln/store/store.h"

namespace kiln::comm::transport {

enum class TransportMode { kAuto, kShm, kTcp };
Result<TransportMode> parse_transport_mode(const std::string& text);

struct ConnectOptions {
  TransportMode mode = TransportMode::kAuto;
  // Address to listen on and advertise for tcp; empty = the address this host
  // uses to reach `route_hint` (the store's host), else the hostname's.
  std::string listen_address;
  std::string route_hint;
  // Unique per communicator instance; keeps connections of different groups
  // and restarts apart.
  std::string tag;
  // The job token every tcp connection proves before it carries data
  // (kiln/base/auth/handshake.h); empty: not authenticated. Shared-memory
  // pairs need none: the segments are only reachable on this host.
  std::string token;
  std::size_t shm_slot_bytes = 128 << 10;
  std::uint32_t shm_slots = 8;
};

// Host identity used to decide "same host".
std::string local_host_id();

// Connects to every peer. Blocks until all ranks have called it with the same
// tag, or the deadline. Errors name the rank that did not show up. The tcp
// listener binds the advertised address only (never 0.0.0.0) and is closed
// once every peer is connected; a connection that is not a peer of this
// group or fails authentication is refused, logged with its address, and
// the group still forms.
Result<std::unique_ptr<Context>> connect_all(store::Store& store, int rank, int size,
                                             const ConnectOptions& options, Deadline deadline);

// Which transport each peer got, e.g. "shm:3 tcp:4" (for logs and tests).
std::string describe_transports(Context& ctx);

}  // namespace kiln::comm::transport
