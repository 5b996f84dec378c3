#!/usr/bin/env python3
"""One rank alone on the host (the 1x1x1 layout of examples/train/gpt_3d.toml): where its
threads run, A/B'd in one hold (docs/plan.md "Session 13", issue 18).

Each variant is a `kiln launch -n 1 -- kiln train CONFIG --tp 1 --pp 1 --max-steps STEPS` run;
the variants alternate, the order rotated every round, so a drift of the host's speed spreads
over all of them. Per run: the median of rank 0's `step_s` after WARMUP steps, and the job's
CPU seconds per wall second (1.0: the rank ran on one core at a time).

  bound-2:     the launcher's default of session 12: the lone rank bound to one core, and
               kiln train's default thread count (cores / local ranks = 2) for LibTorch and
               OpenBLAS: two intra-op threads taking turns on that one core
  bound-1:     bound to one core, one thread (`[train] threads = 1`)
  free-2:      `kiln launch --bind none`: two threads on the host's two cores
  free-2-passive: free-2 with OMP_WAIT_POLICY=passive (LibTorch's OpenMP workers sleep at once
               at the end of a parallel region instead of spinning)
  default:     whatever the binary's own defaults are (the launcher's binding, kiln train's
               thread count): the binary after a change
  keep-memory: default with glibc's malloc keeping what is freed (GLIBC_TUNABLES: no mmap
               below 32 MiB, no trimming below 4 GiB), so a step's activations reuse the last
               step's pages instead of faulting fresh ones in
  blas-spin-N: default with OPENBLAS_THREAD_TIMEOUT=N: OpenBLAS's idle worker spins (yields)
               for 2^N cycles after a GEMM before it sleeps (OpenBLAS's own default: 2^28,
               ~0.1 s here; N is clamped to 4..30), e.g. blas-spin-4 (sleeps at once)

  /work/bin/cpu-lock timed bench/lone_rank_threads.py --kiln build-rel/kiln --rounds 3 --out DIR
      [--variants bound-2,bound-1,free-2,free-2-passive]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["bound-2", "bound-1", "free-2", "free-2-passive"]
KEEP_MEMORY = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"


def log(msg):
    print(f"lone_rank_threads [{time.strftime('%H:%M:%S', time.gmtime())}]: {msg}",
          file=sys.stderr, flush=True)


def one_thread_config(config, out):
    """The config with `[train] threads = 1` added."""
    text = open(config).read()
    if "\n[train]\n" not in text:
        raise SystemExit(f"lone_rank_threads: no [train] section in {config}")
    path = os.path.join(out, "one-thread.toml")
    with open(path, "w") as f:
        f.write(text.replace("\n[train]\n", "\n[train]\nthreads = 1\n", 1))
    return path


def run(a, variant, tag, one_thread_cfg):
    metrics = os.path.join(a.out, f"{variant}-{tag}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    launch = [a.kiln, "launch", "-n", "1"]
    if variant.startswith("free"):
        launch += ["--bind", "none"]
    config = one_thread_cfg if variant == "bound-1" else a.config
    argv = launch + ["--", a.kiln, "train", config, "--tp", "1", "--pp", "1", "--max-steps",
                     str(a.steps), "--no-progress", "--metrics-json", metrics]
    env = dict(os.environ)
    if variant.endswith("passive"):
        env["OMP_WAIT_POLICY"] = "passive"
    if variant == "keep-memory":
        env["GLIBC_TUNABLES"] = KEEP_MEMORY
    if variant.startswith("blas-spin-"):
        env["OPENBLAS_THREAD_TIMEOUT"] = variant.removeprefix("blas-spin-")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.strftime("%H:%M:%S", time.gmtime())
    w0 = time.monotonic()
    with open(os.path.join(a.out, f"{variant}-{tag}.log"), "w") as lf:
        rc = subprocess.run(argv, stdout=lf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            timeout=180).returncode
    wall = time.monotonic() - w0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"lone_rank_threads: {variant} run {tag} exited {rc}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    faults = ru1.ru_minflt - ru0.ru_minflt
    steps = [json.loads(l) for l in open(metrics) if '"step_s"' in l]
    timed = [s["step_s"] for s in steps if s["step"] > a.warmup]
    r = {"variant": variant, "tag": tag, "started_utc": started, "step_s": statistics.median(timed),
         "step_min_s": min(timed), "step_max_s": max(timed), "wall_s": wall, "job_cpu_s": cpu,
         "cpu_per_wall": cpu / wall, "minor_faults": faults,
         "system_cpu_s": ru1.ru_stime - ru0.ru_stime}
    log(f"{variant} run {tag}: step {r['step_s']:.3f} s ({r['step_min_s']:.3f}-"
        f"{r['step_max_s']:.3f}), job {wall:.1f} s wall, {cpu:.1f} s CPU ({cpu / wall:.2f} per s), "
        f"{faults} minor faults, {r['system_cpu_s']:.1f} s system CPU")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build-rel", "kiln"))
    ap.add_argument("--config", default=os.path.join(ROOT, "examples", "train", "gpt_3d.toml"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    a.out, a.kiln, a.config = (os.path.abspath(x) for x in (a.out, a.kiln, a.config))
    os.makedirs(a.out, exist_ok=True)
    variants = a.variants.split(",")
    for v in variants:
        if v not in VARIANTS + ["default", "keep-memory"] and not (
                v.startswith("blas-spin-") and v.removeprefix("blas-spin-").isdigit()):
            ap.error(f"unknown variant {v}")
    one_thread_cfg = one_thread_config(a.config, a.out)
    runs = []
    for r in range(a.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            runs.append(run(a, v, str(r + 1), one_thread_cfg))
    lines = ["| variant | step s: median of runs (range) | runs s | job CPU per wall s "
             "| minor faults per run | system CPU s per run |", "|---|---|---|---|---|---|"]
    for v in variants:
        mine = [x for x in runs if x["variant"] == v]
        s = [x["step_s"] for x in mine]
        lines.append(f"| {v} | {statistics.median(s):.3f} ({min(s):.3f}–{max(s):.3f}) "
                     f"| {', '.join(f'{x:.3f}' for x in s)} "
                     f"| {statistics.median(x['cpu_per_wall'] for x in mine):.2f} "
                     f"| {statistics.median(x['minor_faults'] for x in mine):.0f} "
                     f"| {statistics.median(x['system_cpu_s'] for x in mine):.1f} |")
    with open(os.path.join(a.out, "lone_rank_threads.json"), "w") as f:
        json.dump({"args": vars(a), "runs": runs}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
