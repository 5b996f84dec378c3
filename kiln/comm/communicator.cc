#include "kiln/comm/communicator.h"

#include <sys/prctl.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/collectives.h"
#include "kiln/comm/shared_in_place.h"

namespace kiln::comm {
namespace {

const Knob<double> kCommTimeout{"KILN_COMM_TIMEOUT", 300.0,
                                "default timeout of one collective operation, seconds"};
const Knob<std::string> kAlgo{"KILN_ALGO", "auto",
                              "allreduce algorithm: auto, ring, recursive_doubling, "
                              "halving_doubling, hierarchical"};
const Knob<bool> kCommCheck{"KILN_COMM_CHECK", false,
                            "verify that all ranks issue matching operations (costs one small "
                            "allgather per operation)"};
const Knob<std::string> kTransport{"KILN_TRANSPORT", "auto", "peer transport: auto, shm or tcp"};
const Knob<std::int64_t> kDirectBytes{
    "KILN_SHM_DIRECT_BYTES", 1 << 20,
    "allreduces of at least this many bytes among ranks of one host, with the algorithm left to "
    "auto, first offer the peers direct access when their buffers are SharedBuffers (Note "
    "[Direct allreduce on shared buffers]); 0 = never"};

// Off by default: on the hosts measured (a PVM guest) the kernel's copy out
// of another process ran at 4-8 GB/s against 28-34 for memcpy, so the ring
// through the FIFOs is faster (docs/perf.md, issue 24, session 9).
const Knob<std::int64_t> kCmaBytes{
    "KILN_SHM_CMA_BYTES", 0,
    "allreduces of at least this many bytes among ranks of one host, with the algorithm left to "
    "auto and buffers that are not all SharedBuffers, read the peers' buffers through the kernel "
    "(process_vm_readv; Note [Single-copy allreduce through the kernel]) when every rank may; "
    "0 = never (the default: measure with kiln bench comm first)"};

// On where it is safe (sharing_in_place_is_safe: Kiln's madvise is the
// process's, Note [Kiln's madvise]); never elsewhere, whatever it is set to.
const Knob<std::int64_t> kShareInPlaceBytes{
    "KILN_SHM_SHARE_IN_PLACE_BYTES", 1 << 20,
    "allreduces of at least this many bytes among ranks of one host, with the algorithm left to "
    "auto, make the whole pages of plain (private anonymous) buffers shared in place on first "
    "use, so they and later allreduces on them run directly (Note [Sharing user memory in "
    "place]); only where Kiln's madvise is the process's (Note [Kiln's madvise]); 0 = never"};

constexpr std::size_t kFingerprintBytes = 128;
// check_peer value of operations that do their own KILN_COMM_CHECK.
constexpr int kCheckedInBody = -2;

Status (*flat_allreduce(AllreduceAlgo a))(const algo::Env&, const algo::AllreduceArgs&) {
  switch (a) {
    case AllreduceAlgo::kRecursiveDoubling: return algo::allreduce_recursive_doubling;
    case AllreduceAlgo::kHalvingDoubling: return algo::allreduce_halving_doubling;
    default: return algo::allreduce_ring;
  }
}

}  // namespace

std::chrono::milliseconds default_op_timeout() {
  return std::chrono::milliseconds(static_cast<std::int64_t>(kCommTimeout.get() * 1000));
}

Result<std::unique_ptr<Communicator>> Communicator::create(std::shared_ptr<store::Store> store,
                                                           int rank, int size, CommOptions options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return invalid_argument(fmt::format("communicator: rank {} is not in a world of size {}", rank, size));
  }
  if (options.timeout.count() == 0) {
    options.timeout = default_op_timeout();
  }
  if (options.algo_from_env) {
    KILN_ASSIGN_OR_RETURN(options.algo, parse_allreduce_algo(kAlgo.get()));
  }
  if (options.check_from_env) options.check = kCommCheck.get();
  if (options.transport_from_env) {
    KILN_ASSIGN_OR_RETURN(options.connect.mode, transport::parse_transport_mode(kTransport.get()));
  }
  if (options.connect.tag.empty()) options.connect.tag = "default";
  KILN_ASSIGN_OR_RETURN(auto ctx, transport::connect_all(*store, rank, size, options.connect,
                                                         Deadline::after(options.timeout)));
  return std::unique_ptr<Communicator>(
      new Communicator(std::move(store), rank, size, std::move(options), std::move(ctx)));
}

