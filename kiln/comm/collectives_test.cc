// Every collective × dtype × algorithm × count, on real processes, against a
// reference computed here, for world sizes 1, 2, 3, 4, 5 and 8 over shared
// memory, over tcp, and over a simulated two-ranks-per-host cluster (shm
// inside a host, tcp between, hierarchical allreduce).
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstddef>
#include <iterator>
#include <tuple>

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/communicator.h"
#include "kiln/comm/element_io.h"
#include "kiln/comm/reduce.h"
#include "kiln/base/fd.h"
#include "kiln/comm/shared_buffer.h"
#include "kiln/comm/shared_in_place.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::comm {
namespace {

constexpr DataType kDtypes[] = {DataType::kFloat32, DataType::kFloat64, DataType::kFloat16,
                                DataType::kBFloat16, DataType::kInt32,   DataType::kInt64,
                                DataType::kUInt8};
constexpr ReduceOp kOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                             ReduceOp::kProd};

// Small integers: exact in every dtype, so only avg rounds.
double input_value(int rank, std::size_t i, ReduceOp op, DataType t) {
  if (op == ReduceOp::kProd) return 1 + static_cast<double>((rank + i) % 2);
  double v = static_cast<double>((rank * 7 + i * 3) % 11);
  return t == DataType::kUInt8 ? v : v - 5;
}

bool is_int(DataType t) {
  return t == DataType::kInt32 || t == DataType::kInt64 || t == DataType::kUInt8;
}

// The reduction of element i over ranks [0, n), computed the way the dtype does.
double expected_reduce(int n, std::size_t i, ReduceOp op, DataType t) {
  double acc = input_value(0, i, op, t);
  for (int r = 1; r < n; ++r) {
    double v = input_value(r, i, op, t);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: acc += v; break;
      case ReduceOp::kProd: acc *= v; break;
      case ReduceOp::kMin: acc = std::min(acc, v); break;
      case ReduceOp::kMax: acc = std::max(acc, v); break;
    }
  }
  if (t == DataType::kUInt8) acc = static_cast<double>(static_cast<std::uint8_t>(static_cast<std::int64_t>(acc)));
  if (op == ReduceOp::kAvg) acc = is_int(t) ? std::trunc(acc / n) : acc / n;
  return acc;
}

bool close_enough(DataType t, double got, double want) {
  double tol = 0;
  if (t == DataType::kFloat16 || t == DataType::kBFloat16) tol = 1e-2 * std::max(1.0, std::fabs(want));
  if (t == DataType::kFloat32) tol = 1e-6 * std::max(1.0, std::fabs(want));
  if (t == DataType::kFloat64) tol = 1e-12 * std::max(1.0, std::fabs(want));
  return std::fabs(got - want) <= tol;
}

Status mismatch(const std::string& what, std::size_t i, double got, double want) {
  return internal_error(fmt::format("{}: element {} is {} but should be {}", what, i, got, want));
}

struct Bufs {
  std::vector<char> in, out;
};

Status check_allreduce(Communicator& c, DataType t, ReduceOp op, std::size_t count, bool in_place,
                       AllreduceAlgo algo) {
  std::size_t es = dtype_size(t);
  Bufs b{std::vector<char>(count * es + 1), std::vector<char>(count * es + 1)};
  for (std::size_t i = 0; i < count; ++i) store_element(t, b.in.data(), i, input_value(c.rank(), i, op, t));
  c.set_allreduce_algo(algo);
  void* out = in_place ? b.in.data() : b.out.data();
  KILN_RETURN_IF_ERROR(c.allreduce(b.in.data(), out, count, t, op)->wait());
  std::string what = fmt::format("allreduce {} {} count {} {} {}", allreduce_algo_name(algo),
                                 dtype_name(t), count, reduce_op_name(op), in_place ? "in-place" : "out-of-place");
  for (std::size_t i = 0; i < count; ++i) {
    double want = expected_reduce(c.size(), i, op, t), got = load_element(t, out, i);
    if (!close_enough(t, got, want)) return mismatch(what, i, got, want);
  }
  return Status::ok();
}

Status check_reduce_and_broadcast(Communicator& c, DataType t, std::size_t count) {
  std::size_t es = dtype_size(t);
  int root = c.size() - 1;
  ReduceOp op = ReduceOp::kSum;
  std::vector<char> in(count * es + 1), out(count * es + 1);
  for (std::size_t i = 0; i < count; ++i) store_element(t, in.data(), i, input_value(c.rank(), i, op, t));
  KILN_RETURN_IF_ERROR(c.reduce(in.data(), out.data(), count, t, op, root)->wait());
  if (c.rank() == root) {
    for (std::size_t i = 0; i < count; ++i) {
      double want = expected_reduce(c.size(), i, op, t), got = load_element(t, out.data(), i);
      if (!close_enough(t, got, want)) return mismatch(fmt::format("reduce {} count {}", dtype_name(t), count), i, got, want);
    }
  }
  // Broadcast from root 0: everyone ends with root 0's input.
  for (std::size_t i = 0; i < count; ++i) store_element(t, out.data(), i, input_value(c.rank(), i, op, t));
  KILN_RETURN_IF_ERROR(c.broadcast(out.data(), count, t, 0)->wait());
  for (std::size_t i = 0; i < count; ++i) {
    double want = input_value(0, i, op, t), got = load_element(t, out.data(), i);
    if (got != want) return mismatch(fmt::format("broadcast {} count {}", dtype_name(t), count), i, got, want);
  }
  return Status::ok();
}

