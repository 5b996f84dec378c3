#include "kiln/diag/aggregate.h"

#include <gtest/gtest.h>

#include "kiln/comm/testing/multiprocess.h"
#include "kiln/diag/verdict.h"

namespace kiln::diag {
namespace {

using comm::testing::run_ranks;

TEST(GatherSummaries, EveryRankSeesEverySummaryInRankOrder) {
  for (int world : {1, 2, 3}) {
    auto result = run_ranks(world, [world](comm::Communicator& c) -> Status {
      RankSummary mine;
      mine.rank = 99;  // overwritten with the communicator's rank
      mine.steps = 10 + c.rank();
      mine.step_s_mean = 0.1 * (c.rank() + 1);
      KILN_ASSIGN_OR_RETURN(auto all, gather_summaries(c, mine, std::chrono::seconds(30)));
      if (static_cast<int>(all.size()) != world) return internal_error("wrong count");
      for (int r = 0; r < world; ++r) {
        if (all[r].rank != r || all[r].steps != 10 + r || all[r].step_s_mean != 0.1 * (r + 1)) {
          return internal_error("rank " + std::to_string(r) + "'s summary garbled");
        }
      }
      return Status::ok();
    });
    EXPECT_TRUE(result.ok()) << "world " << world << ": " << result.report;
  }
}

TEST(GatherSummaries, RankZeroNamesTheStraggler) {
  auto result = run_ranks(3, [](comm::Communicator& c) -> Status {
    RankSummary mine;
    mine.steps = 20;
    const bool slow = c.rank() == 2;
    mine.phase_s_mean[static_cast<int>(Phase::kForward)] = slow ? 0.06 : 0.02;
    mine.phase_s_mean[static_cast<int>(Phase::kBackward)] = slow ? 0.12 : 0.04;
    mine.phase_s_mean[static_cast<int>(Phase::kExposedComm)] = slow ? 0.0 : 0.12;
    mine.step_s_mean = 0.18;
    KILN_ASSIGN_OR_RETURN(auto all, gather_summaries(c, mine, std::chrono::seconds(30)));
    Verdict v = decide(all);
    if (v.verdict != "straggler" || v.rank != 2) {
      return internal_error("rank " + std::to_string(c.rank()) + " decided " + v.verdict +
                            " rank " + std::to_string(v.rank));
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

}  // namespace
}  // namespace kiln::diag