Communicator::Communicator(std::shared_ptr<store::Store> store, int rank, int size,
                           CommOptions options, std::unique_ptr<transport::Context> ctx)
    : store_(std::move(store)),
      rank_(rank),
      size_(size),
      options_(std::move(options)),
      ctx_(std::move(ctx)),
      cost_(CostModel::from_env()),
      world_ranks_(size),
      direct_from_bytes_(kDirectBytes.get()),
      cma_from_bytes_(kCmaBytes.get()),
      in_place_from_bytes_(sharing_in_place_is_safe() ? kShareInPlaceBytes.get() : 0),
      engine_(std::make_unique<Engine>(options_.timeout)) {
  std::iota(world_ranks_.begin(), world_ranks_.end(), 0);
  if (cma_from_bytes_ > 0) {
    // Note [Single-copy allreduce through the kernel]: under Yama's
    // ptrace_scope=1 (Ubuntu's default) process_vm_readv may only read a
    // descendant, and sibling ranks are not; as Open MPI's vader BTL does,
    // let processes of this user read this one. Without Yama the call fails
    // (EINVAL) and nothing changes: the kernel's ordinary rules apply.
    (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  }
  const auto& host_of = ctx_->host_of();
  topology_.world = size_;
  topology_.hosts = host_of.empty() ? 1 : *std::max_element(host_of.begin(), host_of.end()) + 1;
  std::vector<int> per_host(topology_.hosts, 0);
  for (int h : host_of) per_host[h]++;
  topology_.max_ranks_per_host = *std::max_element(per_host.begin(), per_host.end());
  for (int p = 0; p < size_; ++p) {
    if (ctx_->has_pair(p) && !ctx_->pair(p).is_shm()) topology_.any_remote = true;
  }
  for (int p = 0; p < size_; ++p) {
    if (p != rank_ && !(ctx_->has_pair(p) && ctx_->pair(p).is_shm())) all_shm_ = false;
  }
  log()->debug("communicator {}: {}", options_.connect.tag, describe());
}

Communicator::~Communicator() {
  // Work still queued or running would otherwise wait out its timeout.
  if (engine_->busy()) ctx_->abort(cancelled(fmt::format("communicator {} destroyed with operations pending", options_.connect.tag)));
  engine_.reset();
  ctx_.reset();
}

std::string Communicator::describe() const {
  return fmt::format("rank {}/{}, {}, {} host(s)", rank_, size_, transport::describe_transports(*ctx_),
                     topology_.hosts);
}

void Communicator::abort(const Status& why) { ctx_->abort(why); }

AllreduceAlgo Communicator::choose_allreduce(std::size_t bytes) const {
  AllreduceAlgo forced = forced_algo_.load();
  if (forced == AllreduceAlgo::kAuto) forced = options_.algo;
  if (forced != AllreduceAlgo::kAuto) {
    if (forced == AllreduceAlgo::kHierarchical && topology_.hosts == 1) {
      return AllreduceAlgo::kRing;  // one host: nothing to be hierarchical about
    }
    return forced;
  }
  return cost_.pick_allreduce(bytes, topology_);
}

// Decided from what every rank sees alike (the size, the options, the
// transports: a group on one host has shm pairs only), so every rank makes
// the offer or none does.
bool Communicator::direct_allreduce_applies(std::size_t bytes) const {
  if (direct_from_bytes_ <= 0 || bytes < static_cast<std::uint64_t>(direct_from_bytes_)) {
    return false;
  }
  return size_ > 1 && all_shm_ && forced_algo_.load() == AllreduceAlgo::kAuto &&
         options_.algo == AllreduceAlgo::kAuto;
}

bool Communicator::cma_allreduce_applies(std::size_t bytes) const {
  if (cma_from_bytes_ <= 0 || bytes < static_cast<std::uint64_t>(cma_from_bytes_)) return false;
  return size_ > 1 && all_shm_ && forced_algo_.load() == AllreduceAlgo::kAuto &&
         options_.algo == AllreduceAlgo::kAuto;
}

WorkPtr Communicator::enqueue(const char* name, std::string signature,
                              std::function<Status(const algo::Env&)> body, int check_peer) {
  std::lock_guard lock(issue_mu_);
  std::uint64_t seq = next_seq_++;
  std::string what = fmt::format("{} #{} ({}) on rank {}/{}", name, seq, signature, rank_, size_);
  // No sequence number in the fingerprint: point-to-point operations involve
  // only some ranks, so sequence numbers legitimately differ between ranks.
  std::string fingerprint = options_.check ? fmt::format("{} ({})", name, signature) : "";
  auto w = std::make_shared<Work>(
      seq, what,
      [this, what, fingerprint, check_peer, body = std::move(body)](Deadline deadline) -> Status {
        if (ctx_->aborted()) return ctx_->abort_status().with_context(what);
        algo::Env env{algo::Group{ctx_.get(), world_ranks_, rank_}, deadline, &what, &scratch_};
        if (options_.check && check_peer != kCheckedInBody) {
          KILN_RETURN_IF_ERROR(check_fingerprints(env, fingerprint, check_peer));
        }
        Status s = body(env);
        if (!s.is_ok()) {
          // Whatever failed, the group is now out of step: make sure peers learn.
          ctx_->abort(s);
          log()->error("{}", s.to_string());
        }
        return s;
      },
      engine_.get());
  engine_->submit(w);
  return w;
}

Status Communicator::check_fingerprints(const algo::Env& env, const std::string& mine, int peer) {
  std::vector<char> local(kFingerprintBytes, 0);
  std::memcpy(local.data(), mine.data(), std::min(mine.size(), kFingerprintBytes - 1));
  std::vector<int> ranks;
  std::vector<char> all;
  if (peer >= 0) {
    // Point to point: compare with the one peer involved.
    all.resize(kFingerprintBytes);
    transport::Request sr, rr;
    env.group.pair(peer).post_send(local.data(), kFingerprintBytes, &sr);
    env.group.pair(peer).post_recv(all.data(), kFingerprintBytes, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
    ranks.push_back(peer);
  } else {
    all.resize(kFingerprintBytes * size_);
    std::vector<std::size_t> counts(size_, kFingerprintBytes);
    KILN_RETURN_IF_ERROR(algo::allgather_ring(env, local.data(), all.data(), counts, 1));
    for (int r = 0; r < size_; ++r) ranks.push_back(r);
  }
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    const char* theirs = all.data() + i * kFingerprintBytes;
    if (std::strncmp(theirs, local.data(), kFingerprintBytes) != 0) {
      Status s = invalid_argument(fmt::format(
          "KILN_COMM_CHECK: operation mismatch: rank {} called {} but rank {} called {}", rank_,
          local.data(), ranks[i], theirs));
      ctx_->abort(s);
      return s;
    }
  }
  return Status::ok();
}

WorkPtr Communicator::allreduce(const void* send, void* recv, std::size_t count, DataType dtype,
                                ReduceOp op) {
  allreduces_.fetch_add(1, std::memory_order_relaxed);
  std::string sig = fmt::format("{} x {}, {}", dtype_name(dtype), count, reduce_op_name(op));
  return enqueue("allreduce", sig, [=, this](const algo::Env& env) {
    algo::AllreduceArgs args{send, recv, count, dtype, op};
    auto usual = [this](const algo::Env& env, const algo::AllreduceArgs& args) -> Status {
      AllreduceAlgo a = choose_allreduce(args.count * dtype_size(args.dtype));
      if (a == AllreduceAlgo::kHierarchical) {
        AllreduceAlgo inter = cost_.pick_allreduce(
            args.count * dtype_size(args.dtype), Topology{topology_.hosts, topology_.hosts, 1, true});
        return algo::allreduce_hierarchical(env, args, ctx_->host_of(), flat_allreduce(inter));
      }
      return flat_allreduce(a)(env, args);
    };
    if (direct_allreduce_applies(count * dtype_size(dtype))) {
      algo::DirectOptions d{static_cast<std::size_t>(std::max<std::int64_t>(0, in_place_from_bytes_)),
                            usual};
      KILN_ASSIGN_OR_RETURN(auto path, algo::allreduce_direct(env, args, d));
      if (path != algo::DirectPath::kNotRun) {
        direct_allreduces_.fetch_add(1, std::memory_order_relaxed);
        if (path == algo::DirectPath::kSharedInPlace) {
          in_place_allreduces_.fetch_add(1, std::memory_order_relaxed);
        }
        return Status::ok();
      }
    }
    if (cma_allreduce_applies(count * dtype_size(dtype))) {
      KILN_ASSIGN_OR_RETURN(bool done, algo::allreduce_cma(env, args));
      if (done) {
        cma_allreduces_.fetch_add(1, std::memory_order_relaxed);
        return Status::ok();
      }
    }
    return usual(env, args);
  });
}

WorkPtr Communicator::broadcast(void* buf, std::size_t count, DataType dtype, int root) {
  std::string sig = fmt::format("{} x {}, root {}", dtype_name(dtype), count, root);
  return enqueue("broadcast", sig, [=](const algo::Env& env) {
    return algo::broadcast_tree(env, buf, count * dtype_size(dtype), root);
  });
}

WorkPtr Communicator::reduce(const void* send, void* recv, std::size_t count, DataType dtype,
                             ReduceOp op, int root) {
  std::string sig =
      fmt::format("{} x {}, {}, root {}", dtype_name(dtype), count, reduce_op_name(op), root);
  return enqueue("reduce", sig, [=](const algo::Env& env) {
    return algo::reduce_tree(env, send, recv, count, dtype, op, root);
  });
}

WorkPtr Communicator::allgather(const void* send, void* recv, std::size_t count, DataType dtype) {
  return allgatherv(send, recv, std::vector<std::size_t>(size_, count), dtype);
}

WorkPtr Communicator::allgatherv(const void* send, void* recv, std::vector<std::size_t> counts,
                                 DataType dtype) {
  std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  std::string sig = fmt::format("{} x {} total", dtype_name(dtype), total);
  if (counts.size() != static_cast<std::size_t>(size_)) {
    return enqueue("allgatherv", sig, [n = counts.size(), this](const algo::Env&) {
      return invalid_argument(fmt::format("allgatherv: {} counts for {} ranks", n, size_));
    });
  }
  return enqueue("allgather", sig, [=, counts = std::move(counts)](const algo::Env& env) {
    return algo::allgather_ring(env, send, recv, counts, dtype_size(dtype));
  });
}

WorkPtr Communicator::reduce_scatter(const void* send, void* recv, std::size_t recv_count,
                                     DataType dtype, ReduceOp op) {
  std::string sig = fmt::format("{} x {} per rank, {}", dtype_name(dtype), recv_count, reduce_op_name(op));
  return enqueue("reduce_scatter", sig, [=](const algo::Env& env) {
    return algo::reduce_scatter_ring(env, send, recv, recv_count, dtype, op);
  });
}

WorkPtr Communicator::alltoall(const void* send, void* recv, std::size_t count_per_rank,
                               DataType dtype) {
  std::string sig = fmt::format("{} x {} per rank", dtype_name(dtype), count_per_rank);
  return enqueue("alltoall", sig, [=](const algo::Env& env) {
    return algo::alltoall_pairwise(env, send, recv, count_per_rank * dtype_size(dtype));
  });
}

WorkPtr Communicator::send(const void* buf, std::size_t count, DataType dtype, int peer) {
  return point_to_point(true, const_cast<void*>(buf), count, dtype, peer);
}

WorkPtr Communicator::recv(void* buf, std::size_t count, DataType dtype, int peer) {
  return point_to_point(false, buf, count, dtype, peer);
}

WorkPtr Communicator::point_to_point(bool sending, void* buf, std::size_t count, DataType dtype,
                                     int peer) {
  // The signature names the pair the same way on both sides ("src -> dst"),
  // so KILN_COMM_CHECK can compare it with the peer's.
  int src = sending ? rank_ : peer, dst = sending ? peer : rank_;
  std::string sig = fmt::format("{} x {}, {} -> {}", dtype_name(dtype), count, src, dst);
  auto body = [=, this](const algo::Env& env) -> Status {
    transport::Request req;
    if (sending) {
      env.group.pair(peer).post_send(buf, count * dtype_size(dtype), &req);
    } else {
      env.group.pair(peer).post_recv(buf, count * dtype_size(dtype), &req);
    }
    return env.wait({&req});
  };
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return enqueue("send/recv", sig, [peer, sending](const algo::Env&) {
      return invalid_argument(fmt::format("{} rank {}: not a peer", sending ? "send to" : "recv from", peer));
    });
  }
  return enqueue("send/recv", sig, body, peer);
}

