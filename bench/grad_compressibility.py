#!/usr/bin/env python3
"""How many bytes a lossless coder could take off the gradients DDP sends.

Trains the MLP of bench/ddp_pytorch.py (the model of bench/ddp_vs_pytorch.sh
and bench/torch_backend.sh) for a few steps and reads its float32 gradients
the way an allreduce would send them. For each of the 4 byte planes of the
floats (plane 3 holds the sign and 7 exponent bits) it prints the order-0
entropy (what a byte-wise entropy coder can reach) and what Debian's `zstd
-1` reaches, split into planes ("shuffled") and on the plain bytes. Prints
one JSON line. Lossless, so a transport using it would keep every bit of
the result.
  /usr/bin/python3 bench/grad_compressibility.py [--batch 768] [--steps 3] [--dump FILE]
--dump writes the gradients' raw float32 bytes to FILE (the input of
`kiln bench codec --file FILE`).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_pytorch import mlp  # noqa: E402


def entropy_bits(plane):
    counts = np.bincount(plane, minlength=256).astype(np.float64)
    p = counts[counts > 0] / plane.size
    return float(-(p * np.log2(p)).sum())


def zstd_size(data):
    out = subprocess.run(["zstd", "-1", "-c", "-q"], input=data, capture_output=True, check=True)
    return len(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dump", help="write the raw float32 gradients here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mlp(2048, 2048, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(a.batch, 2048), torch.randn(a.batch, 2048)
    for _ in range(a.steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
    if a.dump:
        grads.tofile(a.dump)
    planes = grads.view(np.uint8).reshape(-1, 4)
    t0 = time.perf_counter()
    zstd_planes = [zstd_size(np.ascontiguousarray(planes[:, k]).tobytes()) for k in range(4)]
    zstd_s = time.perf_counter() - t0
    entropy = [entropy_bits(np.ascontiguousarray(planes[:, k])) for k in range(4)]
    n = grads.nbytes
    print(json.dumps({
        "bytes": n,
        "plane_entropy_bits": [round(e, 3) for e in entropy],
        "entropy_fraction": round(sum(entropy) / 32, 4),
        "zstd1_plane_fraction": [round(z / (n / 4), 4) for z in zstd_planes],
        "zstd1_shuffled_fraction": round(sum(zstd_planes) / n, 4),
        "zstd1_plain_fraction": round(zstd_size(grads.tobytes()) / n, 4),
        "zstd1_shuffled_s": round(zstd_s, 3),
    }))


if __name__ == "__main__":
    main()
