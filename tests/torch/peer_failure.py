# A dead or stopped peer under the kiln backend: the survivors' collectives
# raise within the timeout given to init_process_group, naming the peer;
# they never hang. FAULT=kill: the last rank SIGKILLs itself mid-training;
# FAULT=stop: it SIGSTOPs itself (alive, silent). Survivors print
# "peer-failure raised after S s: MESSAGE" and exit 3, a failure, so that
# `kiln launch` kills the stopped rank after its --grace.
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import kiln_torch  # noqa: F401

TIMEOUT_S = float(os.environ.get("TIMEOUT_S", "5"))
fault = os.environ["FAULT"]
dist.init_process_group("kiln", timeout=timedelta(seconds=TIMEOUT_S))
rank, world = dist.get_rank(), dist.get_world_size()
victim = world - 1
t = torch.ones(4096)
for step in range(20):
    dist.all_reduce(t)
t.fill_(1)
dist.barrier()
if rank == victim:
    print(f"rank {rank}: {fault} myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    time.sleep(600)  # stopped: the launcher kills it
start = time.monotonic()
try:
    for step in range(1000000):
        dist.all_reduce(t)
        if time.monotonic() - start > 10 * TIMEOUT_S:
            break
except RuntimeError as e:
    elapsed = time.monotonic() - start
    msg = str(e).splitlines()[0]
    print(f"peer-failure raised after {elapsed:.2f} s: {msg}", flush=True)
    os._exit(3)  # the group is broken: skip its orderly teardown
sys.exit(f"rank {rank}: no error {10 * TIMEOUT_S:.0f} s after rank {victim} was {fault}ed")