Status check_allgather(Communicator& c, DataType t, std::size_t count) {
  std::size_t es = dtype_size(t);
  int n = c.size();
  // Uneven: rank r contributes count + r elements.
  std::vector<std::size_t> counts(n);
  std::size_t total = 0;
  for (int r = 0; r < n; ++r) total += counts[r] = count + r;
  std::vector<char> in(counts[c.rank()] * es + 1), out(total * es + 1);
  for (std::size_t i = 0; i < counts[c.rank()]; ++i) store_element(t, in.data(), i, input_value(c.rank(), i, ReduceOp::kSum, t));
  KILN_RETURN_IF_ERROR(c.allgatherv(in.data(), out.data(), counts, t)->wait());
  std::size_t off = 0;
  for (int r = 0; r < n; ++r) {
    for (std::size_t i = 0; i < counts[r]; ++i) {
      double want = input_value(r, i, ReduceOp::kSum, t), got = load_element(t, out.data(), off + i);
      if (got != want) return mismatch(fmt::format("allgatherv {} block of rank {}", dtype_name(t), r), i, got, want);
    }
    off += counts[r];
  }
  // Even allgather.
  std::vector<char> out2(count * n * es + 1);
  KILN_RETURN_IF_ERROR(c.allgather(in.data(), out2.data(), count, t)->wait());
  for (int r = 0; r < n; ++r) {
    for (std::size_t i = 0; i < count; ++i) {
      double want = input_value(r, i, ReduceOp::kSum, t), got = load_element(t, out2.data(), r * count + i);
      if (got != want) return mismatch(fmt::format("allgather {} block of rank {}", dtype_name(t), r), i, got, want);
    }
  }
  return Status::ok();
}

// in_place: recv is this rank's own block of send.
Status check_reduce_scatter(Communicator& c, DataType t, ReduceOp op, std::size_t count,
                            bool in_place = false) {
  std::size_t es = dtype_size(t);
  int n = c.size();
  std::vector<char> in(count * n * es + 1), out(count * es + 1);
  for (std::size_t i = 0; i < count * n; ++i) store_element(t, in.data(), i, input_value(c.rank(), i, op, t));
  char* recv = in_place ? in.data() + c.rank() * count * es : out.data();
  KILN_RETURN_IF_ERROR(c.reduce_scatter(in.data(), recv, count, t, op)->wait());
  for (std::size_t i = 0; i < count; ++i) {
    std::size_t global = c.rank() * count + i;
    double want = expected_reduce(n, global, op, t), got = load_element(t, recv, i);
    if (!close_enough(t, got, want)) {
      return mismatch(fmt::format("reduce_scatter {} {} count {}{}", dtype_name(t),
                                  reduce_op_name(op), count, in_place ? " in place" : ""),
                      i, got, want);
    }
  }
  return Status::ok();
}

Status check_alltoall(Communicator& c, DataType t, std::size_t count) {
  std::size_t es = dtype_size(t);
  int n = c.size();
  std::vector<char> in(count * n * es + 1), out(count * n * es + 1);
  // Block j of rank r carries value pattern (r, j).
  for (int j = 0; j < n; ++j)
    for (std::size_t i = 0; i < count; ++i) store_element(t, in.data(), j * count + i, (c.rank() * 3 + j + i) % 7);
  KILN_RETURN_IF_ERROR(c.alltoall(in.data(), out.data(), count, t)->wait());
  for (int r = 0; r < n; ++r)
    for (std::size_t i = 0; i < count; ++i) {
      double want = (r * 3 + c.rank() + i) % 7, got = load_element(t, out.data(), r * count + i);
      if (got != want) return mismatch(fmt::format("alltoall {} from rank {}", dtype_name(t), r), i, got, want);
    }
  return Status::ok();
}

Status check_sendrecv(Communicator& c, std::size_t count) {
  // A ring of sends: rank r sends to r+1 and receives from r-1, ordered so
  // nobody waits on a receive before its send was issued.
  int n = c.size();
  if (n == 1) return Status::ok();
  std::vector<std::int32_t> out(count), in(count, -1);
  for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<std::int32_t>(c.rank() * 1000 + i);
  int to = (c.rank() + 1) % n, from = (c.rank() - 1 + n) % n;
  WorkPtr a, b;
  if (c.rank() % 2 == 0) {
    a = c.send(out.data(), count, DataType::kInt32, to);
    b = c.recv(in.data(), count, DataType::kInt32, from);
  } else {
    b = c.recv(in.data(), count, DataType::kInt32, from);
    a = c.send(out.data(), count, DataType::kInt32, to);
  }
  KILN_RETURN_IF_ERROR(a->wait());
  KILN_RETURN_IF_ERROR(b->wait());
  for (std::size_t i = 0; i < count; ++i) {
    if (in[i] != static_cast<std::int32_t>(from * 1000 + i)) return mismatch("send/recv", i, in[i], from * 1000 + i);
  }
  return Status::ok();
}

// kShmStreaming: shared memory with every received message written by
// streaming stores (Note [Streaming stores for large messages]), which
// normally only messages of 16 MiB and more are.
// kTcpCoded: tcp with every large message byte-plane coded (Note [Coding
// payloads for slow links]), which normally only slow links' are.
enum class Layout { kShm, kTcp, kTwoPerHost, kShmStreaming, kTcpCoded };

struct Case {
  int world;
  Layout layout;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const char* l = info.param.layout == Layout::kShm           ? "shm"
                  : info.param.layout == Layout::kTcp         ? "tcp"
                  : info.param.layout == Layout::kShmStreaming ? "shm_streaming"
                  : info.param.layout == Layout::kTcpCoded     ? "tcp_coded"
                                                               : "two_per_host";
  return fmt::format("world{}_{}", info.param.world, l);
}

testing::RunOptions options_for(Layout layout) {
  testing::RunOptions o;
  o.deadline = std::chrono::seconds(240);
  o.comm.transport_from_env = false;
  o.comm.algo_from_env = false;
  o.comm.connect.mode = layout == Layout::kTcp || layout == Layout::kTcpCoded
                            ? transport::TransportMode::kTcp
                            : transport::TransportMode::kAuto;
  o.env["KILN_TCP_CODE"] = layout == Layout::kTcpCoded ? "on" : "off";
  if (layout == Layout::kTwoPerHost) {
    o.env_for_rank = [](int rank) {
      return std::map<std::string, std::string>{{"KILN_HOST_ID", fmt::format("host{}", rank / 2)}};
    };
  }
  if (layout == Layout::kShmStreaming) o.env["KILN_SHM_STREAMING_BYTES"] = "1";
  return o;
}

