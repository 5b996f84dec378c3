// The restart part of `kiln bench ckpt` (bench_ckpt_restart.h). Not a
// subcommand of its own: the child runs as `kiln bench ckpt --restart-child`.
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <utility>

#include "cli/bench_ckpt_restart.h"
#include "kiln/base/deadline.h"
#include "kiln/base/fs.h"
#include "kiln/base/resident_memory.h"
#include "kiln/base/resource_usage.h"
#include "kiln/base/server_process.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/ckpt/shard_writer.h"
#include "kiln/store/tcp/client.h"

namespace kiln::cli {
namespace {

using comm::Communicator;
using comm::DataType;

constexpr std::chrono::seconds kTimeout{120};
constexpr const char* kStoreTag = "bench-ckpt-restart-store";
constexpr const char* kRecoverTag = "bench-ckpt-restart-recover";

// `run` tells one measurement's worlds from another's on the same store.
Result<std::unique_ptr<Communicator>> join(std::shared_ptr<store::Store> store, int rank,
                                           const char* tag, int run) {
  comm::CommOptions o;
  o.timeout = kTimeout;
  o.connect.tag = fmt::format("{}-{}", tag, run);
  return Communicator::create(std::move(store), rank, 2, o);
}

Result<std::unique_ptr<ckpt::MemoryTier>> open_tier(const RestartBenchSpec& spec, Communicator& c) {
  return ckpt::MemoryTier::open({.dir = spec.dir, .comm = &c, .timeout = kTimeout});
}

std::size_t bytes_of(const RestartBenchSpec& spec) {
  return static_cast<std::size_t>(spec.rows * spec.cols * 4);
}

Status store_snapshot(const RestartBenchSpec& spec, Communicator& c,
                      const std::vector<char>& state) {
  KILN_ASSIGN_OR_RETURN(auto tier, open_tier(spec, c));
  std::vector<ckpt::StagedEntry> entries{
      {"weights",
       true,
       {DataType::kFloat32, {2 * spec.rows, spec.cols}, c.rank() * spec.rows, spec.rows},
       0,
       bytes_of(spec)}};
  return tier->store(spec.step, entries, reinterpret_cast<const std::byte*>(state.data()));
}

// Collective: recovers into `into`; true when this rank got its own bytes back.
Result<bool> recover_into(const RestartBenchSpec& spec, Communicator& c,
                          std::span<std::byte> into) {
  KILN_ASSIGN_OR_RETURN(auto tier, open_tier(spec, c));
  ckpt::RecoverTarget t{"weights", into.data(), into.size()};
  KILN_ASSIGN_OR_RETURN(auto got, tier->recover(spec.step, {&t, 1}));
  const ckpt::LoadedEntry* w = got.find("weights");
  return w != nullptr && w->in_place && tier->last_recovery().from_replica == 1;
}

// The restarted process's state memory, as spec.memory says. Mapped as a
// training process's allocator maps large blocks (PyTorch's CPU allocator
// with THP_MEM_ALLOC_ENABLE=1): advised to transparent huge pages, so 512 MiB
// takes 256 page faults rather than 131072 (1.7 s on this VM).
class StateMemory {
 public:
  // Before the join: "wait", "wait1", "wait4k" and "overlap" start their helpers here.
  static Result<StateMemory> map(const std::string& mode, std::size_t bytes) {
    if (mode == "overlap" || mode == "wait" || mode == "wait1" || mode == "wait4k") {
      KILN_ASSIGN_OR_RETURN(auto m, ResidentMemory::map(bytes, mode == "wait1" ? 1 : 0,
                                                        mode == "wait4k"
                                                            ? ResidentMemory::Pages::kSmall
                                                            : ResidentMemory::Pages::kHuge));
      return StateMemory(std::move(m));
    }
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno_status(fmt::format("map {} bytes of state", bytes), errno);
    ::madvise(p, bytes, MADV_HUGEPAGE);  // advice: no huge pages still works
    return StateMemory(static_cast<std::byte*>(p), bytes, mode == "touch");
  }
  StateMemory(StateMemory&& o) noexcept
      : resident_(std::move(o.resident_)),
        data_(std::exchange(o.data_, nullptr)),
        bytes_(std::exchange(o.bytes_, 0)),
        touch_(o.touch_) {}
  StateMemory& operator=(StateMemory&&) = delete;
  ~StateMemory() {
    if (data_ != nullptr) ::munmap(data_, bytes_);
  }
  // After the join: returns once the recovery may write the memory.
  void ready(const std::string& mode) {
    if (touch_) std::memset(data_, 0, bytes_);
    if (resident_ && (mode != "overlap" || !resident_->writable_while_populating())) {
      resident_->wait();
    }
  }
  // After the recovery: the helpers are done (with "overlap", their last
  // slices found their pages already written).
  void finish() {
    if (resident_) resident_->wait();
  }
  std::span<std::byte> span() const {
    return resident_ ? resident_->span() : std::span(data_, bytes_);
  }

