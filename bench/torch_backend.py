# kiln vs gloo as torch.distributed backends, in the same run (one process
# group of each; bench/torch_backend.sh launches it).
#   --mode local: allreduce latency at 4 KiB and bus bandwidth from 64 KiB
#                 to 256 MiB (float32 sum);
#   --mode ddp:   PyTorch DDP step time on the MLP of bench/ddp_overlap.sh,
#                 and the bytes each step puts on the link per direction
#                 (the veth's counters in this rank's namespace, headers
#                 and ACKs included) beside the gradient bytes;
#                 with --timeline, also each gradient bucket's allreduce
#                 (issued, done, seconds into the step) for one step per
#                 backend, recorded by a comm hook on a separate model.
# Each figure is measured RUNS times per backend, interleaved; rank 0 prints
# one JSON line per figure: median and range over the runs, and kiln's
# speed-up over gloo.
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta


def sample_link(dev):
    """--sample-link DEV: (perf_counter, tx_bytes, rx_bytes) of DEV every
    millisecond until SIGTERM, then the samples as JSON on stdout."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    base = f"/sys/class/net/{dev}/statistics/"
    out = []
    while not stop:
        with open(base + "tx_bytes") as t, open(base + "rx_bytes") as r:
            out.append((time.perf_counter(), int(t.read()), int(r.read())))
        time.sleep(0.001)
    json.dump(out, sys.stdout)


if __name__ == "__main__" and sys.argv[1:2] == ["--sample-link"]:
    sample_link(sys.argv[2])
    sys.exit(0)

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import kiln_torch  # noqa: F401

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["local", "ddp"], required=True)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--width", type=int, default=4096)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--max-bytes", type=int, default=256 << 20)
p.add_argument("--timeline", action="store_true")
p.add_argument("--timeline-steps", type=int, default=3)
p.add_argument("--trace", help="with --timeline: write every sample here (JSON)")
p.add_argument("--link-bytes-per-s", type=float, default=125e6,
               help="ddp: the tbf rate (bench/torch_backend.sh passes --rate's)")
p.add_argument("--duplex", action="store_true",
               help="ddp: also time kiln with KILN_TORCH_DUPLEX=1 (one connection per "
                    "direction), as backend kiln_duplex")
args = p.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=600))
rank, world = dist.get_rank(), dist.get_world_size()
groups = {"kiln": dist.new_group(backend="kiln", timeout=timedelta(seconds=600)),
          "gloo": dist.group.WORLD}
BACKENDS = ("kiln", "gloo")
if args.duplex and args.mode == "ddp":
    os.environ["KILN_TORCH_DUPLEX"] = "1"  # read when the group forms
    groups["kiln_duplex"] = dist.new_group(backend="kiln", timeout=timedelta(seconds=600))
    del os.environ["KILN_TORCH_DUPLEX"]
    BACKENDS = ("kiln", "kiln_duplex", "gloo")


def tcp_congestion_counts():
    """{algorithm: number of this process's connected TCP sockets using it}."""
    import socket
    counts = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with s:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            try:
                s.getpeername()  # connected ones only, not listeners
            except OSError:
                continue
            algo = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
            algo = algo.rstrip(b"\0").decode()
            counts[algo] = counts.get(algo, 0) + 1
    return counts


def emit(what, values):
    if rank != 0:
        return
    line = {"what": what}
    for b, v in values.items():
        line[b] = {"median": statistics.median(v), "min": min(v), "max": max(v),
                   "runs": [round(x, 4) for x in v]}
    line["kiln_speedup"] = statistics.median(values["gloo"]) / statistics.median(values["kiln"])
    for b in values:
        if b not in ("kiln", "gloo"):
            line[f"{b}_speedup"] = statistics.median(values["gloo"]) / statistics.median(values[b])
    print(json.dumps(line), flush=True)


# Payload bytes per second of the tbf link: tbf counts each 1448-byte TCP
# segment (timestamps on) as 1514 bytes on the wire.
LINK_PAYLOAD_BPS = args.link_bytes_per_s * 1448 / 1514


def link_summary(window, total, line_Bps=125e6):
    """Link activity over one step from (seconds into the step, tx, rx)
    samples: bytes each way, when the first and last byte went, and how long
    each direction sat idle (a sample interval carrying < 10% of the line
    rate) between them."""
    out = {}
    for k, name in ((1, "tx"), (2, "rx")):
        base = window[0][k]
        moving = [(window[i - 1][0], window[i][0]) for i in range(1, len(window))
                  if window[i][k] - window[i - 1][k] > 0.1 * line_Bps * (window[i][0] - window[i - 1][0])]
        if not moving:
            continue
        first, last = moving[0][0], moving[-1][1]
        busy = sum(b - a for a, b in moving)
        out[name] = {"MB": (window[-1][k] - base) / 1e6, "first_s": first, "last_s": last,
                     "idle_between_s": (last - first) - busy}
    return out


def time_allreduce(t, group, iters):
    for _ in range(max(1, iters // 10)):  # warm-up
        dist.all_reduce(t, group=group)
    dist.barrier(group=groups["gloo"])
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(t, group=group)
    return (time.perf_counter() - start) / iters


if args.mode == "local":
    t = torch.ones(1024)  # 4 KiB
    lat = {"kiln": [], "gloo": []}
    for _ in range(args.runs):
        for b in ("kiln", "gloo"):
            lat[b].append(time_allreduce(t, groups[b], 2000 if b == "kiln" else 200) * 1e6)
    emit("allreduce_latency_us_4KiB", lat)
    size = 64 << 10
    while size <= args.max_bytes:
        t = torch.ones(size // 4)
        iters = max(3, min(200, (256 << 20) // size))
        bw = {"kiln": [], "gloo": []}
        for _ in range(args.runs):
            for b in ("kiln", "gloo"):
                s = time_allreduce(t, groups[b], iters)
                bw[b].append(2 * (world - 1) / world * size / s / 1e9)  # bus bandwidth, GB/s
        if rank == 0:  # for bandwidth the speed-up is kiln/gloo
            print(json.dumps({"what": f"allreduce_busbw_GBps_{size >> 10}KiB",
                              **{b: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                                 for b, v in bw.items()},
                              "kiln_speedup": statistics.median(bw["kiln"]) /
                              statistics.median(bw["gloo"])}), flush=True)
        size *= 4
else:
    def mlp():
        torch.manual_seed(1234)
        dims = [1024] + [args.width] * (args.layers + 1) + [1024]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i + 2 < len(dims):
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    models = {b: DDP(mlp(), process_group=groups[b]) for b in BACKENDS}
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 1024, generator=g)
    y = torch.randn(args.batch, 1024, generator=g)

    def link_bytes():
        # (sent, received) on the link device (GLOO_SOCKET_IFNAME, set by
        # bench/ddp_overlap.sh); /proc/net/dev is this namespace's.
        dev = os.environ.get("GLOO_SOCKET_IFNAME")
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, counters = line.partition(":")
                if name.strip() == dev:
                    fields = counters.split()
                    return int(fields[8]), int(fields[0])
        return None

    wire = {b: [] for b in BACKENDS}

    def steps(model, n, backend=None):
        dist.barrier(group=groups["gloo"])
        before = link_bytes()
        start = time.perf_counter()
        for _ in range(n):
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        # Until both ranks are done: a rank's allreduce may end while its own
        # last bytes are still on their way to the peer.
        dist.barrier(group=groups["gloo"])
        took = (time.perf_counter() - start) / n
        after = link_bytes()
        if backend and before and after:  # the barrier's few bytes are noise
            wire[backend].append([(a - b) / n for a, b in zip(after, before)])
        return took

    for b in BACKENDS:
        steps(models[b], 1)  # warm-up: DDP rebuilds its buckets after step 1
    step = {b: [] for b in BACKENDS}
    for i in range(args.runs):  # each run starts with the next backend: no order bias
        for b in BACKENDS[i % len(BACKENDS):] + BACKENDS[:i % len(BACKENDS)]:
            step[b].append(steps(models[b], args.steps, b))
    emit("ddp_step_s", step)
    if rank == 0 and wire["kiln"]:
        # A ring allreduce of N bytes on n ranks sends 2(n-1)/n * N per rank.
        grad = sum(p.numel() * p.element_size() for p in models["kiln"].parameters())
        line = {"what": "ddp_link_MB_per_step", "gradient_MB": grad / 1e6,
                "ring_minimum_MB_per_direction": 2 * (world - 1) / world * grad / 1e6}
        for b, v in wire.items():
            line[b] = {"sent_MB": statistics.median(s for s, _ in v) / 1e6,
                       "received_MB": statistics.median(r for _, r in v) / 1e6}
        print(json.dumps(line), flush=True)

    if rank == 0:
        # Which congestion control each of this process's TCP connections
        # ran under (bench/torch_backend.sh --congestion): a comparison of
        # the backends means something only when this says what it was.
        print(json.dumps({"what": "ddp_tcp_congestion", **tcp_congestion_counts()}), flush=True)

    if args.timeline:
        # Where the step's time goes: a bucket's allreduce can start only
        # once backward has produced its gradients, and each direction of
        # the link carries one ring's worth of bytes at its rate, so the
        # step cannot end before the link has carried what remains after
        # the last idle stretch. Per recorded step: each bucket's allreduce
        # (issued, done), and the link's bytes per direction sampled every
        # millisecond (this namespace's veth, after tbf) by a separate
        # process; "none" is the same step with no communication at all
        # (a hook that returns at once): backward's own pace.
        def recording_hook(group, t0, log):
            def hook(state, bucket):
                buf = bucket.buffer()
                issued = time.perf_counter() - t0[0]
                if group is None:
                    fut = torch.futures.Future()
                    fut.set_result([buf])
                else:
                    fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

                def done(f):
                    log.append({"bucket": bucket.index(),
                                "MB": buf.numel() * buf.element_size() / 1e6,
                                "issued_s": issued, "done_s": time.perf_counter() - t0[0],
                                "issued_at": issued + t0[0]})
                    return f.value()[0].div_(world)
                return fut.then(done)
            return hook

        dev = os.environ.get("GLOO_SOCKET_IFNAME")
        sampler = None
        if rank == 0 and dev:
            sampler = subprocess.Popen([sys.executable, __file__, "--sample-link", dev],
                                       stdout=subprocess.PIPE)
        recorded = []  # (backend, t0, step_s, buckets)
        for b in ("none",) + BACKENDS:
            t0, log = [0.0], []
            model = DDP(mlp(), process_group=groups["gloo" if b == "none" else b])
            model.register_comm_hook(None, recording_hook(groups.get(b), t0, log))
            for i in range(2 + args.timeline_steps):  # warm-up, then the recorded steps
                log.clear()
                dist.barrier(group=groups["gloo"])
                t0[0] = time.perf_counter()
                model.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                total = time.perf_counter() - t0[0]
                dist.barrier(group=groups["gloo"])
                both = time.perf_counter() - t0[0]
                if i >= 2:
                    recorded.append((b, t0[0], total, both,
                                     sorted(log, key=lambda e: e["issued_s"])))
        everyone = [None] * world
        dist.all_gather_object(everyone, recorded, group=groups["gloo"])
        samples = []
        if sampler:
            sampler.send_signal(signal.SIGTERM)
            samples = json.loads(sampler.communicate()[0])
        if rank == 0:
            trace = []
            for k, (b, t0, total, both, buckets) in enumerate(recorded):
                window = [(t - t0, tx, rx) for t, tx, rx in samples if t0 - 0.01 <= t <= t0 + both + 0.01]
                # The link can carry the buckets after the first no sooner
                # than the last rank has the second (rank r's bytes leave
                # when rank r has it), at the link's payload rate.
                second = max(everyone[r][k][4][1]["issued_at"] for r in range(world)) - t0
                rest = sum(e["MB"] for e in buckets[1:]) * 1e6
                line = {"what": "ddp_timeline", "backend": b, "step_s": total,
                        "both_done_s": both, "second_bucket_last_rank_s": second,
                        "floor_s": second + rest / LINK_PAYLOAD_BPS, "buckets": buckets}
                if window:
                    line["link"] = link_summary(window, total)
                print(json.dumps(line), flush=True)
                trace.append({**line, "samples": window})
            if args.trace:
                with open(args.trace, "w") as f:
                    json.dump(trace, f)
for b in BACKENDS:
    if b != "gloo":
        dist.destroy_process_group(groups[b])
dist.destroy_process_group()