class Collectives : public ::testing::TestWithParam<Case> {};

TEST_P(Collectives, MatchReferenceForEveryOpDtypeAlgorithmAndCount) {
  const Case param = GetParam();
  // Small counts for every op × dtype × reduce op × algorithm; the large
  // count (1M+3) for every op × dtype × algorithm.
  auto result = testing::run_ranks(param.world, [](Communicator& c) -> Status {
    const std::size_t small_counts[] = {0, 1, 7, 1023};
    const std::size_t large = (1u << 20) + 3;
    const AllreduceAlgo algos[] = {AllreduceAlgo::kRing, AllreduceAlgo::kRecursiveDoubling,
                                   AllreduceAlgo::kHalvingDoubling, AllreduceAlgo::kHierarchical};
    for (AllreduceAlgo algo : algos) {
      for (DataType t : kDtypes) {
        for (ReduceOp op : kOps) {
          for (std::size_t count : small_counts) {
            KILN_RETURN_IF_ERROR(check_allreduce(c, t, op, count, count % 2 == 1, algo));
          }
        }
      }
      // The large count once per dtype (sum out of place, max in place).
      for (DataType t : kDtypes) {
        KILN_RETURN_IF_ERROR(check_allreduce(c, t, t == DataType::kUInt8 ? ReduceOp::kMax : ReduceOp::kSum, large, false, algo));
      }
      KILN_RETURN_IF_ERROR(check_allreduce(c, DataType::kFloat32, ReduceOp::kMax, large, true, algo));
    }
    for (DataType t : kDtypes) {
      for (std::size_t count : small_counts) {
        KILN_RETURN_IF_ERROR(check_reduce_and_broadcast(c, t, count));
        KILN_RETURN_IF_ERROR(check_allgather(c, t, count));
        KILN_RETURN_IF_ERROR(check_alltoall(c, t, count));
        for (ReduceOp op : kOps) KILN_RETURN_IF_ERROR(check_reduce_scatter(c, t, op, count));
      }
      // The large count (1M+3 elements in all; per-rank blocks for the
      // gathering and scattering ops).
      KILN_RETURN_IF_ERROR(check_reduce_and_broadcast(c, t, large));
      KILN_RETURN_IF_ERROR(check_allgather(c, t, large / c.size()));
      KILN_RETURN_IF_ERROR(check_reduce_scatter(c, t, ReduceOp::kSum, large / c.size()));
      KILN_RETURN_IF_ERROR(
          check_reduce_scatter(c, t, ReduceOp::kAvg, large / c.size(), /*in_place=*/true));
      KILN_RETURN_IF_ERROR(check_alltoall(c, t, large / c.size()));
    }
    for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{7}, large}) {
      KILN_RETURN_IF_ERROR(check_sendrecv(c, count));
    }
    return c.barrier()->wait();
  }, options_for(param.layout));
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(
    AllWorldSizes, Collectives,
    ::testing::Values(Case{1, Layout::kShm}, Case{2, Layout::kShm}, Case{3, Layout::kShm},
                      Case{4, Layout::kShm}, Case{5, Layout::kShm}, Case{8, Layout::kShm},
                      Case{2, Layout::kTcp}, Case{3, Layout::kTcp}, Case{4, Layout::kTcp},
                      Case{5, Layout::kTcp}, Case{8, Layout::kTcp},
                      Case{4, Layout::kTwoPerHost}, Case{5, Layout::kTwoPerHost},
                      Case{8, Layout::kTwoPerHost}, Case{2, Layout::kShmStreaming},
                      Case{3, Layout::kShmStreaming}, Case{2, Layout::kTcpCoded},
                      Case{3, Layout::kTcpCoded}),
    case_name);

// Note [16-bit floats accumulate in float32]: non-integer inputs whose sums
// are not representable in 16 bits, so rounding a partial at any hop shows.
// Every element must be the 16-bit rounding of the float32 result: of the
// exact value give or take float32's own error (positive inputs, so none
// cancels), never a value rounded once per hop.
double wide_input(int rank, std::size_t i, ReduceOp op, DataType t) {
  double v = 0.5 + static_cast<double>((rank * 7919 + i * 104729) % 1000) / 997.0;
  if (op == ReduceOp::kProd) v = 0.9 + v / 10;  // near 1: 8 ranks' product stays in range
  alignas(8) char cell[8];
  store_element(t, cell, 0, v);
  return load_element(t, cell, 0);  // the input as the dtype holds it
}

double exact_reduce(int n, std::size_t i, ReduceOp op, DataType t) {
  double acc = op == ReduceOp::kProd ? 1 : 0;
  for (int r = 0; r < n; ++r) {
    acc = op == ReduceOp::kProd ? acc * wide_input(r, i, op, t) : acc + wide_input(r, i, op, t);
  }
  return op == ReduceOp::kAvg ? acc / n : acc;
}

Status check_rounded_once(DataType t, ReduceOp op, int n, const void* out, std::size_t count,
                          std::size_t first, const std::string& what) {
  for (std::size_t i = 0; i < count; ++i) {
    double exact = exact_reduce(n, first + i, op, t);
    alignas(8) char lo[8], hi[8];
    store_element(t, lo, 0, exact * (1 - 1e-6));
    store_element(t, hi, 0, exact * (1 + 1e-6));
    double got = load_element(t, out, i);
    if (got != load_element(t, lo, 0) && got != load_element(t, hi, 0)) {
      return internal_error(fmt::format("{}: element {} is {} but the float32 result {} rounds to {}",
                                        what, first + i, got, exact, load_element(t, lo, 0)));
    }
  }
  return Status::ok();
}