WorkPtr Communicator::sendrecv(const void* send, std::size_t send_count, int to, void* recv,
                               std::size_t recv_count, int from, DataType dtype) {
  std::string sig = fmt::format("{} x {} -> {}, {} x {} <- {}", dtype_name(dtype), send_count, to,
                                dtype_name(dtype), recv_count, from);
  return enqueue("sendrecv", sig, [=, this](const algo::Env& env) -> Status {
    for (int peer : {to, from}) {
      if (peer < 0 || peer >= size_) return invalid_argument(fmt::format("sendrecv: rank {} is not a peer", peer));
    }
    std::size_t es = dtype_size(dtype);
    if (to == rank_ || from == rank_) {
      if (to != from) return invalid_argument("sendrecv: a self-send must also receive from self");
      std::memcpy(recv, send, std::min(send_count, recv_count) * es);
      return Status::ok();
    }
    if (options_.check) {
      // Each rank's send must be what the rank it sends to expects to receive.
      std::int64_t sent[2] = {static_cast<std::int64_t>(dtype), static_cast<std::int64_t>(send_count)};
      std::int64_t incoming[2] = {-1, -1};
      transport::Request fs, fr;
      env.group.pair(to).post_send(sent, sizeof(sent), &fs);
      env.group.pair(from).post_recv(incoming, sizeof(incoming), &fr);
      KILN_RETURN_IF_ERROR(env.wait({&fs, &fr}));
      if (incoming[0] != static_cast<std::int64_t>(dtype) ||
          incoming[1] != static_cast<std::int64_t>(recv_count)) {
        Status bad = invalid_argument(fmt::format(
            "KILN_COMM_CHECK: sendrecv mismatch: rank {} sends {} elements of dtype #{} to rank {}, "
            "which expects {} x {}",
            from, incoming[1], incoming[0], rank_, recv_count, dtype_name(dtype)));
        ctx_->abort(bad);
        return bad;
      }
    }
    transport::Request sr, rr;
    env.group.pair(to).post_send(send, send_count * es, &sr);
    env.group.pair(from).post_recv(recv, recv_count * es, &rr);
    return env.wait({&sr, &rr});
  }, /*check_peer=*/kCheckedInBody);
}

