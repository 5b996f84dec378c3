#include "kiln/diag/inject.h"

#include <gtest/gtest.h>

namespace kiln::diag {
namespace {

TEST(Inject, ParsesEachKindWithAndWithoutRank) {
  auto d = parse_injection("data-delay=20");
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->kind, InjectKind::kDataDelay);
  EXPECT_EQ(d->ms, 20);
  EXPECT_EQ(d->rank, -1);

  auto s = parse_injection("compute-spin=7.5@1");
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  EXPECT_EQ(s->kind, InjectKind::kComputeSpin);
  EXPECT_EQ(s->ms, 7.5);
  EXPECT_EQ(s->rank, 1);

  auto c = parse_injection("ckpt-sync@0");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->kind, InjectKind::kCheckpointSync);
  EXPECT_EQ(c->rank, 0);
  EXPECT_EQ(injection_to_string(*c), "ckpt-sync@0");
  EXPECT_EQ(injection_to_string(*s), "compute-spin=7.5@1");
  EXPECT_EQ(injection_to_string(*parse_injection("comm-delay=3")), "comm-delay=3");
  auto e = parse_injection("eval-delay=2500");
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_EQ(e->kind, InjectKind::kEvalDelay);
  EXPECT_EQ(injections_for_rank({*e}, 3).eval_delay_ms, 2500);
}

TEST(Inject, RejectsMalformedSpecsNamingThem) {
  for (const char* bad :
       {"disk-delay=5", "data-delay", "data-delay=", "data-delay=x", "data-delay=-1",
        "data-delay=5@", "data-delay=5@-2", "ckpt-sync=3", "comm-delay=5@one"}) {
    auto r = parse_injection(bad);
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status().to_string();
  }
}

TEST(Inject, FoldsPerRank) {
  std::vector<Injection> all = {
      *parse_injection("data-delay=5"), *parse_injection("data-delay=3@1"),
      *parse_injection("compute-spin=10@1"), *parse_injection("ckpt-sync@0")};
  RankInjections r0 = injections_for_rank(all, 0), r1 = injections_for_rank(all, 1);
  EXPECT_EQ(r0.data_delay_ms, 5);
  EXPECT_EQ(r0.compute_spin_ms, 0);
  EXPECT_TRUE(r0.ckpt_sync);
  EXPECT_EQ(r1.data_delay_ms, 8);
  EXPECT_EQ(r1.compute_spin_ms, 10);
  EXPECT_FALSE(r1.ckpt_sync);
  EXPECT_FALSE(injections_for_rank({}, 0).any());
}

TEST(Inject, SpinTakesAtLeastItsTime) {
  auto t0 = std::chrono::steady_clock::now();
  inject_spin(5);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(5));
}

}  // namespace
}  // namespace kiln::diag
