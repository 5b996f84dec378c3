// `kiln bench comm`: collective bandwidth/latency sweep, nccl-tests style.
// Typed on its own it starts --ranks local ranks (default 2); under a
// launcher it is one rank, e.g. `kiln launch -n 4 -- kiln bench comm -b 4K -e 256M`.
//
// Per size: bytes (per-rank buffer for allreduce/broadcast/sendrecv, the
// total for allgather/reduce_scatter/alltoall, as nccl-tests), the median
// over iterations of each iteration's slowest rank, algbw = bytes/time and busbw =
// algbw × the op's bus factor (nccl-tests' PERFORMANCE.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "kiln/base/units.h"
#include "kiln/comm/element_io.h"
#include "kiln/comm/process_group.h"
#include "kiln/comm/shared_buffer.h"
#include "kiln/comm/shared_in_place.h"

namespace kiln::cli {
namespace {

using comm::Communicator;
using comm::DataType;

struct BenchArgs {
  std::string op = "allreduce";
  std::string min_bytes = "4K";
  std::string max_bytes = "64M";
  double factor = 2;
  std::string dtype = "float32";
  std::string reduce_op = "sum";
  std::string algo;  // empty: cost model
  int iters = 20;
  int warmup = 5;
  bool check = false;
  bool json = false;
  int ranks = 2;  // when not under a launcher
  // Buffers from comm::SharedBuffer, which local peers can reach directly
  // (as nccl-tests' -R: registered user buffers).
  bool registered = false;
  // Test-only (hidden): the last rank alters one output element before the
  // check compares, so a test can prove --check catches corrupted data.
  bool inject_corruption = false;
};

double bus_factor(const std::string& op, int n) {
  if (op == "allreduce") return 2.0 * (n - 1) / n;
  if (op == "allgather" || op == "reduce_scatter" || op == "alltoall") return static_cast<double>(n - 1) / n;
  return 1.0;
}

// a[i] = b[i] + d[i] with plain stores, as STREAM's add compiles. Written
// with the allreduce kernels' vector width (kiln/comm/reduce.cc) so the limit
// does not depend on the build: at -O1 (KILN_QUICK_BUILD) the plain loop is
// scalar, at -O2 SSE, while the kernels it is compared with are -O3 AVX-512.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void add_arrays_avx512(float* a, const float* b,
                                                          const float* d, std::size_t n) {
  // The bound computed once, not as i + 16 <= n: GCC -O2 cannot then rule out
  // i + 16 wrapping and warns of undefined behaviour in the tail loop.
  const std::size_t whole_vectors = n - n % 16;
  std::size_t i = 0;
  for (; i < whole_vectors; i += 16) {
    _mm512_storeu_ps(a + i, _mm512_add_ps(_mm512_loadu_ps(b + i), _mm512_loadu_ps(d + i)));
  }
  for (; i < n; ++i) a[i] = b[i] + d[i];
}
#endif
void add_arrays(float* __restrict a, const float* __restrict b, const float* __restrict d,
                std::size_t n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return add_arrays_avx512(a, b, d, n);
#endif
  for (std::size_t i = 0; i < n; ++i) a[i] = b[i] + d[i];
}

// The physical bound of an allreduce inside one host (Note [The memory
// limit of a local allreduce]): every rank runs a[i] = b[i] + c[i] on one
// thread at once over arrays far larger than the caches, as STREAM's add
// (3 arrays counted); returns each of `passes` passes' bandwidth, summed over
// ranks (GB/s).
class StreamAdd {
 public:
  StreamAdd() : a_(kFloats, 0.f), b_(kFloats, 1.f), d_(kFloats, 2.f) {}

