// Recursive doubling and Rabenseifner's halving-doubling allreduce, for any
// world size (Thakur, Rabenseifner & Gropp 2005). A non-power-of-two world
// folds first: of the first 2·rem ranks, each even rank hands its vector to
// its odd neighbour and sits out; the p = 2^k survivors run the algorithm;
// the odd ranks hand the result back.
#include <cstring>
#include <vector>

#include "kiln/comm/algo/allreduce.h"

namespace kiln::comm::algo {
namespace {

struct Fold {
  int p;    // participants (power of two)
  int rem;  // n - p
  int vr;   // this rank's virtual rank among participants, -1 if it sits out

  explicit Fold(int n, int r) {
    p = 1;
    while (p * 2 <= n) p *= 2;
    rem = n - p;
    if (r < 2 * rem) {
      vr = (r % 2 == 1) ? r / 2 : -1;
    } else {
      vr = r - rem;
    }
  }
  int real(int v) const { return v < rem ? 2 * v + 1 : v + rem; }
};

// Before the participants start: every rank's input is in recv (participants)
// or has been handed over (those who sit out).
Status fold_in(const Env& env, const AllreduceArgs& a, const Fold& f, std::size_t bytes) {
  const int r = env.group.me;
  auto* recv = static_cast<char*>(a.recv);
  if (r < 2 * f.rem) {
    transport::Request req;
    if (f.vr < 0) {
      env.group.pair(r + 1).post_send(a.send, bytes, &req);
    } else {
      env.group.pair(r - 1).post_recv_reduce(recv, a.send, bytes, Reducer{a.dtype, a.op}, &req);
    }
    return env.wait({&req});
  }
  if (a.send != a.recv) std::memcpy(recv, a.send, bytes);
  return Status::ok();
}

Status fold_out(const Env& env, const AllreduceArgs& a, const Fold& f, std::size_t bytes) {
  const int r = env.group.me;
  if (r >= 2 * f.rem) return Status::ok();
  transport::Request req;
  if (f.vr < 0) {
    env.group.pair(r + 1).post_recv(a.recv, bytes, &req);
  } else {
    env.group.pair(r - 1).post_send(a.recv, bytes, &req);
  }
  return env.wait({&req});
}

}  // namespace

Status allreduce_recursive_doubling(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const std::size_t bytes = a.count * dtype_size(a.dtype);
  if (n == 1 || a.count == 0) {
    if (a.send != a.recv) std::memcpy(a.recv, a.send, bytes);
    return Status::ok();
  }
  if (accumulates_in_float32(a.dtype, a.op)) {
    return allreduce_in_float32(env, a, allreduce_recursive_doubling);
  }
  Fold f(n, env.group.me);
  KILN_RETURN_IF_ERROR(fold_in(env, a, f, bytes));
  if (f.vr >= 0) {
    void* incoming = env.scratch->get(bytes);
    for (int mask = 1; mask < f.p; mask <<= 1) {
      auto& peer = env.group.pair(f.real(f.vr ^ mask));
      transport::Request sr, rr;
      // Into scratch, not in place: recv is still being sent from.
      peer.post_send(a.recv, bytes, &sr);
      peer.post_recv(incoming, bytes, &rr);
      KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
      reduce(a.dtype, a.op, a.recv, a.recv, incoming, a.count);
    }
    if (a.op == ReduceOp::kAvg) finish_avg(a.dtype, a.recv, a.count, n);
  }
  return fold_out(env, a, f, bytes);
}

Status allreduce_halving_doubling(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const std::size_t es = dtype_size(a.dtype);
  const std::size_t bytes = a.count * es;
  if (n == 1 || a.count == 0) {
    if (a.send != a.recv) std::memcpy(a.recv, a.send, bytes);
    return Status::ok();
  }
  if (accumulates_in_float32(a.dtype, a.op)) {
    return allreduce_in_float32(env, a, allreduce_halving_doubling);
  }
  Fold f(n, env.group.me);
  // Out of place without a copy: the first halving step reads this rank's
  // input where it is (send, or recv for a rank that folded a neighbour in)
  // and folds into recv; later steps work in recv.
  const bool folded = env.group.me < 2 * f.rem;
  if (folded) KILN_RETURN_IF_ERROR(fold_in(env, a, f, bytes));
  if (f.vr >= 0) {
    auto* buf = static_cast<char*>(a.recv);
    const char* first_src = folded ? buf : static_cast<const char*>(a.send);
    Reducer reducer{a.dtype, a.op};
    struct Window {
      std::size_t lo, hi;  // element range
    };
    std::vector<Window> before;  // the window before each halving step
    Window w{0, a.count};
    // Recursive halving: keep one half, fold the partner's copy of it in.
    for (int mask = f.p / 2; mask >= 1; mask >>= 1) {
      auto& peer = env.group.pair(f.real(f.vr ^ mask));
      std::size_t mid = w.lo + (w.hi - w.lo) / 2;
      bool lower = (f.vr & mask) == 0;
      Window keep = lower ? Window{w.lo, mid} : Window{mid, w.hi};
      Window give = lower ? Window{mid, w.hi} : Window{w.lo, mid};
      const char* src = before.empty() ? first_src : buf;
      // The last halving step completes this rank's window: an average
      // divides it there (Note [Averaging in the last reduction], reduce.h).
      Reducer step = reducer;
      if (mask == 1 && a.op == ReduceOp::kAvg) step.then_divide_by = n;
      transport::Request sr, rr;
      peer.post_send(src + give.lo * es, (give.hi - give.lo) * es, &sr);
      peer.post_recv_reduce(buf + keep.lo * es, src + keep.lo * es, (keep.hi - keep.lo) * es,
                            step, &rr);
      KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
      before.push_back(w);
      w = keep;
    }
    // Recursive doubling: exchange windows back until everyone has it all.
    for (int mask = 1; mask < f.p; mask <<= 1) {
      auto& peer = env.group.pair(f.real(f.vr ^ mask));
      Window whole = before.back();
      before.pop_back();
      Window other = (w.lo == whole.lo) ? Window{w.hi, whole.hi} : Window{whole.lo, w.lo};
      transport::Request sr, rr;
      peer.post_send(buf + w.lo * es, (w.hi - w.lo) * es, &sr);
      peer.post_recv(buf + other.lo * es, (other.hi - other.lo) * es, &rr);
      KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
      w = whole;
    }
  }
  return fold_out(env, a, f, bytes);
}

}  // namespace kiln::comm::algo
