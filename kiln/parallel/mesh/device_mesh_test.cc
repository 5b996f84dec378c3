// DeviceMesh on real processes: each group holds exactly the ranks
// MeshLayout names, each channel joins the right neighbours in the right
// direction, and a dead stage fails its neighbour's receive promptly.
#include "kiln/parallel/mesh/device_mesh.h"

#include <unistd.h>

#include <chrono>
#include <numeric>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"

namespace kiln::parallel {
namespace {

using comm::testing::run_ranks;
using pipeline::ChannelKey;
using pipeline::Direction;

constexpr std::chrono::seconds kWait{60};

Status expect(bool ok, const std::string& what) { return ok ? Status::ok() : internal_error(what); }

Status check_group_sum(comm::Communicator& group, const std::vector<int>& members, int rank,
                       const char* kind) {
  std::int64_t v = rank;
  KILN_RETURN_IF_ERROR(group.allreduce(&v, 1, comm::DataType::kInt64, comm::ReduceOp::kSum)->wait(kWait));
  const std::int64_t want = std::accumulate(members.begin(), members.end(), std::int64_t{0});
  return expect(v == want && group.size() == static_cast<int>(members.size()),
                fmt::format("{} group of rank {}: sum {} want {}", kind, rank, v, want));
}

TEST(DeviceMesh, GroupsAndChannelsJoinTheRanksTheLayoutNames) {
  auto run = run_ranks(8, [](comm::Communicator& world) -> Status {
    KILN_ASSIGN_OR_RETURN(auto mesh, DeviceMesh::create(world, {.tp = 2, .pp = 2, .wrap_channels = true}));
    const int r = world.rank();
    const MeshLayout& l = mesh->layout();
    KILN_RETURN_IF_ERROR(check_group_sum(mesh->tensor(), l.tensor_group(r), r, "tensor"));
    KILN_RETURN_IF_ERROR(check_group_sum(mesh->data(), l.data_group(r), r, "data"));
    KILN_RETURN_IF_ERROR(check_group_sum(mesh->pipeline(), l.pipeline_group(r), r, "pipeline"));
    // Every outgoing channel carries this rank's id to the peer it names.
    std::vector<comm::WorkPtr> sends;
    std::vector<std::int32_t> me(4, r);
    int k = 0;
    for (Direction d : {Direction::kForward, Direction::kBackward}) {
      for (bool wrap : {false, true}) {
        if (PipelineChannel* out = mesh->outgoing({d, wrap})) {
          sends.push_back(out->send(&me[static_cast<std::size_t>(k++)], 1, comm::DataType::kInt32));
        }
      }
    }
    const int stage = mesh->coord().pp;
    int received = 0;
    for (Direction d : {Direction::kForward, Direction::kBackward}) {
      for (bool wrap : {false, true}) {
        PipelineChannel* in = mesh->incoming({d, wrap});
        if (in == nullptr) continue;
        std::int32_t from = -1;
        KILN_RETURN_IF_ERROR(in->recv(&from, 1, comm::DataType::kInt32, kWait));
        KILN_RETURN_IF_ERROR(expect(from == in->peer_world_rank(), fmt::format("rank {} {}: got {}", r, in->name(), from)));
        // Forward channels come from the previous stage, gradients from the next.
        const int want_stage = d == Direction::kForward ? (stage + 1) % 2 : (stage + 1) % 2;
        KILN_RETURN_IF_ERROR(expect(l.coord(from).pp == want_stage && l.coord(from).tp == l.coord(r).tp &&
                                        l.coord(from).dp == l.coord(r).dp,
                                    fmt::format("rank {} {}: from rank {}", r, in->name(), from)));
        ++received;
      }
    }
    for (auto& s : sends) KILN_RETURN_IF_ERROR(s->wait(kWait));
    // With 2 stages and wrap channels, each stage has one channel of each kind.
    return expect(received == 2 && sends.size() == 2u, fmt::format("rank {}: {} in, {} out", r, received, sends.size()));
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

TEST(DeviceMesh, FourStagesWithoutWrapHaveChannelsOnlyBetweenNeighbours) {
  auto run = run_ranks(4, [](comm::Communicator& world) -> Status {
    KILN_ASSIGN_OR_RETURN(auto mesh, DeviceMesh::create(world, {.tp = 1, .pp = 4}));
    const int s = mesh->coord().pp;
    const bool first = s == 0, last = s == 3;
    KILN_RETURN_IF_ERROR(expect((mesh->incoming({Direction::kForward, false}) != nullptr) == !first, "fwd in"));
    KILN_RETURN_IF_ERROR(expect((mesh->outgoing({Direction::kForward, false}) != nullptr) == !last, "fwd out"));
    KILN_RETURN_IF_ERROR(expect((mesh->incoming({Direction::kBackward, false}) != nullptr) == !last, "bwd in"));
    KILN_RETURN_IF_ERROR(expect((mesh->outgoing({Direction::kBackward, false}) != nullptr) == !first, "bwd out"));
    KILN_RETURN_IF_ERROR(expect(mesh->incoming({Direction::kForward, true}) == nullptr, "no wrap"));
    // A token passes down the pipeline and back, one hop at a time.
    std::int32_t token = 0;
    if (!first) KILN_RETURN_IF_ERROR(mesh->incoming({Direction::kForward, false})->recv(&token, 1, comm::DataType::kInt32, kWait));
    token += 1;
    if (!last) KILN_RETURN_IF_ERROR(mesh->outgoing({Direction::kForward, false})->send(&token, 1, comm::DataType::kInt32)->wait(kWait));
    if (!last) KILN_RETURN_IF_ERROR(mesh->incoming({Direction::kBackward, false})->recv(&token, 1, comm::DataType::kInt32, kWait));
    token += 10;
    if (!first) KILN_RETURN_IF_ERROR(mesh->outgoing({Direction::kBackward, false})->send(&token, 1, comm::DataType::kInt32)->wait(kWait));
    return expect(token == 4 + 10 * (4 - s), fmt::format("stage {}: token {}", s, token));
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

TEST(DeviceMesh, ADeadStageFailsItsNeighboursReceiveNamingIt) {
  auto run = run_ranks(2, [](comm::Communicator& world) -> Status {
    KILN_ASSIGN_OR_RETURN(auto mesh, DeviceMesh::create(world, {.tp = 1, .pp = 2}));
    if (mesh->coord().pp == 1) ::_exit(0);  // dies without sending the gradients
    float g = 0;
    const auto t0 = std::chrono::steady_clock::now();
    Status s = mesh->incoming({Direction::kBackward, false})->recv(&g, 1, comm::DataType::kFloat32, kWait);
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    KILN_RETURN_IF_ERROR(expect(!s.is_ok(), "receive from a dead stage succeeded"));
    KILN_RETURN_IF_ERROR(expect(s.to_string().find("gradients from stage 1 (rank 1)") != std::string::npos,
                                "error does not name the stage: " + s.to_string()));
    return expect(waited < 30, fmt::format("took {:.1f} s to notice the dead stage", waited));
  });
  EXPECT_TRUE(run.ok()) << run.report;
}

}  // namespace
}  // namespace kiln::parallel