Status check_16bit_accumulation(Communicator& c, DataType t, ReduceOp op, std::size_t count) {
  const std::size_t es = dtype_size(t);
  const int n = c.size();
  std::vector<char> in(count * n * es + 1), out(count * n * es + 1);
  for (std::size_t i = 0; i < count * n; ++i) store_element(t, in.data(), i, wide_input(c.rank(), i, op, t));
  const std::string base = fmt::format("{} {} count {}", dtype_name(t), reduce_op_name(op), count);
  for (AllreduceAlgo algo : {AllreduceAlgo::kRing, AllreduceAlgo::kRecursiveDoubling,
                             AllreduceAlgo::kHalvingDoubling, AllreduceAlgo::kHierarchical}) {
    c.set_allreduce_algo(algo);
    KILN_RETURN_IF_ERROR(c.allreduce(in.data(), out.data(), count, t, op)->wait());
    KILN_RETURN_IF_ERROR(check_rounded_once(t, op, n, out.data(), count, 0,
                                            fmt::format("allreduce {} {}", allreduce_algo_name(algo), base)));
  }
  KILN_RETURN_IF_ERROR(c.reduce(in.data(), out.data(), count, t, op, n - 1)->wait());
  if (c.rank() == n - 1) {
    KILN_RETURN_IF_ERROR(check_rounded_once(t, op, n, out.data(), count, 0, "reduce " + base));
  }
  KILN_RETURN_IF_ERROR(c.reduce_scatter(in.data(), out.data(), count, t, op)->wait());
  return check_rounded_once(t, op, n, out.data(), count, c.rank() * count, "reduce_scatter " + base);
}

class SixteenBitFloats : public ::testing::TestWithParam<Case> {};

TEST_P(SixteenBitFloats, AccumulateInFloat32AndRoundOnce) {
  auto result = testing::run_ranks(GetParam().world, [](Communicator& c) -> Status {
    for (DataType t : {DataType::kBFloat16, DataType::kFloat16}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kProd}) {
        for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{1023}, std::size_t{65537}}) {
          KILN_RETURN_IF_ERROR(check_16bit_accumulation(c, t, op, count));
        }
      }
    }
    return c.barrier()->wait();
  }, options_for(GetParam().layout));
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(EightRanksAndAFold, SixteenBitFloats,
                         ::testing::Values(Case{8, Layout::kShm}, Case{8, Layout::kTwoPerHost},
                                           Case{5, Layout::kShm}),
                         case_name);
// A reduce-scatter ring whose only hop is the 16-bit first one (2 ranks) and
// one with a float32 hop after it (3): Note [A ring's first hop is 16 bits].
INSTANTIATE_TEST_SUITE_P(OneAndTwoHops, SixteenBitFloats,
                         ::testing::Values(Case{2, Layout::kTcp}, Case{3, Layout::kShm}),
                         case_name);

// Note [Direct allreduce on shared buffers]: with every rank's buffers in
// SharedBuffers (and KILN_SHM_DIRECT_BYTES=1, so every size qualifies), each
// allreduce must run directly and match the reference, for every dtype and
// reduce op, in place and out of place, at offsets that put the ranks'
// buffers at different positions within a cache line.
// Which way an allreduce is expected to run.
enum class Path { kUsual, kDirect, kCma };

Status check_direct_allreduce(Communicator& c, DataType t, ReduceOp op, std::size_t count,
                              bool in_place, std::size_t offset, Path expect,
                              bool registered = true) {
  const std::size_t es = dtype_size(t);
  const std::size_t bytes = count * es + offset + 1;
  SharedBuffer in_shared, out_shared;
  std::vector<char> in_plain, out_plain;
  char *in = nullptr, *out = nullptr;
  if (registered) {
    KILN_ASSIGN_OR_RETURN(in_shared, SharedBuffer::allocate(bytes));
    KILN_ASSIGN_OR_RETURN(out_shared, SharedBuffer::allocate(bytes));
    in = static_cast<char*>(in_shared.data()) + offset;
    out = static_cast<char*>(out_shared.data()) + offset;
  } else {
    in_plain.resize(bytes);
    out_plain.resize(bytes);
    in = in_plain.data() + offset;
    out = out_plain.data() + offset;
  }
  for (std::size_t i = 0; i < count; ++i) store_element(t, in, i, input_value(c.rank(), i, op, t));
  if (in_place) out = in;
  const std::uint64_t direct = c.direct_allreduces(), cma = c.cma_allreduces();
  KILN_RETURN_IF_ERROR(c.allreduce(in, out, count, t, op)->wait());
  std::string what = fmt::format("allreduce on {} buffers, {} count {} {} {} at offset {}",
                                 registered ? "shared" : "plain", dtype_name(t), count,
                                 reduce_op_name(op), in_place ? "in-place" : "out-of-place", offset);
  const bool ran_direct = c.direct_allreduces() != direct, ran_cma = c.cma_allreduces() != cma;
  if (ran_direct != (expect == Path::kDirect) || ran_cma != (expect == Path::kCma)) {
    return internal_error(fmt::format("{}: ran {}", what,
                                      ran_direct ? "directly" : ran_cma ? "through the kernel"
                                                                        : "the usual way"));
  }
  for (std::size_t i = 0; i < count; ++i) {
    double want = expected_reduce(c.size(), i, op, t), got = load_element(t, out, i);
    if (!close_enough(t, got, want)) return mismatch(what, i, got, want);
  }
  return Status::ok();
}

// Plain memory is never shared in place here (in_place_options turns it
// on): it runs the usual way.
testing::RunOptions direct_options() {
  testing::RunOptions o = options_for(Layout::kShm);
  o.env["KILN_SHM_DIRECT_BYTES"] = "1";
  o.env["KILN_SHM_SHARE_IN_PLACE_BYTES"] = "0";
  return o;
}

class DirectAllreduce : public ::testing::TestWithParam<int> {};