  Result<std::vector<double>> passes(Communicator& c, int passes) {
    std::vector<double> gbps;
    for (int pass = 0; pass < passes; ++pass) {
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
      auto t0 = std::chrono::steady_clock::now();
      add_arrays(a_.data(), b_.data(), d_.data(), kFloats);
      double secs[2] = {
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
          static_cast<double>(a_[kFloats / 2])};  // keeps the loop alive
      KILN_RETURN_IF_ERROR(c.allreduce(secs, 1, DataType::kFloat64, comm::ReduceOp::kMax)->wait());
      gbps.push_back(3.0 * kFloats * sizeof(float) * c.size() / secs[0] / 1e9);
    }
    return gbps;
  }

 private:
  static constexpr std::size_t kFloats = std::size_t{64} << 20 >> 2;  // 64 MiB per array
  std::vector<float> a_, b_, d_;
};

// Note [The memory limit of a local allreduce]: on one host, an allreduce
// moves every message byte through main memory about four times over (read
// the input and the peer's data, write the result, and the reads for
// ownership and copies in between, which caches cannot hold at these sizes),
// so its bus bandwidth is bounded near a quarter of what the ranks together
// stream in an a = b + c loop. `kiln bench comm` reports busbw / that bound
// as limit_fraction.
constexpr double kLocalAllreduceTrafficPerByte = 4.0;

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

void fill(DataType t, void* buf, std::size_t count, double v) {
  for (std::size_t i = 0; i < count; ++i) comm::store_element(t, buf, i, v);
}

// One sweep point: the op on `count` elements per rank (block size for
// allgather/reduce_scatter/alltoall).
struct Runner {
  Communicator& c;
  const BenchArgs& a;
  DataType t;
  comm::ReduceOp rop;
  char* in;
  char* out;

  comm::WorkPtr issue(std::size_t count) {
    int n = c.size(), r = c.rank();
    if (a.op == "allreduce") return c.allreduce(in, out, count, t, rop);
    if (a.op == "allgather") return c.allgather(in, out, count, t);
    if (a.op == "reduce_scatter") return c.reduce_scatter(in, out, count, t, rop);
    if (a.op == "broadcast") return c.broadcast(out, count, t, 0);
    if (a.op == "alltoall") return c.alltoall(in, out, count, t);
    return c.sendrecv(in, count, (r + 1) % n, out, count, (r - 1 + n) % n, t);
  }

  // Rank r's input: r + 1, or for prod 1 + r % 2 (so the product, 2^(n/2),
  // stays exact in every dtype for any world size a benchmark runs).
  double input(int r) const { return rop == comm::ReduceOp::kProd ? 1 + r % 2 : r + 1; }

  // `v` as the dtype holds it (integers wrap, 16-bit floats round).
  double in_dtype(double v) const {
    alignas(8) char cell[8];
    comm::store_element(t, cell, 0, v);
    return comm::load_element(t, cell, 0);
  }

  // What a reduction of every rank's input() leaves, in the dtype.
  double reduced() const {
    const int n = c.size();
    double acc = input(0);
    for (int r = 1; r < n; ++r) {
      double v = input(r);
      switch (rop) {
        case comm::ReduceOp::kSum:
        case comm::ReduceOp::kAvg: acc = in_dtype(acc + v); break;
        case comm::ReduceOp::kProd: acc = in_dtype(acc * v); break;
        case comm::ReduceOp::kMin: acc = std::min(acc, v); break;
        case comm::ReduceOp::kMax: acc = std::max(acc, v); break;
      }
    }
    if (rop != comm::ReduceOp::kAvg) return acc;
    bool integer = t == DataType::kInt32 || t == DataType::kInt64 || t == DataType::kUInt8;
    return integer ? std::trunc(acc / n) : in_dtype(acc / n);
  }

