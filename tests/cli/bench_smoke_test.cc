// Every `kiln bench` subcommand, typed as a user types it (no launcher), at
// tiny sizes: it runs, prints every documented JSON key (docs/bench.md) as a
// number, and fails when its data is corrupted on purpose (the hidden
// --inject-corruption flag), so neither a key nor a check can vanish quietly.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

extern char** environ;

namespace {

using nlohmann::json;

struct KilnRun {
  int exit_code = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class BenchSmoke : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "kiln-bench-smoke-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // `kiln ARGS...` with no launcher variables in its environment, killed
  // after 150 s (timeout(1)) so a hang fails the test, not the suite.
  KilnRun kiln(const std::vector<std::string>& args) {
    std::vector<std::string> argv_s = {"timeout", "-s", "KILL", "150", KILN_BINARY};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string v = *e;
      bool launcher = false;
      for (const char* name :
           {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=", "MASTER_PORT="}) {
        launcher = launcher || v.rfind(name, 0) == 0;
      }
      if (!launcher) env_s.push_back(v);
    }
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    const std::string out = dir_ + "/stdout", err = dir_ + "/stderr";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    KilnRun r;
    int rc = ::posix_spawnp(&pid, "timeout", &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return r;
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  // The run's stdout as one JSON document (the benchmark's whole output).
  static json parse(const KilnRun& r) {
    json doc = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(doc.is_discarded()) << "stdout is not one JSON document:\n" << r.out << r.err;
    return doc;
  }

  std::string dir_;
};

// Every key in `keys` is present in `doc` and a number (not null, not a string).
void expect_numeric(const json& doc, const std::vector<std::string>& keys,
                    const std::string& where) {
  for (const auto& k : keys) {
    ASSERT_TRUE(doc.contains(k)) << where << ": key " << k << " missing in " << doc.dump();
    EXPECT_TRUE(doc[k].is_number()) << where << ": " << k << " is " << doc[k].dump();
  }
}

std::string context(const KilnRun& r) {
  return fmt::format("exit {}\nstdout:\n{}\nstderr:\n{}", r.exit_code, r.out, r.err);
}

// ---- comm -------------------------------------------------------------------

const std::vector<std::string> kCommResultKeys = {"bytes", "count", "time_us", "algbw_gbps",
                                                  "busbw_gbps"};

TEST_F(BenchSmoke, CommTypedAloneStartsTwoRanksAndReportsEveryKey) {
  KilnRun r = kiln({"bench", "comm", "-b", "1K", "-e", "4K", "-f", "4", "-n", "2", "-w", "1",
                    "--check", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc, {"world_size"}, "comm");
  EXPECT_EQ(doc["world_size"], 2) << "the default --ranks";
  for (const char* k : {"op", "dtype", "reduce_op", "algo"}) EXPECT_TRUE(doc[k].is_string()) << k;
  ASSERT_EQ(doc["results"].size(), 2u) << doc.dump();  // 1K and 4K
  for (const auto& row : doc["results"]) {
    expect_numeric(row, kCommResultKeys, "comm results");
    EXPECT_EQ(row["check"], "ok");
    EXPECT_GT(row["time_us"].get<double>(), 0);
  }
}

// Note [The memory limit, around each size]: a local allreduce of 16 MiB
// and more reports its own limit, measured around it, and the fraction of
// it, and of the best pass around it (never above the median's).
TEST_F(BenchSmoke, CommReportsTheMemoryLimitInterleavedWithEachLargeSizesIterations) {
  KilnRun r =
      kiln({"bench", "comm", "-b", "4M", "-e", "16M", "-f", "4", "-n", "3", "-w", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc, {"limit_busbw_gbps", "stream_add_gbps"}, "comm limit");
  ASSERT_EQ(doc["results"].size(), 2u) << doc.dump();
  EXPECT_FALSE(doc["results"][0].contains("iterations")) << "4M is below the limit's sizes";
  const json& big = doc["results"][1];
  expect_numeric(big, {"limit_fraction", "limit_busbw_gbps", "limit_fraction_best"}, "16M row");
  EXPECT_GT(big["limit_busbw_gbps"].get<double>(), 0);
  EXPECT_LE(big["limit_fraction_best"].get<double>(), big["limit_fraction"].get<double>());
  // Note [The memory limit, interleaved]: each iteration against the passes
  // on either side of it; limit_fraction is the median of those fractions.
  ASSERT_EQ(big["iterations"].size(), 3u) << big.dump();
  std::vector<double> fractions, times;
  const double bytes = big["bytes"].get<double>();
  for (const json& it : big["iterations"]) {
    expect_numeric(it, {"time_us", "limit_busbw_gbps"}, "iteration");
    times.push_back(it["time_us"].get<double>());
    fractions.push_back(bytes / (times.back() * 1e-6) / 1e9 / it["limit_busbw_gbps"].get<double>());
  }
  std::sort(fractions.begin(), fractions.end());
  std::sort(times.begin(), times.end());
  EXPECT_NEAR(big["limit_fraction"].get<double>(), fractions[1], 1e-9 * fractions[1]);
  EXPECT_NEAR(big["time_us"].get<double>(), times[1], 1e-9 * times[1]);
}

// Note [Sharing user memory in place]: by default (Kiln's madvise is the
// process's), the benchmark's plain buffers run directly, say so, and check;
// the first allreduce's time and what sharing the buffers cost are reported.
TEST_F(BenchSmoke, CommOnPlainMemorySharedInPlaceRunsDirectly) {
  KilnRun r =
      kiln({"bench", "comm", "-b", "4M", "-e", "4M", "-n", "2", "-w", "1", "--check", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc, {"first_warmup_us", "in_place_share_us", "in_place_shared_bytes"}, "comm");
  EXPECT_GT(doc["first_warmup_us"].get<double>(), 0);
  EXPECT_GT(doc["in_place_share_us"].get<double>(), 0);
  // Each rank's two 4 MiB buffers but for their edge pages.
  EXPECT_GE(doc["in_place_shared_bytes"].get<double>(), 2 * (4 << 20) - 4 * 4096);
  ASSERT_EQ(doc["results"].size(), 1u) << doc.dump();
  EXPECT_EQ(doc["results"][0]["path"], "direct_in_place") << doc.dump();
  EXPECT_EQ(doc["results"][0]["check"], "ok") << doc.dump();
}

TEST_F(BenchSmoke, CommCheckPassesForReduceOpsAndOpsThatUsedToFailIt) {
  // prod failed --check on >= 2 ranks, an integer avg too (it truncates);
  // the other ops' expected values are computed from the same inputs. Each
  // case starts its own ranks (about a second of process start-up each).
  const std::vector<std::vector<std::string>> cases = {
      {"--ranks", "3", "-r", "prod"},      {"-r", "avg", "-d", "int32"},
      {"-r", "prod", "-d", "bfloat16"},    {"-o", "reduce_scatter", "-r", "prod", "-d", "uint8"},
      {"-o", "alltoall", "-d", "float16"}, {"-o", "sendrecv"}};
  for (const auto& c : cases) {
    std::vector<std::string> args = {"bench", "comm", "-b", "64", "-e",      "64",
                                     "-n",    "1",    "-w", "0",  "--check", "--json"};
    args.insert(args.end(), c.begin(), c.end());
    KilnRun r = kiln(args);
    std::string what = fmt::format("{}", fmt::join(c, " "));
    ASSERT_EQ(r.exit_code, 0) << what << "\n" << context(r);
    json doc = parse(r);
    EXPECT_EQ(doc["world_size"], c[0] == "--ranks" ? 3 : 2) << what;
    ASSERT_EQ(doc["results"].size(), 1u) << what;
    EXPECT_EQ(doc["results"][0]["check"], "ok") << what;
  }
}

TEST_F(BenchSmoke, CommCheckFailsOnCorruptedData) {
  KilnRun r = kiln({"bench", "comm", "-b", "1K", "-e", "1K", "-n", "1", "-w", "0", "--check",
                    "--json", "--inject-corruption"});
  EXPECT_NE(r.exit_code, 0) << context(r);
  EXPECT_NE(r.err.find("allreduce check failed on rank 1"), std::string::npos) << context(r);
}

TEST_F(BenchSmoke, CommRejectsZeroIterations) {
  KilnRun r = kiln({"bench", "comm", "-n", "0"});
  EXPECT_EQ(r.exit_code, 2) << context(r);
  EXPECT_NE(r.err.find("need -n >= 1"), std::string::npos) << context(r);
}

TEST_F(BenchSmoke, CommUnderKilnLaunchRunsAsOneRankOfTheLaunch) {
  KilnRun r = kiln({"launch", "-n", "2", "--", KILN_BINARY, "bench", "comm", "--ranks", "5", "-b",
                    "1K", "-e", "1K", "-n", "1", "-w", "0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  // kiln launch prefixes each rank's lines; rank 0 prints the document.
  const std::string prefix = "[rank 0] ";
  auto at = r.out.find(prefix + "{");
  ASSERT_NE(at, std::string::npos) << context(r);
  json doc =
      json::parse(r.out.substr(at + prefix.size(), r.out.find('\n', at) - at - prefix.size()));
  EXPECT_EQ(doc["world_size"], 2) << "the launcher's world, not --ranks";
}

// ---- ckpt -------------------------------------------------------------------

TEST_F(BenchSmoke, CkptTypedAloneStartsTwoRanksAndReportsEveryKey) {
  KilnRun r =
      kiln({"bench", "ckpt", "--bytes", "1M", "--saves", "2", "--root", dir_ + "/ckpt", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc,
                 {"world_size", "state_bytes", "bytes_per_rank", "timed_saves", "memcpy_s",
                  "stall_s", "stall_vs_memcpy", "raw_write_s", "write_s", "write_vs_raw",
                  "commit_s", "load_mb_s", "disk_recovery_s", "inmem_store_s", "inmem_recovery_s",
                  "inmem_buddy_recovery_s", "inmem_vs_disk_recovery", "inmem_restart_recovery_s",
                  "inmem_store_vs_memcpy", "inmem_recovery_vs_memcpy", "inmem_buddy_vs_memcpy",
                  "inmem_stage_s", "inmem_stage_vs_memcpy"},
                 "ckpt");
  EXPECT_EQ(doc["world_size"], 2);
  // Staged in the snapshot file, and both local ranks copy replicas on the host.
  EXPECT_EQ(doc["inmem_store_staged"], true);
  EXPECT_EQ(doc["inmem_replica_on_host"], true);
  for (const char* phase : {"start", "join", "alloc", "recover"}) {
    EXPECT_GT(doc["inmem_restart_phases_s"][phase].get<double>(), 0.0) << phase;
  }
  // Both recovery keys are medians of three recoveries, each with every
  // rank's phases; in the buddy's, rank 1 received its bytes in the stream.
  for (const char* kind : {"inmem_recovery_rounds", "inmem_buddy_recovery_rounds"}) {
    ASSERT_EQ(doc[kind]["s"].size(), 3u) << kind;
    std::vector<double> each = doc[kind]["s"].get<std::vector<double>>();
    std::sort(each.begin(), each.end());
    const char* key = std::string(kind) == "inmem_recovery_rounds" ? "inmem_recovery_s"
                                                                   : "inmem_buddy_recovery_s";
    EXPECT_EQ(doc[key].get<double>(), each[1]) << key << " is the median";
    ASSERT_EQ(doc[kind]["phases_s"].size(), 3u) << kind;
    for (const auto& round : doc[kind]["phases_s"]) {
      ASSERT_EQ(round.size(), 2u) << "one entry per rank";
      for (const auto& rank : round) EXPECT_GE(rank["list"].get<double>(), 0.0);
    }
  }
  EXPECT_GT(doc["inmem_buddy_recovery_rounds"]["phases_s"][0][1]["stream"].get<double>(), 0.0);
  // The restarted process got its bytes back from its buddy (else exit 3).
  EXPECT_GT(doc["inmem_restart_recovery_s"].get<double>(), 0.0);
  EXPECT_TRUE(doc["compression"].is_string());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ckpt")) << "removed without --keep";
}

TEST_F(BenchSmoke, CkptFailsOnACorruptCheckpoint) {
  KilnRun r = kiln({"bench", "ckpt", "--bytes", "1M", "--saves", "2", "--root", dir_ + "/ckpt",
                    "--json", "--inject-corruption"});
  EXPECT_EQ(r.exit_code, 3) << "DataLoss: " << context(r);
  EXPECT_NE(r.err.find("shard-0000"), std::string::npos) << "names the shard: " << context(r);
}

// ---- ddp --------------------------------------------------------------------

#ifdef KILN_HAS_TORCH
const std::vector<std::string> kDdpArgs = {"bench",    "ddp",     "--width", "64",      "--layers",
                                           "1",        "--batch", "8",       "--steps", "2",
                                           "--warmup", "1",       "--check", "--json"};

TEST_F(BenchSmoke, DdpTypedAloneStartsTwoRanksAndReportsEveryKey) {
  KilnRun r = kiln(kDdpArgs);
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc,
                 {"world_size", "parameters", "batch_per_rank", "buckets", "bucket_cap_mib",
                  "backward_s", "comm_s", "ddp_backward_s", "exposed_comm_s", "overlap", "step_a_s",
                  "step_b_s", "step_ratio"},
                 "ddp");
  EXPECT_EQ(doc["world_size"], 2);
  EXPECT_EQ(doc["check"], "ok");
}

TEST_F(BenchSmoke, DdpCheckFailsOnCorruptedGradients) {
  std::vector<std::string> args = kDdpArgs;
  args.push_back("--inject-corruption");
  KilnRun r = kiln(args);
  EXPECT_NE(r.exit_code, 0) << context(r);
  EXPECT_NE(r.err.find("rank 1: DDP's gradients differ"), std::string::npos) << context(r);
}

// ---- fsdp -------------------------------------------------------------------

const std::vector<std::string> kFsdpArgs = {"bench",   "fsdp",    "--width",  "64", "--layers",
                                            "2",       "--batch", "8",        "--steps", "2",
                                            "--warmup", "1",      "--check",  "--json"};

TEST_F(BenchSmoke, FsdpTypedAloneStartsTwoRanksAndReportsEveryKey) {
  for (const char* stage : {"1", "2", "3"}) {
    std::vector<std::string> args = kFsdpArgs;
    args.insert(args.end(), {"--stage", stage});
    if (std::string(stage) == "3") args.push_back("--bf16");
    KilnRun r = kiln(args);
    ASSERT_EQ(r.exit_code, 0) << context(r);
    json doc = parse(r);
    expect_numeric(doc,
                   {"world_size", "stage", "parameters", "units", "batch_per_rank", "prefetch",
                    "min_unit_params", "comm_s", "exposed_comm_s", "backward_s",
                    "exposed_forward_gather_s", "exposed_backward_gather_s",
                    "exposed_backward_reduce_s", "exposed_after_backward_s", "overlap",
                    "step_baseline_s", "step_s", "step_ratio", "comm_bytes_per_step",
                    "comm_bytes_ratio_vs_ddp", "peak_state_bytes_per_rank",
                    "persistent_state_bytes_per_rank", "formula_state_bytes_per_rank",
                    "in_flight_bound_bytes", "allocator_peak_bytes_per_rank",
                    "replicated_state_bytes_per_rank"},
                   fmt::format("fsdp stage {}", stage));
    EXPECT_EQ(doc["world_size"], 2);
    EXPECT_EQ(doc["check"], "ok");
    // Stages 1 and 2 send DDP's bytes; stage 3 more (kiln/parallel/zero's
    // ShardedDataParallel.EachStepSendsTheSchedulesBytes counts them).
    if (std::string(stage) == "3") {
      EXPECT_GT(doc["comm_bytes_ratio_vs_ddp"].get<double>(), 1.0);
    } else {
      EXPECT_EQ(doc["comm_bytes_ratio_vs_ddp"].get<double>(), 1.0);
    }
  }
}

TEST_F(BenchSmoke, FsdpCheckFailsWhenTheSchedulesDisagree) {
  std::vector<std::string> args = kFsdpArgs;
  args.push_back("--inject-corruption");
  KilnRun r = kiln(args);
  EXPECT_NE(r.exit_code, 0) << context(r);
  EXPECT_NE(r.err.find("rank 1: the overlapped wrapper's parameters differ"), std::string::npos) << context(r);
}

// ---- handoff ----------------------------------------------------------------

TEST_F(BenchSmoke, HandoffTypedAloneStartsItsRanksAndReportsEveryKey) {
  KilnRun r = kiln({"bench", "handoff", "--ranks", "4", "--group", "2", "--units", "1",
                    "--rounds", "3", "--repeats", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc,
                 {"ranks", "cores", "threads_per_rank", "group", "units", "bytes", "rounds",
                  "round_s"},
                 "handoff");
  EXPECT_EQ(doc["ranks"], 4);
  EXPECT_EQ(doc["group"], 2);
  EXPECT_GT(doc["round_s"].get<double>(), 0);
  // Note [The group wait, measured]: 4 ranks x 3 timed rounds x 1 repeat.
  expect_numeric(doc, {"group_waits", "group_wait_mean_s", "group_wait_median_s"}, "handoff");
  EXPECT_EQ(doc["group_waits"], 4 * 3);
  EXPECT_LT(doc["group_wait_median_s"].get<double>(), 3 * doc["round_s"].get<double>());
}

// Note [Pipeline hand-off]: --pp runs kiln's 1F1B engine over stages of pairs.
TEST_F(BenchSmoke, HandoffPipelineRunsStagesOfPairsAndReportsItsStep) {
  KilnRun r = kiln({"bench", "handoff", "--ranks", "4", "--group", "2", "--pp", "2",
                    "--microbatches", "2", "--messages", "2", "--units", "1", "--repeats", "1",
                    "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc,
                 {"ranks", "group", "pp", "microbatches", "messages", "units", "step_s",
                  "group_waits", "group_wait_mean_s", "group_wait_median_s", "group_wait_p10_s",
                  "group_wait_p90_s"},
                 "handoff --pp");
  EXPECT_EQ(doc["pp"], 2);
  EXPECT_GT(doc["step_s"].get<double>(), 0);
  // Note [The group wait, measured]: every rank's every timed all-reduce
  // (4 ranks x 2 micro-batches x 2 messages, forward and backward, 1 step).
  EXPECT_EQ(doc["group_waits"], 4 * 2 * 2 * 2);
  EXPECT_GE(doc["group_wait_p10_s"].get<double>(), -2e-6);  // the stamp's rounding
  EXPECT_LE(doc["group_wait_p10_s"].get<double>(), doc["group_wait_median_s"].get<double>());
  EXPECT_LE(doc["group_wait_median_s"].get<double>(), doc["group_wait_p90_s"].get<double>());
  EXPECT_LT(doc["group_wait_p90_s"].get<double>(), doc["step_s"].get<double>());
  r = kiln({"bench", "handoff", "--ranks", "4", "--group", "2", "--pp", "4"});
  EXPECT_EQ(r.exit_code, 2) << context(r);
  EXPECT_NE(r.err.find("--group x --pp (8) dividing --ranks 4"), std::string::npos) << context(r);
}

// ---- pipeline ---------------------------------------------------------------

// Every case of the sweep (p in {2, 4}, m in {1, 2, 4, 8}; the interleaved
// schedule at v = 2 where p divides m) with the keys docs/bench.md names; the
// formula exactly Narayanan et al.'s; the measured bubble a finite fraction
// (the busiest rank's step is never shorter than its own compute). Timings
// at 1-2 ms stages are not checked: that is the benchmark's --check.
TEST_F(BenchSmoke, PipelineReportsEveryCaseWithTheBubbleAndItsFormula) {
  KilnRun r = kiln({"bench", "pipeline", "--forward-ms", "1", "--backward-ms", "2",
                    "--activation-kib", "4", "--steps", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  ASSERT_TRUE(doc.contains("cases") && doc["cases"].is_array()) << doc.dump();
  std::vector<std::tuple<int, int, int>> seen;
  for (const json& c : doc["cases"]) {
    expect_numeric(c, {"p", "m", "v", "bubble_measured", "bubble_formula"}, "pipeline case");
    const int p = c["p"], m = c["m"], v = c["v"];
    seen.emplace_back(p, m, v);
    EXPECT_EQ(c["schedule"], v == 1 ? "1f1b" : "interleaved") << c.dump();
    EXPECT_DOUBLE_EQ(c["bubble_formula"].get<double>(), double(p - 1) / (v * m)) << c.dump();
    const double measured = c["bubble_measured"].get<double>();
    EXPECT_TRUE(std::isfinite(measured)) << c.dump();
    EXPECT_GE(measured, 0) << c.dump();
    EXPECT_LT(measured, 50) << c.dump();
  }
  std::vector<std::tuple<int, int, int>> expected;
  for (int p : {2, 4}) {
    for (int m : {1, 2, 4, 8}) {
      expected.emplace_back(p, m, 1);
      if (m % p == 0) expected.emplace_back(p, m, 2);
    }
  }
  EXPECT_EQ(seen, expected);
}

TEST_F(BenchSmoke, HandoffRefusesAGroupThatDoesNotDivideTheRanks) {
  KilnRun r = kiln({"bench", "handoff", "--ranks", "4", "--group", "3"});
  EXPECT_EQ(r.exit_code, 2) << context(r);
  EXPECT_NE(r.err.find("--group 3 must divide --ranks 4"), std::string::npos) << context(r);
}
#endif

// ---- data -------------------------------------------------------------------

const std::vector<std::string> kDataArgs = {
    "bench",         "data", "--total",       "256K",   "--sample-bytes",   "4K",
    "--small-total", "32K",  "--shard-mib",   "0.0625", "--batch-size",     "8",
    "--runs",        "1",    "--consumer-ms", "1",      "--warmup-batches", "1",
    "--json"};

TEST_F(BenchSmoke, DataReportsEveryKey) {
  std::vector<std::string> args = kDataArgs;
  args.insert(args.end(), {"--root", dir_ + "/data"});
  KilnRun r = kiln(args);
  ASSERT_EQ(r.exit_code, 0) << context(r);
  json doc = parse(r);
  expect_numeric(doc,
                 {"dataset_mb", "samples", "shards", "sample_bytes", "batch_size", "workers",
                  "runs", "shuffle_window", "warm_mb_s", "warm_samples_s", "raw_read_mb_s",
                  "warm_vs_raw", "consumer_ms", "consumer_wait_fraction", "consumer_wait_p50_ms",
                  "consumer_wait_p99_ms", "consumer_wait_max_ms", "warm_vs_raw_small",
                  "raw_read_cached_mb_s", "warm_vs_raw_cached", "warm_epochs", "raw_passes",
                  "warm_cpus_busy", "raw_cpus_busy", "warm_sleeps_per_batch",
                  "warm_preemptions_per_batch"},
                 "data");
  // Note [A stable raw baseline]: every raw pass's speed, as [min, max].
  for (const json* d : {&doc, doc.contains("small") ? &doc["small"] : &doc}) {
    ASSERT_TRUE((*d)["raw_pass_mb_s_range"].is_array()) << d->dump();
    ASSERT_EQ((*d)["raw_pass_mb_s_range"].size(), 2u);
    EXPECT_GT((*d)["raw_pass_mb_s_range"][0].get<double>(), 0);
    EXPECT_LE((*d)["raw_pass_mb_s_range"][0].get<double>(),
              (*d)["raw_pass_mb_s_range"][1].get<double>());
  }
  ASSERT_TRUE(doc.contains("small")) << doc.dump();
  expect_numeric(doc["small"],
                 {"dataset_mb", "samples", "sample_bytes", "shuffle_window", "warm_mb_s",
                  "warm_samples_s", "raw_read_mb_s", "raw_read_cached_mb_s", "warm_vs_raw_cached",
                  "warm_cpus_busy", "raw_cpus_busy", "warm_sleeps_per_batch",
                  "warm_preemptions_per_batch"},
                 "data small");
  for (const json* d : {&doc, &doc["small"]}) {
    for (const char* key : {"warm_cpus_busy", "raw_cpus_busy", "warm_sleeps_per_batch",
                            "warm_preemptions_per_batch"}) {
      EXPECT_GE((*d)[key].get<double>(), 0) << key << " " << d->dump();
    }
  }
  // The cold part needs a local S3 server; where there is none it says why.
  if (doc.contains("cold_skipped")) {
    EXPECT_TRUE(doc["cold_vs_raw_get"].is_null());
  } else {
    expect_numeric(doc, {"cold_mb_s", "raw_get_mb_s", "cold_vs_raw_get"}, "data cold");
  }
}

TEST_F(BenchSmoke, DataFailsOnACorruptShard) {
  std::vector<std::string> args = kDataArgs;
  args.insert(args.end(),
              {"--root", dir_ + "/data", "--small-sample-bytes", "0", "--inject-corruption"});
  KilnRun r = kiln(args);
  EXPECT_EQ(r.exit_code, 3) << "DataLoss: " << context(r);
}

}  // namespace