TEST_P(DirectAllreduce, EveryDtypeAndOpOnSharedBuffersMatchesTheReference) {
  auto result = testing::run_ranks(GetParam(), [](Communicator& c) -> Status {
    for (DataType t : kDtypes) {
      const std::size_t es = dtype_size(t);
      for (ReduceOp op : kOps) {
        for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{1023}}) {
          KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, op, count, count % 2 == 1, 0, Path::kDirect));
        }
        // Large: whole lines, then the two ranks a different distance into a line.
        const std::size_t large = (1u << 20) + 3;
        KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, op, large, false, 0, Path::kDirect));
        KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, op, large, true, c.rank() * es, Path::kDirect));
      }
    }
    // Nothing to offer for an empty allreduce.
    return check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, 0, false, 0, Path::kUsual);
  }, direct_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(TwoAndThreeRanks, DirectAllreduce, ::testing::Values(2, 3),
                         [](const auto& info) { return fmt::format("world{}", info.param); });

// As DDP lays its buckets (Note [Buckets in shared memory]): several
// allreduces on sub-ranges of ONE SharedBuffer, at offsets that differ
// between the ranks, each runs directly and reduces its range alone.
TEST(DirectAllreduce, SubRangesOfOneSharedBufferReduceDirectlyAndAlone) {
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    const std::size_t counts[] = {1000, 3, 70000};
    const std::size_t skew = c.rank() == 0 ? 0 : 4 * 17;  // rank 1's ranges start elsewhere
    KILN_ASSIGN_OR_RETURN(auto shared, SharedBuffer::allocate((71003 + 3 * 16) * 4 + skew));
    auto* base = static_cast<float*>(shared.data()) + skew / 4;
    std::vector<float*> at;
    for (std::size_t i = 0, off = 0; i < std::size(counts); off += counts[i++] + 16) {
      at.push_back(base + off);
      for (std::size_t k = 0; k < counts[i]; ++k) at[i][k] = static_cast<float>(c.rank() + i + k);
      at[i][counts[i]] = -1.0f;  // just past the range: must stay untouched
    }
    for (std::size_t i = 0; i < std::size(counts); ++i) {
      const std::uint64_t direct = c.direct_allreduces();
      KILN_RETURN_IF_ERROR(
          c.allreduce(at[i], at[i], counts[i], DataType::kFloat32, ReduceOp::kSum)->wait());
      if (c.direct_allreduces() != direct + 1) {
        return internal_error(fmt::format("range {} did not run directly", i));
      }
    }
    for (std::size_t i = 0; i < std::size(counts); ++i) {
      for (std::size_t k = 0; k < counts[i]; ++k) {
        const float want = static_cast<float>(1 + 2 * (i + k));
        if (at[i][k] != want) return mismatch(fmt::format("range {}", i), k, at[i][k], want);
      }
      if (at[i][counts[i]] != -1.0f) {
        return internal_error(fmt::format("the allreduce of range {} wrote past it", i));
      }
    }
    return Status::ok();
  }, direct_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

// Note [Peer mappings]: with the peer's mapping cache full, a collective
// whose send buffer is the oldest mapping and whose recv buffer is new must
// not unmap the send's mapping to make room for the recv's (it reads from
// it right after): the least recently used goes, not the oldest serial.
TEST(DirectAllreduce, TheSendBufferStaysMappedWhenTheRecvBufferFillsThePeersCache) {
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    constexpr std::size_t kCount = 4096;
    constexpr int kBuffers = 65;  // one more than a peer keeps mapped
    std::vector<SharedBuffer> buffers;
    for (int i = 0; i < kBuffers; ++i) {
      KILN_ASSIGN_OR_RETURN(auto b, SharedBuffer::allocate(kCount * sizeof(float)));
      buffers.push_back(std::move(b));
    }
    auto floats = [&](int i) { return static_cast<float*>(buffers[i].data()); };
    // Buffers 0..63 mapped by the peer, 0 (the oldest serial) first.
    for (int i = 0; i + 1 < kBuffers; ++i) {
      std::fill(floats(i), floats(i) + kCount, 1.0f);
      KILN_RETURN_IF_ERROR(
          c.allreduce(floats(i), floats(i), kCount, DataType::kFloat32, ReduceOp::kSum)->wait());
    }
    for (std::size_t k = 0; k < kCount; ++k) floats(0)[k] = static_cast<float>(c.rank() + k);
    const std::uint64_t direct = c.direct_allreduces();
    KILN_RETURN_IF_ERROR(c.allreduce(floats(0), floats(kBuffers - 1), kCount, DataType::kFloat32,
                                     ReduceOp::kSum)
                             ->wait());
    if (c.direct_allreduces() != direct + 1) return internal_error("did not run directly");
    for (std::size_t k = 0; k < kCount; ++k) {
      const float want = static_cast<float>(1 + 2 * k), got = floats(kBuffers - 1)[k];
      if (got != want) return mismatch("buffer 0 into buffer 64", k, got, want);
    }
    return Status::ok();
  }, direct_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

// Note [Sharing user memory in place]: plain memory (mapped here as a large
// allocation is, so each case controls where its buffers start) shared in
// place on first use runs directly, every dtype and reduce op, in place and
// out, with the ranks' buffers at different offsets within their pages (so
// each rank reaches different elements and the usual algorithm runs the
// rest), and matches the reference.
testing::RunOptions in_place_options() {
  testing::RunOptions o = direct_options();
  o.env["KILN_SHM_SHARE_IN_PLACE_BYTES"] = "1";
  return o;
}

