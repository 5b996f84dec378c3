# Every operation of the kiln backend, for every dtype, against the gloo
# backend's result in the same run (run under `kiln launch -n N`). Where
# gloo has no such operation or dtype (reduce_scatter, list alltoall,
# _allgather_base, AVG, bfloat16) the reference is gloo's allreduce or
# allgather of the same data, or the float32 result rounded.
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import kiln_torch  # noqa: F401  registers "kiln"

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
kiln = dist.new_group(backend="kiln", timeout=timedelta(seconds=60))
gloo = dist.group.WORLD
assert dist.get_backend(kiln) == "kiln", dist.get_backend(kiln)
# Two ranks over TCP take the duplex path for large allreduces (below) when asked.
if world == 2 and os.environ.get("KILN_TRANSPORT") == "tcp" and \
        os.environ.get("KILN_TORCH_DUPLEX") == "1":
    assert "one stream per direction" in kiln.describe(), kiln.describe()

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64,
          torch.uint8]
COUNTS = [1, 1001, 65537]
OPS = {"sum": dist.ReduceOp.SUM, "avg": dist.ReduceOp.AVG, "product": dist.ReduceOp.PRODUCT,
       "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
cases = 0


def data(seed, count, dtype, r=None):
    """Rank r's input: small integers (sums and products stay in range), or normals."""
    g = torch.Generator().manual_seed(seed * 131 + (rank if r is None else r))
    if dtype.is_floating_point:
        return torch.randn(count, generator=g, dtype=torch.float64).to(dtype)
    return torch.randint(1, 6, (count,), generator=g, dtype=torch.int64).to(dtype)


def tolerance(dtype):
    return {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3,
            torch.bfloat16: 1e-2}.get(dtype, 0)


def check(name, got, want):
    global cases
    cases += 1
    if got.dtype != want.dtype or got.shape != want.shape:
        sys.exit(f"rank {rank}: {name}: got {got.dtype} {tuple(got.shape)}, "
                 f"want {want.dtype} {tuple(want.shape)}")
    tol = tolerance(got.dtype)
    a, b = got.double(), want.double()
    bad = (a - b).abs() > tol * (1 + b.abs())
    if bad.any():
        i = int(bad.nonzero()[0])
        sys.exit(f"rank {rank}: {name}: element {i} is {a[i].item()}, gloo says {b[i].item()} "
                 f"({int(bad.sum())} of {got.numel()} differ)")


def gloo_dtype(dtype):
    # gloo reduces no bfloat16: its reference is the float32 result, rounded.
    return torch.float32 if dtype == torch.bfloat16 else dtype


def reference_allreduce(x, op_name):
    ref = x.to(gloo_dtype(x.dtype)).clone()  # .to() of the same dtype is x itself
    if op_name == "avg":
        dist.all_reduce(ref, op=dist.ReduceOp.SUM, group=gloo)
        ref = ref / world if ref.is_floating_point() else torch.div(ref, world, rounding_mode="floor")
    else:
        dist.all_reduce(ref, op=OPS[op_name], group=gloo)
    return ref.to(x.dtype)


for di, dtype in enumerate(DTYPES):
    for count in COUNTS:
        tag = f"{str(dtype).split('.')[-1]} x {count}"
        for oi, (op_name, op) in enumerate(OPS.items()):
            x = data(di * 100 + oi, count, dtype)
            ref = reference_allreduce(x, op_name)
            got = x.clone()
            dist.all_reduce(got, op=op, group=kiln)
            check(f"allreduce {op_name} {tag}", got, ref)
            # Asynchronous, through the Work's future (DDP's path).
            got = x.clone()
            work = dist.all_reduce(got, op=op, group=kiln, async_op=True)
            fut_result = work.get_future().wait()[0]
            check(f"allreduce {op_name} async future {tag}", fut_result, ref)

        # reduce: the root gets the sum, the others keep their input.
        x = data(di * 100 + 10, count, dtype)
        ref = reference_allreduce(x, "sum")
        for root in range(world):
            got = x.clone()
            dist.reduce(got, dst=root, group=kiln)
            check(f"reduce root {root} {tag}", got, ref if rank == root else x)

        # broadcast from every root.
        for root in range(world):
            got = data(di * 100 + 11, count, dtype)
            want = data(di * 100 + 11, count, dtype, r=root)
            dist.broadcast(got, src=root, group=kiln)
            check(f"broadcast root {root} {tag}", got, want)

        # allgather (list) and all_gather_into_tensor (_allgather_base).
        x = data(di * 100 + 12, count, dtype)
        if dtype == torch.bfloat16:  # gloo gathers no bfloat16: the inputs are known
            ref = [data(di * 100 + 12, count, dtype, r=r) for r in range(world)]
        else:
            ref = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(ref, x, group=gloo)
        got = [torch.zeros_like(x) for _ in range(world)]
        dist.all_gather(got, x, group=kiln)
        for r in range(world):
            check(f"allgather from rank {r} {tag}", got[r], ref[r])
        flat = torch.zeros(world * count, dtype=dtype)
        dist.all_gather_into_tensor(flat, x, group=kiln)
        check(f"all_gather_into_tensor {tag}", flat, torch.cat(ref))

        # reduce_scatter (list) and reduce_scatter_tensor (_reduce_scatter_base).
        full = data(di * 100 + 13, world * count, dtype)
        ref = reference_allreduce(full, "sum")[rank * count:(rank + 1) * count]
        got = torch.zeros(count, dtype=dtype)
        dist.reduce_scatter(got, list(full.chunk(world)), group=kiln)
        check(f"reduce_scatter {tag}", got, ref)
        got = torch.zeros(count, dtype=dtype)
        dist.reduce_scatter_tensor(got, full, group=kiln)
        check(f"reduce_scatter_tensor {tag}", got, ref)

        # allreduce_coalesced: three tensors of different shapes.
        parts = [data(di * 100 + 14 + i, count + i, dtype) for i in range(3)]
        refs = [reference_allreduce(p, "sum") for p in parts]
        got = [p.clone() for p in parts]
        dist.all_reduce_coalesced(got, group=kiln)
        for i in range(3):
            check(f"allreduce_coalesced part {i} {tag}", got[i], refs[i])

        # alltoall_base (all_to_all_single), even and uneven splits.
        x = data(di * 100 + 20, world * count, dtype)
        got = torch.zeros_like(x)
        dist.all_to_all_single(got, x, group=kiln)
        if dtype != torch.bfloat16:
            ref = torch.zeros_like(x)
            dist.all_to_all_single(ref, x, group=gloo)
        else:
            ref = torch.cat([data(di * 100 + 20, world * count, dtype, r=r).chunk(world)[rank]
                             for r in range(world)])
        check(f"all_to_all_single {tag}", got, ref)
        # Rank r sends (r + d) % 3 + 1 rows of `count` to rank d.
        rows = lambda src, dst: (src + dst) % 3 + 1  # noqa: E731
        x2 = data(di * 100 + 21, sum(rows(rank, d) for d in range(world)) * count, dtype)
        x2 = x2.view(-1, count)
        in_splits = [rows(rank, d) for d in range(world)]
        out_splits = [rows(s, rank) for s in range(world)]
        got = torch.zeros(sum(out_splits), count, dtype=dtype)
        dist.all_to_all_single(got, x2, out_splits, in_splits, group=kiln)
        pieces = []
        for s in range(world):
            xs = data(di * 100 + 21, sum(rows(s, d) for d in range(world)) * count, dtype, r=s)
            xs = xs.view(-1, count)
            start = sum(rows(s, d) for d in range(rank))
            pieces.append(xs[start:start + rows(s, rank)])
        check(f"all_to_all_single uneven {tag}", got, torch.cat(pieces))

        # all_to_all (lists of tensors of different sizes).
        ins = [data(di * 100 + 22 + d, rows(rank, d) * count, dtype) for d in range(world)]
        outs = [torch.zeros(rows(s, rank) * count, dtype=dtype) for s in range(world)]
        dist.all_to_all(outs, ins, group=kiln)
        for s in range(world):
            check(f"all_to_all from rank {s} {tag}", outs[s],
                  data(di * 100 + 22 + rank, rows(s, rank) * count, dtype, r=s))

        # send/recv around the ring (even ranks send first).
        x = data(di * 100 + 30, count, dtype)
        got = torch.zeros_like(x)
        to, frm = (rank + 1) % world, (rank - 1) % world
        if world > 1:
            if rank % 2 == 0:
                dist.send(x, to, group=kiln)
                dist.recv(got, frm, group=kiln)
            else:
                dist.recv(got, frm, group=kiln)
                dist.send(x, to, group=kiln)
            check(f"send/recv {tag}", got, data(di * 100 + 30, count, dtype, r=frm))

# Allreduce of a few MiB: on two ranks over TCP, the duplex path
# (python/kiln_torch/duplex.h), in chunks of 4 MiB and a partial one.
LARGE = 2_500_001
for di, dtype in enumerate(DTYPES):
    for oi, (op_name, op) in enumerate(OPS.items()):
        x = data(di * 100 + 40 + oi, LARGE, dtype)
        ref = reference_allreduce(x, op_name)
        got = x.clone()
        dist.all_reduce(got, op=op, group=kiln, async_op=True).wait()
        check(f"allreduce {op_name} {str(dtype).split('.')[-1]} x {LARGE}", got, ref)

# Non-contiguous tensors are staged and copied back.
x = torch.arange(24, dtype=torch.float32).view(4, 6).t()
ref = x.contiguous().clone()
dist.all_reduce(ref, group=gloo)
dist.all_reduce(x, group=kiln)
check("allreduce non-contiguous", x.contiguous(), ref)

dist.barrier(group=kiln)
# Unsupported dtypes and ops fail at the call, naming them.
for bad, what in [(lambda: dist.all_reduce(torch.ones(3, dtype=torch.int8), group=kiln), "Char"),
                  (lambda: dist.all_reduce(torch.ones(3), op=dist.ReduceOp.BAND, group=kiln),
                   "reduce op")]:
    try:
        bad()
        sys.exit(f"rank {rank}: expected an error naming {what}")
    except RuntimeError as e:
        if what not in str(e):
            sys.exit(f"rank {rank}: error {e!r} does not name {what}")
dist.barrier(group=kiln)
print(f"backend-ops ok rank={rank} world={world} cases={cases}", flush=True)
dist.destroy_process_group(kiln)
dist.destroy_process_group()
