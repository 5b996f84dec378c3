// DeviceMesh: the communicators of a 3D-parallel job, formed from the world
// communicator by MeshLayout's rank order: this rank's tensor, data and
// pipeline groups, and the point-to-point channels its pipeline stage uses.
//
// Note [One communicator per pipeline channel]: a communicator runs its
// operations in issue order on one engine, so a send of activations to the
// next stage queued behind a receive of gradients from it would wait for that
// receive. Each direction between neighbour stages (and, for the interleaved
// schedule, the wrap-around from the last stage to the first) therefore gets
// a two-rank communicator of its own; each is a FIFO whose messages both
// sides issue in the same order (pipeline/schedule.h), so no message waits on
// another channel and the schedule cannot deadlock on the links.
//
// create() is collective over `world`; the mesh must not outlive it.
// Thread safety: as the communicators' (any thread may issue).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/mesh/mesh_layout.h"
#include "kiln/parallel/pipeline/schedule.h"

namespace kiln::parallel {

// One direction between two pipeline neighbours.
class PipelineChannel {
 public:
  PipelineChannel(std::unique_ptr<comm::Communicator> comm, int peer_world_rank, std::string name)
      : comm_(std::move(comm)), peer_world_rank_(peer_world_rank), name_(std::move(name)) {}

  // Async; the buffer must stay valid until the Work is done.
  comm::WorkPtr send(const void* buf, std::size_t count, comm::DataType dtype);
  // Blocks until the next message arrives (it must be `count` elements) or
  // `timeout` passes; the error names the channel and the peer.
  Status recv(void* buf, std::size_t count, comm::DataType dtype, std::chrono::milliseconds timeout);

  int peer_world_rank() const { return peer_world_rank_; }
  const std::string& name() const { return name_; }  // "forward from rank 2"
  comm::Communicator& comm() { return *comm_; }

 private:
  std::unique_ptr<comm::Communicator> comm_;
  int peer_world_rank_;
  std::string name_;
};

struct DeviceMeshOptions {
  int tp = 1;
  int pp = 1;
  // Form the wrap-around channels the interleaved schedule needs.
  bool wrap_channels = false;
};

class DeviceMesh {
 public:
  static Result<std::unique_ptr<DeviceMesh>> create(comm::Communicator& world, DeviceMeshOptions options);

  const MeshLayout& layout() const { return layout_; }
  MeshCoord coord() const { return layout_.coord(world_.rank()); }
  std::string describe() const { return layout_.describe(world_.rank()); }  // "dp 1 pp 0 tp 1"

  comm::Communicator& world() { return world_; }
  comm::Communicator& tensor() { return *tensor_; }
  comm::Communicator& data() { return *data_; }
  comm::Communicator& pipeline() { return *pipeline_; }

  // The channel this rank receives on (incoming) or sends on for `key`, as
  // pipeline/schedule.h names them; null where the stage has no such
  // neighbour (pp = 1, or a wrap channel without wrap_channels).
  PipelineChannel* incoming(pipeline::ChannelKey key);
  PipelineChannel* outgoing(pipeline::ChannelKey key);

  // Aborts every communicator of the mesh (a failed stage ends the others'
  // waits at once instead of at their timeouts).
  void abort(const Status& why);

 private:
  DeviceMesh(comm::Communicator& world, MeshLayout layout) : world_(world), layout_(layout) {}
  Status form_groups();
  Status form_channels(bool wrap);

  comm::Communicator& world_;
  MeshLayout layout_;
  std::unique_ptr<comm::Communicator> tensor_, data_, pipeline_;
  // (direction, wrap, outgoing) -> channel
  std::map<std::tuple<int, bool, bool>, std::unique_ptr<PipelineChannel>> channels_;
};

}  // namespace kiln::parallel