// Private anonymous memory, unmapped when it goes.
struct Mapped {
  explicit Mapped(std::size_t bytes) : bytes(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }
  ~Mapped() {
    if (base != nullptr) munmap(base, bytes);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  std::size_t bytes;
  char* base;
};

// One allreduce of `count` elements from `in` into `out` (in place when
// equal); `in_place_expected`: whether it must run on memory shared in place.
Status check_plain_allreduce(Communicator& c, DataType t, ReduceOp op, std::size_t count, char* in,
                             char* out, bool in_place_expected) {
  const std::size_t es = dtype_size(t);
  for (std::size_t i = 0; i < count; ++i) store_element(t, in, i, input_value(c.rank(), i, op, t));
  const char guard = 0x5a;
  out[count * es] = guard;  // just past the range: must stay untouched
  const std::uint64_t before = c.in_place_allreduces();
  KILN_RETURN_IF_ERROR(c.allreduce(in, out, count, t, op)->wait());
  const std::string what = fmt::format(
      "allreduce on plain memory, {} count {} {} {} at page offset {}", dtype_name(t), count,
      reduce_op_name(op), in == out ? "in-place" : "out-of-place",
      reinterpret_cast<std::uintptr_t>(in) % 4096);
  if ((c.in_place_allreduces() != before) != in_place_expected) {
    return internal_error(fmt::format("{}: {} on memory shared in place", what,
                                      in_place_expected ? "did not run" : "ran"));
  }
  for (std::size_t i = 0; i < count; ++i) {
    double want = expected_reduce(c.size(), i, op, t), got = load_element(t, out, i);
    if (!close_enough(t, got, want)) return mismatch(what, i, got, want);
  }
  if (out[count * es] != guard) return internal_error(what + ": wrote past the range");
  return Status::ok();
}

class InPlaceAllreduce : public ::testing::TestWithParam<int> {};

TEST_P(InPlaceAllreduce, EveryDtypeAndOpOnPlainMemoryRunsDirectlyAndMatchesTheReference) {
  auto result = testing::run_ranks(GetParam(), [](Communicator& c) -> Status {
    const std::size_t large = (1u << 18) + 3;
    Mapped in(large * 8 + 3 * 4096), out(large * 8 + 3 * 4096);
    if (in.base == nullptr || out.base == nullptr) return errno_status("map buffers", errno);
    for (DataType t : kDtypes) {
      const std::size_t es = dtype_size(t);
      for (ReduceOp op : kOps) {
        // The ranks' buffers start at different offsets into a page.
        const std::size_t at = 4096 + 64 * c.rank() + (t == DataType::kFloat64 ? 8 : es);
        KILN_RETURN_IF_ERROR(
            check_plain_allreduce(c, t, op, large, in.base + at, out.base + at, true));
        KILN_RETURN_IF_ERROR(
            check_plain_allreduce(c, t, op, large, in.base + at, in.base + at, true));
      }
    }
    // No page but the two holding its ends: the usual way.
    return check_plain_allreduce(c, DataType::kFloat32, ReduceOp::kSum, 1023, in.base + 4096,
                                 out.base + 4096, false);
  }, in_place_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(TwoAndThreeRanks, InPlaceAllreduce, ::testing::Values(2, 3),
                         [](const auto& info) { return fmt::format("world{}", info.param); });

// Lines of this process's memory map that are memory shared in place: its
// own and its mappings of its peers'.
int in_place_mappings() {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (f == nullptr) return -1;
  int n = 0;
  char line[512];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strstr(line, "kiln-in-place") != nullptr) ++n;
  }
  std::fclose(f);
  return n;
}

// A rank that frees memory it shared in place tells its peers at the next
// direct allreduce, and they unmap theirs: no freed buffer's pages stay
// allocated through a peer.
TEST(InPlaceAllreduce, AFreedBufferIsForgottenByItsPeers) {
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    const std::size_t count = 1u << 18;
    for (int round = 0; round < 3; ++round) {
      Mapped in(count * 4 + 3 * 4096), out(count * 4 + 3 * 4096);
      KILN_RETURN_IF_ERROR(check_plain_allreduce(c, DataType::kFloat32, ReduceOp::kSum, count,
                                                 in.base + 64, out.base + 64, true));
      // Its own two buffers and its mappings of the peer's two.
      const int mapped = in_place_mappings();
      if (mapped != 4) {
        return internal_error(
            fmt::format("round {}: {} mappings of memory shared in place, not 4", round, mapped));
      }
    }
    return Status::ok();
  }, in_place_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

// Rank 1's buffers are a private file mapping, which is never shared in
// place: every rank runs the usual way, with right results.
TEST(InPlaceAllreduce, ARankWhoseMemoryCannotBeSharedMakesEveryRankRunTheUsualWay) {
  auto result = testing::run_ranks(3, [](Communicator& c) -> Status {
    const std::size_t count = (1u << 18) + 3, bytes = count * 8 + 3 * 4096;
    Mapped in(bytes), out(bytes);
    char *send = in.base + 128, *recv = out.base + 128;
    Fd file;
    void* f = nullptr;
    if (c.rank() == 1) {
      file.reset(memfd_create("kiln-test-file", MFD_CLOEXEC));
      if (!file.valid() || ftruncate(file.get(), 2 * bytes) != 0) {
        return errno_status("make a file", errno);
      }
      f = mmap(nullptr, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, file.get(), 0);
      if (f == MAP_FAILED) return errno_status("map a file", errno);
      send = static_cast<char*>(f) + 128;
      recv = send + bytes;
    }
    for (DataType t : {DataType::kFloat32, DataType::kBFloat16, DataType::kInt64}) {
      KILN_RETURN_IF_ERROR(check_plain_allreduce(c, t, ReduceOp::kSum, count, send, recv, false));
      KILN_RETURN_IF_ERROR(check_plain_allreduce(c, t, ReduceOp::kMax, count, send, send, false));
    }
    if (f != nullptr) munmap(f, 2 * bytes);
    return c.direct_allreduces() == 0 ? Status::ok()
                                      : internal_error("ran directly with a rank unreachable");
  }, in_place_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

// Rank 1 dies in the middle of its share: the memfd behind its own input is
// cut to three quarters, so reading the end of its share (the second half of
// the elements) faults, while rank 0 reads only the first half of it. Rank 0
// fails promptly with an error naming rank 1, not a hang.
// The fault tests below kill rank 1 inside an allreduce (it reads memory it
// cannot): rank 1 must not come back, and rank 0's error must name it.
Status rank_1_died_and_is_named(int rank, const Status& s, const char* what_rank_1_read) {
  if (rank == 1) return internal_error(fmt::format("rank 1 survived reading {}", what_rank_1_read));
  if (s.is_ok()) return internal_error("the allreduce succeeded although rank 1 died");
  const std::string m = s.to_string();
  if (m.find("rank 1") == std::string::npos || m.find("exited") == std::string::npos) {
    return internal_error("the error does not say rank 1 exited: " + m);
  }
  return Status::ok();
}

void expect_only_rank_1_died(const testing::RunResult& result) {
  ASSERT_EQ(result.ranks.size(), 2u);
  EXPECT_EQ(result.ranks[0].exit_code, 0) << result.report;
  EXPECT_FALSE(result.ranks[1].timed_out) << result.report;
  EXPECT_NE(result.ranks[1].exit_code, 0) << result.report;
}

TEST(InPlaceAllreduce, APeerDyingMidCollectiveIsAnErrorNamingIt) {
  testing::RunOptions o = in_place_options();
  o.comm.timeout = std::chrono::seconds(60);
  o.deadline = std::chrono::seconds(90);
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    const std::size_t count = 1u << 20, bytes = count * 4 + 3 * 4096;
    Mapped in(bytes), out(bytes);
    char* send = in.base + 64;
    // The path works, so the death below happens inside it.
    KILN_RETURN_IF_ERROR(check_plain_allreduce(c, DataType::kFloat32, ReduceOp::kSum, count,
                                               send, out.base + 64, true));
    if (c.rank() == 1) {
      auto span = share_in_place(send, count * 4);
      if (!span) return internal_error("rank 1's input is no longer shared in place");
      const off_t cut = static_cast<off_t>(span->region.buffer_bytes * 3 / 4 / 4096 * 4096);
      if (ftruncate(span->region.fd, cut) != 0) return errno_status("cut the memfd", errno);
    }
    Status s = c.allreduce(send, out.base + 64, count, DataType::kFloat32, ReduceOp::kSum)->wait();
    return rank_1_died_and_is_named(c.rank(), s, "past its memfd's end");
  }, o);
  expect_only_rank_1_died(result);
}

testing::RunOptions cma_options();

// Ranks that issue different dtypes (so different byte counts for one
// element count) get a clear error before touching a peer's memory, on both
// paths that read peers' buffers.
TEST(DirectAllreduceFallback, RanksWithDifferentDtypesFailNamingDifferentOperations) {
  for (bool cma : {false, true}) {
    testing::RunOptions o = cma ? cma_options() : direct_options();
    auto result = testing::run_ranks(2, [cma](Communicator& c) -> Status {
      const std::size_t count = 4096;
      KILN_ASSIGN_OR_RETURN(auto in, SharedBuffer::allocate(count * 8));
      KILN_ASSIGN_OR_RETURN(auto out, SharedBuffer::allocate(count * 8));
      std::vector<char> plain_in(count * 8), plain_out(count * 8);
      void* send = cma ? plain_in.data() : in.data();
      void* recv = cma ? plain_out.data() : out.data();
      const DataType t = c.rank() == 0 ? DataType::kFloat32 : DataType::kFloat64;
      Status s = c.allreduce(send, recv, count, t, ReduceOp::kSum)->wait();
      if (s.is_ok()) return internal_error("ranks with different dtypes reduced together");
      if (s.to_string().find("different operations") == std::string::npos) {
        return internal_error("the error does not say the operations differ: " + s.to_string());
      }
      return Status::ok();
    }, o);
    EXPECT_TRUE(result.ok()) << (cma ? "cma: " : "direct: ") << result.report;
  }
}

TEST(DirectAllreduceFallback, OneRankWithPlainBuffersOrAForcedAlgorithmRunsTheUsualWay) {
  auto result = testing::run_ranks(3, [](Communicator& c) -> Status {
    const std::size_t large = (1u << 20) + 3;
    // Rank 1's buffers are plain: every rank sees its offer and falls back.
    for (ReduceOp op : kOps) {
      KILN_RETURN_IF_ERROR(check_direct_allreduce(c, DataType::kFloat32, op, large, false, 0,
                                                  Path::kUsual, /*registered=*/c.rank() != 1));
    }
    KILN_RETURN_IF_ERROR(check_direct_allreduce(c, DataType::kBFloat16, ReduceOp::kSum, large,
                                                true, 0, Path::kUsual, c.rank() != 1));
    // A forced algorithm is what runs, shared buffers or not.
    c.set_allreduce_algo(AllreduceAlgo::kRing);
    KILN_RETURN_IF_ERROR(
        check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, large, false, 0, Path::kUsual));
    c.set_allreduce_algo(AllreduceAlgo::kAuto);
    return check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, large, false, 0,
                                  Path::kDirect);
  }, direct_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

TEST(DirectAllreduceFallback, ABufferAPeerCannotMapFallsBackOnEveryRank) {
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    const std::size_t count = (1u << 20) + 3;
    KILN_ASSIGN_OR_RETURN(auto in, SharedBuffer::allocate(count * 4));
    KILN_ASSIGN_OR_RETURN(auto out, SharedBuffer::allocate(count * 4));
    auto* x = static_cast<float*>(in.data());
    for (std::size_t i = 0; i < count; ++i) x[i] = static_cast<float>(c.rank() + i % 5);
    if (c.rank() == 1) {
      // The fault: rank 1's input fd now names /dev/null, so rank 0 finds a
      // file of the wrong size where the offer said the buffer is.
      auto region = find_shared_region(in.data(), 1);
      int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (!region || null_fd < 0 || dup2(null_fd, region->fd) < 0) {
        return internal_error("cannot swap the buffer's fd for /dev/null");
      }
      close(null_fd);
    }
    KILN_RETURN_IF_ERROR(c.allreduce(x, out.data(), count, DataType::kFloat32, ReduceOp::kSum)->wait());
    if (c.direct_allreduces() != 0) return internal_error("ran directly on an unmappable buffer");
    const auto* y = static_cast<const float*>(out.data());
    for (std::size_t i = 0; i < count; ++i) {
      const float want = static_cast<float>(1 + 2 * (i % 5));
      if (y[i] != want) return mismatch("allreduce after the fallback", i, y[i], want);
    }
    return Status::ok();
  }, direct_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

TEST(DirectAllreduceFallback, RanksOfTwoHostsNeverOffer) {
  testing::RunOptions o = options_for(Layout::kTwoPerHost);
  o.env["KILN_SHM_DIRECT_BYTES"] = "1";
  auto result = testing::run_ranks(4, [](Communicator& c) -> Status {
    return check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, (1u << 20) + 3, false, 0,
                                  Path::kUsual);
  }, o);
  EXPECT_TRUE(result.ok()) << result.report;
}