WorkPtr Communicator::barrier() {
  return enqueue("barrier", "", [](const algo::Env& env) { return algo::barrier_dissemination(env); });
}

Result<std::unique_ptr<Communicator>> Communicator::split(int color, int key) {
  std::int64_t mine[2] = {color, key};
  std::vector<std::int64_t> all(2 * size_);
  KILN_RETURN_IF_ERROR(allgather(mine, all.data(), 2, DataType::kInt64)->wait());
  int split_index = splits_++;
  if (color < 0) return std::unique_ptr<Communicator>();
  std::vector<std::pair<std::int64_t, int>> members;  // (key, rank)
  for (int r = 0; r < size_; ++r) {
    if (all[2 * r] == color) members.emplace_back(all[2 * r + 1], r);
  }
  std::sort(members.begin(), members.end());
  int new_rank = static_cast<int>(
      std::find(members.begin(), members.end(), std::pair<std::int64_t, int>{key, rank_}) -
      members.begin());
  CommOptions child = options_;
  child.algo_from_env = child.check_from_env = child.transport_from_env = false;
  child.connect.tag = fmt::format("{}/split{}/color{}", options_.connect.tag, split_index, color);
  return create(store_, new_rank, static_cast<int>(members.size()), child);
}

}  // namespace kiln::comm
