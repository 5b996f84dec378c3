#!/usr/bin/env python3
"""PyTorch's side of bench/ddp_vs_pytorch.sh: one rank of torch DDP (gloo).

Trains the same MLP as `kiln bench ddp --io 2048 --width 2048 --layers 3`
(five Linear(2048, 2048) with ReLU between, mse loss against random targets,
one torch thread) and times a step the way kiln's bench does: zero_grad,
forward, loss, backward (which for DDP includes waiting for the gradient
allreduce). Modes:
  ddp        torch.nn.parallel.DistributedDataParallel, --bucket-mb buckets
  floor      the same step with no communication at all (the compute floor)
  allreduce  one dist.all_reduce of a flat buffer the size of all gradients
Rank 0 prints one JSON line. Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
(and GLOO_SOCKET_IFNAME) like torchrun.
"""
import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def mlp(io, width, layers):
    dims = [io] + [width] * (layers + 1) + [io]
    mods = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i + 2 < len(dims):
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["ddp", "floor", "allreduce"], default="ddp")
    ap.add_argument("--bucket-mb", type=float, default=25)
    ap.add_argument("--io", type=int, default=2048)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = mlp(a.io, a.width, a.layers)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(a.batch, a.io)
    y = torch.randn(a.batch, a.io)

    times, backward = [], []
    if a.mode == "allreduce":
        flat = torch.ones(params)
        for s in range(a.warmup + a.steps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(flat)
            if s >= a.warmup:
                times.append(time.perf_counter() - t0)
    else:
        net = model
        if a.mode == "ddp":
            # gradient_as_bucket_view: no copy in or out of the buckets, as kiln::ddp.
            net = nn.parallel.DistributedDataParallel(
                model, bucket_cap_mb=a.bucket_mb, gradient_as_bucket_view=True)
        for s in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            net.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if s >= a.warmup:
                times.append(t2 - t0)
                backward.append(t2 - t1)
    # Every rank's median, so the slowest rank is what is reported.
    med = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({
            "system": "pytorch", "torch": torch.__version__, "mode": a.mode,
            "bucket_mb": a.bucket_mb if a.mode == "ddp" else None,
            "parameters": params, "batch_per_rank": a.batch,
            "step_s": med.item(),
            "backward_s": statistics.median(backward) if backward else None,
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