// Note [Single-copy allreduce through the kernel]: plain buffers of every
// rank (KILN_SHM_CMA_BYTES=1, so every size qualifies) run through
// process_vm_readv and match the reference, for every dtype and reduce op,
// at odd sizes (pieces and shares that do not divide), in place and out.
testing::RunOptions cma_options() {
  testing::RunOptions o = options_for(Layout::kShm);
  o.env["KILN_SHM_CMA_BYTES"] = "1";
  o.env["KILN_SHM_SHARE_IN_PLACE_BYTES"] = "0";  // else plain memory is shared in place first
  return o;
}

class CmaAllreduce : public ::testing::TestWithParam<int> {};

TEST_P(CmaAllreduce, EveryDtypeAndOpOnPlainBuffersMatchesTheReference) {
  auto result = testing::run_ranks(GetParam(), [](Communicator& c) -> Status {
    for (DataType t : kDtypes) {
      const std::size_t es = dtype_size(t);
      for (ReduceOp op : kOps) {
        for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{1023}}) {
          KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, op, count, count % 2 == 1, 0,
                                                      Path::kCma, /*registered=*/false));
        }
        // Several L2-sized pieces per share, the ranks at different offsets.
        const std::size_t large = (1u << 19) + 3;
        KILN_RETURN_IF_ERROR(
            check_direct_allreduce(c, t, op, large, false, 0, Path::kCma, false));
        KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, op, large, true, c.rank() * es,
                                                    Path::kCma, false));
      }
    }
    return check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, 0, false, 0,
                                  Path::kUsual, false);
  }, cma_options());
  EXPECT_TRUE(result.ok()) << result.report;
}