 private:
  explicit StateMemory(ResidentMemory m) : resident_(std::move(m)) {}
  StateMemory(std::byte* data, std::size_t bytes, bool touch)
      : data_(data), bytes_(bytes), touch_(touch) {}
  std::optional<ResidentMemory> resident_;
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool touch_ = false;
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A host-wide counter of /proc/vmstat.
std::int64_t vmstat(const std::string& name) {
  std::ifstream in("/proc/vmstat");
  std::string key;
  std::int64_t value = 0;
  while (in >> key >> value) {
    if (key == name) return value;
  }
  return 0;
}

// KiB of free guest memory handed back to the host so far (free page
// reporting; 0 where the kernel does not say): memory the host must back
// again, page by page, when it is next used.
std::int64_t reported_kib() {
  std::ifstream in("/sys/module/page_reporting/parameters/reported_kib");
  std::int64_t kib = 0;
  in >> kib;
  return kib;
}

std::int64_t minor_faults() { return ResourceUsage::of_process().minor_faults; }

// The restarted process's marks: clock (steady_clock, ns) on entering its
// code, joined, allocated, recovered; then its minor page faults while
// allocating and while recovering. Zeros from the survivor. Collective.
constexpr int kMarks = 6;
Status exchange_marks(Communicator& c, const std::int64_t mine[kMarks],
                      std::int64_t all[2 * kMarks]) {
  return c.allgather(mine, all, kMarks, DataType::kInt64)->wait(kTimeout);
}

}  // namespace

Status check_restart_memory_mode(const std::string& mode) {
  for (const char* m : {"wait", "wait1", "wait4k", "overlap", "touch", "fault"}) {
    if (mode == m) return Status::ok();
  }
  return invalid_argument(fmt::format(
      "bench ckpt: --restart-memory {} is none of wait, wait1, wait4k, overlap, touch, fault",
      mode));
}

void fill_bench_state(std::vector<char>& state, int rank) {
  for (std::size_t i = 0; i < state.size(); i += 4096)
    state[i] = static_cast<char>(i / 4096 + rank);
}

Result<RestartTimes> measure_restart_recovery(comm::ProcessGroup& pg, const RestartBenchSpec& spec,
                                              const std::vector<char>& state,
                                              std::vector<char>& scratch,
                                              const std::string& log_dir) {
  std::vector<std::string> argv{"/proc/self/exe",
                                "bench",
                                "ckpt",
                                "--restart-child",
                                "",
                                "--restart-dir",
                                spec.dir,
                                "--restart-rows",
                                std::to_string(spec.rows),
                                "--restart-cols",
                                std::to_string(spec.cols),
                                "--restart-step",
                                std::to_string(spec.step),
                                "--restart-memory",
                                spec.memory,
                                "--restart-run",
                                std::to_string(spec.run)};
  // 1. Both store.
  ServerProcess victim("bench ckpt victim", log_dir + "/restart-victim.log");
  argv[4] = "store";
  KILN_RETURN_IF_ERROR(victim.spawn(argv));
  {
    KILN_ASSIGN_OR_RETURN(auto c, join(pg.store(), 0, kStoreTag, spec.run));
    KILN_RETURN_IF_ERROR(store_snapshot(spec, *c, state));
    // The victim's store returned too: the collective that ends it needs both.
    KILN_RETURN_IF_ERROR(c->barrier()->wait(kTimeout));
    // 2. Killed, and its memory with it.
    victim.kill();
  }
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(spec.dir + "/rank-1"));
  // 3. Restarted.
  const std::int64_t thp_before = vmstat("thp_fault_fallback");
  const std::int64_t stalls_before = vmstat("compact_stall");
  const std::int64_t reported_before = reported_kib();
  const auto t0 = std::chrono::steady_clock::now();
  ServerProcess restarted("bench ckpt restarted rank", log_dir + "/restart-recover.log");
  argv[4] = "recover";
  KILN_RETURN_IF_ERROR(restarted.spawn(argv));
  KILN_ASSIGN_OR_RETURN(auto c, join(pg.store(), 0, kRecoverTag, spec.run));
  KILN_ASSIGN_OR_RETURN(bool ok,
                        recover_into(spec, *c, std::as_writable_bytes(std::span(scratch))));
  std::int32_t done = 1;
  KILN_RETURN_IF_ERROR(
      c->allreduce(&done, 1, DataType::kInt32, comm::ReduceOp::kMin)->wait(kTimeout));
  RestartTimes times;
  times.total_s = seconds_since(t0);
  times.thp_fallbacks = vmstat("thp_fault_fallback") - thp_before;
  times.compaction_stalls = vmstat("compact_stall") - stalls_before;
  times.reported_mib = (reported_kib() - reported_before) / 1024;
  const std::int64_t none[kMarks] = {};
  std::int64_t marks[2 * kMarks];
  KILN_RETURN_IF_ERROR(exchange_marks(*c, none, marks));
  const std::int64_t started =
      std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count();
  auto span_s = [](std::int64_t from, std::int64_t to) {
    return static_cast<double>(to - from) / 1e9;
  };
  const std::int64_t* child = marks + kMarks;
  times.start_s = span_s(started, child[0]);
  times.join_s = span_s(child[0], child[1]);
  times.alloc_s = span_s(child[1], child[2]);
  times.recover_s = span_s(child[2], child[3]);
  times.alloc_faults = child[4];
  times.recover_faults = child[5];
  // 4. Every byte on both sides, untimed.
  std::int32_t good = ok && std::memcmp(scratch.data(), state.data(), state.size()) == 0 ? 1 : 0;
  KILN_RETURN_IF_ERROR(
      c->allreduce(&good, 1, DataType::kInt32, comm::ReduceOp::kMin)->wait(kTimeout));
  KILN_RETURN_IF_ERROR(c->barrier()->wait(kTimeout));
  std::error_code ec;
  std::filesystem::remove_all(spec.dir, ec);
  if (good != 1) {
    return data_loss(fmt::format(
        "bench ckpt: the restarted rank did not get its own bytes back from its buddy's memory "
        "(see {}/restart-recover.log)",
        log_dir));
  }
  return times;
}

Status run_restart_child(const std::string& phase, const RestartBenchSpec& spec) {
  const std::int64_t entered_ns = now_ns();
  if (phase != "store" && phase != "recover") {
    return invalid_argument("bench ckpt: --restart-child must be store or recover");
  }
  KILN_RETURN_IF_ERROR(check_restart_memory_mode(spec.memory));
  // The restarted process's memory, mapped first thing: made resident (per
  // spec.memory) while it connects and joins.
  std::optional<StateMemory> into;
  if (phase == "recover") {
    KILN_ASSIGN_OR_RETURN(auto m, StateMemory::map(spec.memory, bytes_of(spec)));
    into.emplace(std::move(m));
  }
  // The bench's store, as rank 0 serves it (MASTER_ADDR/MASTER_PORT and the
  // job token inherited from it).
  KILN_ASSIGN_OR_RETURN(comm::WorldSpec world, comm::world_spec_from_env());
  store::tcp::TcpStoreOptions so;
  so.token = world.job_token;
  so.connect_timeout = kTimeout;
  so.default_timeout = kTimeout;
  KILN_ASSIGN_OR_RETURN(auto client,
                        store::tcp::TcpStore::connect(
                            world.master_addr, static_cast<std::uint16_t>(world.master_port), so));
  std::shared_ptr<store::Store> store(std::move(client));
  if (phase == "store") {
    KILN_ASSIGN_OR_RETURN(auto c, join(store, 1, kStoreTag, spec.run));
    std::vector<char> state(bytes_of(spec));
    fill_bench_state(state, 1);
    KILN_RETURN_IF_ERROR(store_snapshot(spec, *c, state));
    KILN_RETURN_IF_ERROR(c->barrier()->wait(kTimeout));
    // Waits to be killed: the survivor's SIGKILL ends this process (and if
    // the survivor died first, the parent-death signal does).
    ::pause();
    return internal_error("bench ckpt: the victim outlived its kill");
  }
  std::int64_t marks[kMarks] = {entered_ns};
  KILN_ASSIGN_OR_RETURN(auto c, join(store, 1, kRecoverTag, spec.run));
  marks[1] = now_ns();
  std::int64_t faults = minor_faults();
  // A restarted process's memory: allocated (and touched) before it recovers.
  into->ready(spec.memory);
  marks[2] = now_ns();
  marks[4] = minor_faults() - faults;
  faults = minor_faults();
  KILN_ASSIGN_OR_RETURN(bool ok, recover_into(spec, *c, into->span()));
  into->finish();
  marks[3] = now_ns();
  marks[5] = minor_faults() - faults;
  std::int32_t done = 1;
  KILN_RETURN_IF_ERROR(
      c->allreduce(&done, 1, DataType::kInt32, comm::ReduceOp::kMin)->wait(kTimeout));
  std::int64_t all[2 * kMarks];
  KILN_RETURN_IF_ERROR(exchange_marks(*c, marks, all));
  std::vector<char> want(into->span().size());
  fill_bench_state(want, 1);
  std::int32_t good = ok && std::memcmp(into->span().data(), want.data(), want.size()) == 0 ? 1 : 0;
  KILN_RETURN_IF_ERROR(
      c->allreduce(&good, 1, DataType::kInt32, comm::ReduceOp::kMin)->wait(kTimeout));
  return c->barrier()->wait(kTimeout);
}

}  // namespace kiln::cli