  // Fills inputs with rank-dependent values, runs once, checks the output.
  Status check(std::size_t count) {
    int n = c.size(), r = c.rank();
    std::size_t in_count = (a.op == "reduce_scatter" || a.op == "alltoall") ? count * n : count;
    fill(t, in, in_count, input(r));
    if (a.op == "broadcast") fill(t, out, count, r == 0 ? 1 : 0);
    KILN_RETURN_IF_ERROR(issue(count)->wait());
    std::size_t out_count = (a.op == "allgather" || a.op == "alltoall") ? count * n : count;
    if (a.inject_corruption && r == n - 1) {
      comm::store_element(t, out, out_count / 2,
                          comm::load_element(t, out, out_count / 2) + 3);
    }
    const double reduction = reduced();
    for (std::size_t i = 0; i < out_count; ++i) {
      double want = 0;
      if (a.op == "allreduce" || a.op == "reduce_scatter") {
        want = reduction;
      } else if (a.op == "allgather" || a.op == "alltoall") {
        want = input(static_cast<int>(i / count));
      } else if (a.op == "broadcast") {
        want = 1;
      } else {
        want = input((r - 1 + n) % n);
      }
      double got = comm::load_element(t, out, i);
      if (std::abs(got - want) > 1e-2 * std::max(1.0, std::abs(want))) {
        return internal_error(fmt::format("{} check failed on rank {} at element {}: {} instead of {}",
                                          a.op, r, i, got, want));
      }
    }
    return Status::ok();
  }
};

Status bench_comm(const BenchArgs& a) {
  static const char* kOps[] = {"allreduce", "allgather", "reduce_scatter", "broadcast", "alltoall", "sendrecv"};
  if (std::find_if(std::begin(kOps), std::end(kOps), [&](const char* o) { return a.op == o; }) == std::end(kOps)) {
    return invalid_argument(fmt::format("-o {:?}: expected allreduce, allgather, reduce_scatter, broadcast, alltoall or sendrecv", a.op));
  }
  KILN_ASSIGN_OR_RETURN(DataType t, comm::parse_dtype(a.dtype));
  KILN_ASSIGN_OR_RETURN(comm::ReduceOp rop, comm::parse_reduce_op(a.reduce_op));
  KILN_ASSIGN_OR_RETURN(std::uint64_t min_b, parse_bytes(a.min_bytes));
  KILN_ASSIGN_OR_RETURN(std::uint64_t max_b, parse_bytes(a.max_bytes));
  if (a.factor <= 1 || min_b > max_b || min_b == 0) return invalid_argument("need 0 < -b <= -e and -f > 1");
  if (a.iters < 1 || a.warmup < 0) {
    return invalid_argument(fmt::format("bench comm: -n {} -w {}: need -n >= 1 timed iterations and -w >= 0",
                                        a.iters, a.warmup));
  }
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench comm")) return *spawned;
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  Communicator& c = pg->comm();
  if (!a.algo.empty()) {
    KILN_ASSIGN_OR_RETURN(auto algo, comm::parse_allreduce_algo(a.algo));
    c.set_allreduce_algo(algo);
  }
  const int n = c.size();
  const std::size_t es = comm::dtype_size(t);
  // Buffers sized once for the largest point and touched before timing:
  // first-touch page faults would otherwise be measured.
  std::size_t max_count = max_b / es;
  bool total_sized = a.op == "allgather" || a.op == "reduce_scatter" || a.op == "alltoall";
  std::size_t block_max = total_sized ? std::max<std::size_t>(1, max_count / n) : max_count;
  const std::size_t buffer_bytes = (total_sized ? block_max * n : block_max) * es;
  std::vector<char> in_bytes, out_bytes;
  comm::SharedBuffer in_shared, out_shared;
  char *in = nullptr, *out = nullptr;
  if (a.registered) {
    // Page aligned, populated.
    KILN_ASSIGN_OR_RETURN(in_shared, comm::SharedBuffer::allocate(buffer_bytes));
    KILN_ASSIGN_OR_RETURN(out_shared, comm::SharedBuffer::allocate(buffer_bytes));
    in = static_cast<char*>(in_shared.data());
    out = static_cast<char*>(out_shared.data());
    std::memset(in, 1, buffer_bytes);
    std::memset(out, 1, buffer_bytes);
  } else {
    in_bytes.assign(buffer_bytes + 64, 1);
    out_bytes.assign(buffer_bytes + 64, 1);
    // Cache-line aligned, as tensors from LibTorch's allocator are (a vector's
    // data is only 16-byte aligned).
    auto line_aligned = [](std::vector<char>& v) {
      return v.data() + (64 - reinterpret_cast<std::uintptr_t>(v.data()) % 64) % 64;
    };
    in = line_aligned(in_bytes);
    out = line_aligned(out_bytes);
  }
  Runner runner{c, a, t, rop, in, out};

  // As nccl-tests: warm up at the largest size first, so every buffer
  // (ours and the library's) is touched and settled before any timing.
  // The first one's time says what first use costs (Note [Sharing user
  // memory in place]: the copy into shared memory).
  double first_us = 0;
  {
    std::size_t largest = total_sized ? block_max : max_count;
    for (int i = 0; i < a.warmup; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      KILN_RETURN_IF_ERROR(runner.issue(largest)->wait());
      if (i == 0) {
        first_us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      }
    }
  }
  // Measured now, beside the sweep, so it reflects the machine as it is;
  // only for sweeps that reach sizes the caches cannot hold (below that the
  // memory bound does not apply, and small sweeps stay quick).
  double limit_busbw = 0;
  constexpr std::uint64_t kLimitFromBytes = 16u << 20;
  std::optional<StreamAdd> stream;
  if (a.op == "allreduce" && n > 1 && c.topology().hosts == 1 && max_b >= kLimitFromBytes) {
    stream.emplace();
    KILN_ASSIGN_OR_RETURN(auto passes, stream->passes(c, 5));
    limit_busbw = *std::max_element(passes.begin(), passes.end()) / kLocalAllreduceTrafficPerByte;
  }
  nlohmann::json results = nlohmann::json::array();
  if (c.rank() == 0 && !a.json) {
    std::printf("# kiln bench comm: %s %s, %d ranks (%s)%s\n", a.op.c_str(),
                comm::dtype_name(t).data(), n, c.describe().c_str(),
                a.registered ? ", registered buffers" : "");
    if (limit_busbw > 0) {
      std::printf("# memory limit: busbw %.2f GB/s (a = b + c on %d ranks: %.1f GB/s, / %.0f)\n",
                  limit_busbw, n, limit_busbw * kLocalAllreduceTrafficPerByte,
                  kLocalAllreduceTrafficPerByte);
    }
    std::printf("%12s %12s %10s %10s %10s %6s %6s\n", "bytes", "count", "time(us)", "algbw", "busbw",
                "limit", "check");
  }
  for (double bytes_d = static_cast<double>(min_b); bytes_d <= static_cast<double>(max_b) * 1.0001; bytes_d *= a.factor) {
    std::size_t bytes = static_cast<std::size_t>(bytes_d);
    std::size_t count = total_sized ? std::max<std::size_t>(1, bytes / es / n) : std::max<std::size_t>(1, bytes / es);
    std::size_t reported_bytes = total_sized ? count * n * es : count * es;
    for (int i = 0; i < a.warmup; ++i) KILN_RETURN_IF_ERROR(runner.issue(count)->wait());
    // Note [The memory limit, interleaved]: the limit moved from 6.8 to
    // 10.3 GB/s between runs of one hold on the shared VM, and by tens of
    // percent within seconds, so one measurement at the start made
    // limit_fraction follow the machine, not the allreduce. At sizes the caches
    // cannot hold, a limit pass runs before every timed iteration and one after
    // the last: iteration i is compared with the mean of the passes on either
    // side of it (the same seconds), and limit_fraction is the median of these
    // per-iteration fractions, as the size's time is the median of its
    // iterations. limit_busbw_gbps is the median pass; limit_fraction_best
    // compares the median time with the best pass.
    const bool limit_here = stream.has_value() && bytes >= kLimitFromBytes;
    std::vector<double> times, passes;
    // Path counters around the timed allreduces only: the limit passes'
    // own small allreduce must not count.
    std::uint64_t direct_timed = 0, cma_timed = 0, in_place_timed = 0;
    for (int i = 0; i < a.iters; ++i) {
      if (limit_here) {
        KILN_ASSIGN_OR_RETURN(auto p, stream->passes(c, 1));
        passes.push_back(p[0]);
      }
      const std::uint64_t direct_before = c.direct_allreduces(), cma_before = c.cma_allreduces(),
                          in_place_before = c.in_place_allreduces();
      auto t0 = std::chrono::steady_clock::now();
      KILN_RETURN_IF_ERROR(runner.issue(count)->wait());
      times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      direct_timed += c.direct_allreduces() - direct_before;
      cma_timed += c.cma_allreduces() - cma_before;
      in_place_timed += c.in_place_allreduces() - in_place_before;
    }
    if (limit_here) {
      KILN_ASSIGN_OR_RETURN(auto p, stream->passes(c, 1));
      passes.push_back(p[0]);
    }
    // How the timed allreduces ran (Notes [Direct allreduce on shared buffers],
    // [Single-copy allreduce through the kernel], [Sharing user memory in
    // place]); "usual": the algorithm.
    const char* path = in_place_timed != 0 ? "direct_in_place"
                       : direct_timed != 0 ? "direct"
                       : cma_timed != 0    ? "cma"
                                           : "usual";
    // Each iteration as long as its slowest rank took; the size's time is their median.
    std::vector<double> slowest_each = times;
    KILN_RETURN_IF_ERROR(c.allreduce(slowest_each.data(), slowest_each.size(), DataType::kFloat64,
                                     comm::ReduceOp::kMax)
                             ->wait());
    const double slowest = median_of(slowest_each);
    std::string check = "off";
    if (a.check) {
      Status s = runner.check(count);
      int bad = s.is_ok() ? 0 : 1;
      KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, DataType::kInt32, comm::ReduceOp::kMax)->wait());
      check = bad ? "fail" : "ok";
      if (!s.is_ok()) std::fprintf(stderr, "%s\n", s.to_string().c_str());
    }
    const double bus = bus_factor(a.op, n);
    double size_limit = limit_busbw, size_limit_best = limit_busbw;
    double fraction = 0;
    nlohmann::json iterations = nlohmann::json::array();
    if (limit_here) {
      std::vector<double> fractions;
      for (std::size_t i = 0; i < slowest_each.size(); ++i) {
        const double limit_i = (passes[i] + passes[i + 1]) / 2 / kLocalAllreduceTrafficPerByte;
        const double busbw_i = reported_bytes / (slowest_each[i] * 1e-6) / 1e9 * bus;
        fractions.push_back(busbw_i / limit_i);
        iterations.push_back({{"time_us", slowest_each[i]}, {"limit_busbw_gbps", limit_i}});
      }
      fraction = median_of(fractions);
      size_limit = median_of(passes) / kLocalAllreduceTrafficPerByte;
      size_limit_best =
          *std::max_element(passes.begin(), passes.end()) / kLocalAllreduceTrafficPerByte;
    }
    double algbw = reported_bytes / (slowest * 1e-6) / 1e9;
    double busbw = algbw * bus;
    if (limit_busbw > 0 && !limit_here) fraction = busbw / size_limit;
    if (c.rank() == 0) {
      results.push_back({{"bytes", reported_bytes}, {"count", count}, {"time_us", slowest},
                         {"algbw_gbps", algbw}, {"busbw_gbps", busbw}, {"check", check}});
      if (a.op == "allreduce") results.back()["path"] = path;
      if (limit_busbw > 0) {
        results.back()["limit_fraction"] = fraction;
        results.back()["limit_busbw_gbps"] = size_limit;
        results.back()["limit_fraction_best"] = busbw / size_limit_best;
        if (limit_here) results.back()["iterations"] = iterations;
      }
      if (!a.json) {
        std::printf("%12zu %12zu %10.2f %10.3f %10.3f %6.2f %6s\n", reported_bytes, count, slowest,
                    algbw, busbw, fraction, check.c_str());
        std::fflush(stdout);
      }
    }
    if (check == "fail") return internal_error(fmt::format("{} result check failed at {} bytes", a.op, reported_bytes));
  }
  // What making plain memory shared in place cost (Note [Sharing user memory
  // in place]: a buffer's first use copies it), the slowest rank's.
  const comm::InPlaceShareStats shared = comm::in_place_share_stats();
  double share_cost[2] = {shared.seconds * 1e6, static_cast<double>(shared.bytes)};
  KILN_RETURN_IF_ERROR(
      c.allreduce(share_cost, 2, DataType::kFloat64, comm::ReduceOp::kMax)->wait());
  if (c.rank() == 0 && !a.json && share_cost[1] > 0) {
    std::printf("# shared in place: %.0f MiB, %.0f ms (the slowest rank)\n",
                share_cost[1] / (1 << 20), share_cost[0] / 1e3);
  }
  if (c.rank() == 0 && a.json) {
    nlohmann::json doc{{"op", a.op}, {"dtype", comm::dtype_name(t)}, {"world_size", n},
                       {"reduce_op", a.reduce_op}, {"algo", a.algo.empty() ? "auto" : a.algo},
                       {"registered", a.registered}, {"first_warmup_us", first_us},
                       {"in_place_share_us", share_cost[0]},
                       {"in_place_shared_bytes", share_cost[1]}, {"results", results}};
    if (limit_busbw > 0) {
      doc["limit_busbw_gbps"] = limit_busbw;
      doc["stream_add_gbps"] = limit_busbw * kLocalAllreduceTrafficPerByte;
    }
    std::printf("%s\n", doc.dump().c_str());
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<BenchArgs>();
  auto* cmd = parent.add_subcommand("comm", "Collective bandwidth/latency sweep (starts --ranks local ranks unless launched)");
  cmd->add_option("-o,--op", a->op, "allreduce, allgather, reduce_scatter, broadcast, alltoall, sendrecv");
  cmd->add_option("-b,--minbytes", a->min_bytes, "smallest size (e.g. 4K)");
  cmd->add_option("-e,--maxbytes", a->max_bytes, "largest size (e.g. 256M)");
  cmd->add_option("-f,--stepfactor", a->factor, "size multiplier between points");
  cmd->add_option("-d,--datatype", a->dtype, "float32, float64, float16, bfloat16, int32, int64, uint8");
  cmd->add_option("-r,--reduce-op", a->reduce_op, "sum, avg, min, max, prod");
  cmd->add_option("-a,--algo", a->algo, "force the allreduce algorithm (ring, recursive_doubling, halving_doubling, hierarchical)");
  cmd->add_option("-n,--iters", a->iters, "timed iterations per size");
  cmd->add_option("-w,--warmup_iters", a->warmup, "untimed iterations per size");
  cmd->add_flag("-c,--check", a->check, "verify results");
  cmd->add_flag("--json", a->json, "rank 0 prints one JSON document");
  cmd->add_flag("-R,--registered", a->registered,
                "buffers from comm::SharedBuffer, which ranks on one host reach directly (as "
                "nccl-tests' -R)");
  cmd->add_option("--ranks", a->ranks, "local ranks to start when not run under a launcher")
      ->capture_default_str();
  cmd->add_flag("--inject-corruption", a->inject_corruption)->group("");  // tests only
  cmd->callback(run_status([a] { return bench_comm(*a); }));
});

}  // namespace
}  // namespace kiln::cli
