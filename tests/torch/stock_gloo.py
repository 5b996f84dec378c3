# An ordinary PyTorch script, nothing Kiln-specific: env:// rendezvous and
# the gloo backend, as users run it under torchrun. tests/torch/launchers.sh
# runs it under `kiln launch` and `kiln run`.
#
# KILL_RANK=R: rank R kills itself (SIGKILL) after the first allreduce of
# the first attempt (TORCHELASTIC_RESTART_COUNT=0), so `kiln run` restarts
# the group.
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_VARS = [
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
]
missing = [v for v in TORCHRUN_VARS if v not in os.environ]
if missing:
    sys.exit(f"torchrun variables missing: {missing}")

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
if rank != int(os.environ["RANK"]) or world != int(os.environ["WORLD_SIZE"]):
    sys.exit(f"process group says rank {rank}/{world}, environment says "
             f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}")

t = torch.full((1024,), float(rank + 1))
dist.all_reduce(t)
expected = world * (world + 1) / 2
if not torch.all(t == expected):
    sys.exit(f"allreduce gave {t[:4].tolist()}, expected {expected}")

attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if os.environ.get("KILL_RANK") == str(rank) and attempt == 0:
    print(f"rank {rank}: killing myself on attempt 0", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

dist.barrier()
print(f"stock-gloo ok rank={rank} world={world} attempt={attempt} "
      f"run_id={os.environ['TORCHELASTIC_RUN_ID']} "
      f"max_restarts={os.environ['TORCHELASTIC_MAX_RESTARTS']}", flush=True)
dist.destroy_process_group()
