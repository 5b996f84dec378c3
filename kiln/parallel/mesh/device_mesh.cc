#include "kiln/parallel/mesh/device_mesh.h"

#include <fmt/format.h>

namespace kiln::parallel {

using pipeline::ChannelKey;
using pipeline::Direction;

comm::WorkPtr PipelineChannel::send(const void* buf, std::size_t count, comm::DataType dtype) {
  return comm_->send(buf, count, dtype, 1 - comm_->rank());
}

Status PipelineChannel::recv(void* buf, std::size_t count, comm::DataType dtype,
                             std::chrono::milliseconds timeout) {
  return comm_->recv(buf, count, dtype, 1 - comm_->rank())
      ->wait(timeout)
      .with_context(fmt::format("pipeline: receiving {} (rank {})", name_, peer_world_rank_));
}

Result<std::unique_ptr<DeviceMesh>> DeviceMesh::create(comm::Communicator& world,
                                                       DeviceMeshOptions options) {
  KILN_ASSIGN_OR_RETURN(MeshLayout layout, MeshLayout::create(world.size(), options.tp, options.pp));
  std::unique_ptr<DeviceMesh> mesh(new DeviceMesh(world, layout));
  KILN_RETURN_IF_ERROR(mesh->form_groups());
  KILN_RETURN_IF_ERROR(mesh->form_channels(options.wrap_channels && options.pp > 1));
  return mesh;
}

Status DeviceMesh::form_groups() {
  const int rank = world_.rank();
  KILN_ASSIGN_OR_RETURN(tensor_, world_.split(layout_.tensor_group_id(rank), rank));
  KILN_ASSIGN_OR_RETURN(data_, world_.split(layout_.data_group_id(rank), rank));
  KILN_ASSIGN_OR_RETURN(pipeline_, world_.split(layout_.pipeline_group_id(rank), rank));
  return Status::ok();
}

// Each split pass pairs every rank with at most one neighbour: edges between
// stages s and s + 1 with s even, then with s odd, then the wrap-around edge
// (last stage, first stage); once per direction.
Status DeviceMesh::form_channels(bool wrap) {
  const int p = layout_.shape().pp;
  if (p == 1) return Status::ok();
  const int rank = world_.rank();
  const int stage = layout_.coord(rank).pp;
  const int group = layout_.pipeline_group_id(rank);
  const std::vector<int> stages = layout_.pipeline_group(rank);
  for (Direction dir : {Direction::kForward, Direction::kBackward}) {
    for (int pass = 0; pass < (wrap ? 3 : 2); ++pass) {
      // The edge (lo, hi) this rank joins in this pass, if any.
      int lo = -1, hi = -1;
      if (pass < 2) {
        if (stage % 2 == pass && stage + 1 < p) lo = stage, hi = stage + 1;
        if (stage % 2 != pass && stage >= 1) lo = stage - 1, hi = stage;
      } else if (stage == p - 1 || stage == 0) {
        lo = p - 1, hi = 0;
      }
      const int color = lo < 0 ? -1 : group * (p + 1) + (pass < 2 ? lo : p);
      // Key: the sender first, so the pair's rank 0 is the sender.
      const int sender = dir == Direction::kForward ? lo : hi;
      KILN_ASSIGN_OR_RETURN(auto pair, world_.split(color, stage == sender ? 0 : 1));
      if (!pair) continue;
      const bool outgoing = stage == sender;
      const int peer_stage = stage == lo ? hi : lo;
      const int peer = stages[static_cast<std::size_t>(peer_stage)];
      std::string name = fmt::format("{} {} stage {}", dir == Direction::kForward ? "activations" : "gradients",
                                     outgoing ? "to" : "from", peer_stage);
      channels_[{static_cast<int>(dir), pass == 2, outgoing}] =
          std::make_unique<PipelineChannel>(std::move(pair), peer, std::move(name));
    }
  }
  return Status::ok();
}

PipelineChannel* DeviceMesh::incoming(ChannelKey key) {
  auto it = channels_.find({static_cast<int>(key.direction), key.wrap, false});
  return it == channels_.end() ? nullptr : it->second.get();
}

PipelineChannel* DeviceMesh::outgoing(ChannelKey key) {
  auto it = channels_.find({static_cast<int>(key.direction), key.wrap, true});
  return it == channels_.end() ? nullptr : it->second.get();
}

void DeviceMesh::abort(const Status& why) {
  for (auto& [key, channel] : channels_) channel->comm().abort(why);
  for (auto* c : {tensor_.get(), data_.get(), pipeline_.get()}) {
    if (c != nullptr) c->abort(why);
  }
}

}  // namespace kiln::parallel
