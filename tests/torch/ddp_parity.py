# PyTorch's own DistributedDataParallel trains the MLP of bench/ddp_overlap.sh
# (1024 -> width -> ... -> 1024, ReLU) for STEPS steps of SGD on each rank's
# own batches, once over the kiln backend and once over gloo, in the same
# run; the parameters must end the same (max relative difference <= 1e-6).
# Usage: python3 ddp_parity.py [--width 256] [--layers 2] [--steps 5]
#        [--default kiln|gloo]: the backend init_process_group gets (the
#        other one is a new_group); under torchrun, kiln run or kiln launch.
import argparse
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import kiln_torch  # noqa: F401  registers "kiln"

p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=256)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--default", default="kiln", choices=["kiln", "gloo"])
args = p.parse_args()

torch.set_num_threads(1)
dist.init_process_group(args.default, timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
other = dist.new_group(backend="gloo" if args.default == "kiln" else "kiln",
                       timeout=timedelta(seconds=60))
groups = {args.default: dist.group.WORLD, dist.get_backend(other): other}


def mlp():
    torch.manual_seed(1234)  # every rank and both runs start alike
    dims = [1024] + [args.width] * (args.layers + 1) + [1024]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i + 2 < len(dims):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def train(backend):
    model = DDP(mlp(), process_group=groups[backend], bucket_cap_mb=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    for _ in range(args.steps):
        x = torch.randn(args.batch, 1024, generator=g)
        y = torch.randn(args.batch, 1024, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


kiln_params, gloo_params = train("kiln"), train("gloo")
worst = 0.0
for a, b in zip(kiln_params, gloo_params):
    worst = max(worst, ((a - b).abs() / (b.abs() + 1e-12)).max().item())
# Every rank must hold the same parameters too.
digest = torch.tensor([sum(p.double().sum().item() for p in kiln_params)], dtype=torch.float64)
digests = [torch.zeros_like(digest) for _ in range(world)]
dist.all_gather(digests, digest, group=groups["gloo"])
if any(d.item() != digest.item() for d in digests):
    sys.exit(f"rank {rank}: ranks disagree on the parameters: {[d.item() for d in digests]}")
if worst > 1e-6:
    sys.exit(f"rank {rank}: kiln and gloo parameters differ by {worst:.3g} (relative) after "
             f"{args.steps} steps")
print(f"ddp-parity ok rank={rank} world={world} steps={args.steps} "
      f"max_rel_diff={worst:.3g} digest={digest.item():.10g}", flush=True)
dist.destroy_process_group(other)
dist.destroy_process_group()