INSTANTIATE_TEST_SUITE_P(TwoAndThreeRanks, CmaAllreduce, ::testing::Values(2, 3),
                         [](const auto& info) { return fmt::format("world{}", info.param); });

// Makes every thread of this process fail `syscall_nr` with `err`, as a
// seccomp profile or a kernel without the call would.
Status refuse_syscall(long syscall_nr, int err) {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(syscall_nr), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<std::uint32_t>(err) & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0) {
    return errno_status("install a seccomp filter", errno);
  }
  return Status::ok();
}

// One rank the kernel will not let read its peers (EPERM: ptrace rules or a
// seccomp profile; ENOSYS: no such call): every rank runs the ring instead,
// and the results are right.
TEST(CmaAllreduceFallback, ARankTheKernelRefusesMakesEveryRankRunTheRing) {
  for (auto [world, refused, err] : {std::tuple{2, 1, EPERM}, std::tuple{3, 0, ENOSYS}}) {
    auto result = testing::run_ranks(world, [refused, err](Communicator& c) -> Status {
      // The path works before the refusal, so the fallback below is its doing.
      KILN_RETURN_IF_ERROR(check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, 1023,
                                                  false, 0, Path::kCma, false));
      if (c.rank() == refused) KILN_RETURN_IF_ERROR(refuse_syscall(SYS_process_vm_readv, err));
      for (DataType t : {DataType::kFloat32, DataType::kBFloat16, DataType::kInt32}) {
        KILN_RETURN_IF_ERROR(check_direct_allreduce(c, t, ReduceOp::kSum, (1u << 19) + 3, false,
                                                    0, Path::kUsual, false));
      }
      return check_direct_allreduce(c, DataType::kFloat64, ReduceOp::kMax, (1u << 19) + 3, true,
                                    0, Path::kUsual, false);
    }, cma_options());
    EXPECT_TRUE(result.ok()) << "world " << world << ", rank " << refused << " refused: "
                             << result.report;
  }
}

// Rank 1 crashes in the middle of the reduce-scatter (a page of its own
// input's second half is unreadable, so it faults after reading its first
// pieces): rank 0 fails promptly with an error naming rank 1, not a hang.
// (Under ASan, rank 1's SEGV report in the log is this fault, as intended.)
TEST(CmaAllreduceFallback, APeerDyingMidCollectiveIsAnErrorNamingIt) {
  testing::RunOptions o = cma_options();
  o.comm.timeout = std::chrono::seconds(60);
  o.deadline = std::chrono::seconds(90);
  auto result = testing::run_ranks(2, [](Communicator& c) -> Status {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t count = 4u << 20, bytes = count * sizeof(float);
    void* in = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    std::vector<float> out(count);
    if (in == MAP_FAILED) return errno_status("map the input", errno);
    // The path works, so the death below happens inside it.
    KILN_RETURN_IF_ERROR(check_direct_allreduce(c, DataType::kFloat32, ReduceOp::kSum, 1023,
                                                false, 0, Path::kCma, false));
    std::fill_n(static_cast<float*>(in), count, 1.0f);
    if (c.rank() == 1) {
      // Rank 1's share is the second half; rank 0 reads only the first.
      char* trap = static_cast<char*>(in) + bytes * 3 / 4 / page * page;
      if (mprotect(trap, page, PROT_NONE) != 0) return errno_status("protect a page", errno);
    }
    Status s = c.allreduce(in, out.data(), count, DataType::kFloat32, ReduceOp::kSum)->wait();
    return rank_1_died_and_is_named(c.rank(), s, "an unreadable page");
  }, o);
  expect_only_rank_1_died(result);
}

}  // namespace
}  // namespace kiln::comm
