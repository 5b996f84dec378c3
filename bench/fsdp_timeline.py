#!/usr/bin/env python3
"""Where the overlapped ZeRO-3 step's exposed time goes, from the timelines
`kiln bench fsdp --trace PATH` writes (PATH.rank<r>.jsonl, one event a line).

    python3 bench/fsdp_timeline.py PATH [--rank 0] [--show STEP]

Per timed step: the exposed waits (gathers in forward, gathers in backward,
reductions after backward) and the step boundary's floor. Between the end of
a backward and the forward of the second unit of the next step, the link must
carry what is left of the last reductions, then the first unit's gather, then
the second's; the training thread meanwhile has only the optimizer step and
the first unit's forward to do. Whatever of that link time the CPU work does
not cover is exposed in any schedule that reduces a unit only once its
gradients exist and gathers it only once its shares are stepped:
  floor = (last reduction's end - backward's end) + gather(u0) + gather(u1)
          - (optimizer step + forward of u0)
Per pass, whether the link or the training thread bounds it: the link time
of the collectives each pass needs (forward: its gathers; backward: its
gathers and every reduction, the tail after backward included; one rank's
collectives run one at a time, so these add up) against the training
thread's own work in that pass (its span less its waits; the optimizer step
counts with forward, under whose first gather it runs). A pass whose link
time exceeds its work exposes at least the difference in any schedule,
whatever the prefetch depth or unit size: `link_bound_ms` sums that over
both passes.
--show STEP prints that step's events (ms from its optimizer step's start).
"""
import argparse
import json
import statistics


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def steps_of(events):
    """Splits events into [optimizer step, forward, backward] windows."""
    starts = [e["started"] for e in events if e["what"] == "step"]
    windows = []
    for i, t0 in enumerate(starts):
        t1 = starts[i + 1] if i + 1 < len(starts) else float("inf")
        windows.append([e for e in events if t0 <= key(e) < t1])
    return windows


SPANS = ("gather", "reduce", "wait_gather", "wait_reduce", "step", "backward")


def key(e):
    return e["started"] if e["what"] in SPANS else e["ended"]


def spent(events, what, after=None, before=None, unit=None):
    return sum(e["ended"] - e["started"] for e in events
               if e["what"] == what and (unit is None or e["unit"] == unit)
               and (after is None or e["started"] >= after)
               and (before is None or e["started"] < before))


def analyse(window, previous):
    ms = 1000.0
    fwd = [e for e in window if e["what"] == "forward"]
    bwd = next((e for e in window if e["what"] == "backward"), None)
    step = next(e for e in window if e["what"] == "step")
    if bwd is None or len(fwd) < 2:
        return None
    waits = [e for e in window if e["what"] == "wait_gather"]
    fwd_waits = spent(window, "wait_gather", before=bwd["started"])
    bwd_waits = (spent(window, "wait_gather", after=bwd["started"])
                 + spent(window, "wait_reduce", after=bwd["started"], before=bwd["ended"]))
    fwd_link = spent(window, "gather", before=bwd["started"])
    bwd_link = spent(window, "gather", after=bwd["started"]) + spent(window, "reduce", after=bwd["started"])
    fwd_cpu = (bwd["started"] - step["started"]) - fwd_waits
    bwd_cpu = (bwd["ended"] - bwd["started"]) - bwd_waits
    out = {"forward_link_ms": fwd_link * ms, "forward_cpu_ms": fwd_cpu * ms,
           "backward_link_ms": bwd_link * ms, "backward_cpu_ms": bwd_cpu * ms,
           "link_bound_ms": (max(0.0, fwd_link - fwd_cpu) + max(0.0, bwd_link - bwd_cpu)) * ms,
           "forward_gather_ms": fwd_waits * ms,
           "backward_gather_ms": spent(window, "wait_gather", after=bwd["started"]) * ms,
           "after_backward_ms": spent(window, "wait_reduce", after=bwd["ended"] - 1e-4) * ms}
    if previous is not None:
        pbwd = next((e for e in previous if e["what"] == "backward"), None)
        reds = [e for e in previous if e["what"] == "reduce"]
        u0, u1 = fwd[0]["unit"], fwd[1]["unit"]
        g = {e["unit"]: e for e in window
             if e["what"] == "gather" and e["issued"] < fwd[1]["ended"]}
        w0 = next((e for e in waits if e["unit"] == u0), None)
        if pbwd and reds and u0 in g and u1 in g:
            left = max(0.0, max(e["ended"] for e in reds) - pbwd["ended"])
            link = left + (g[u0]["ended"] - g[u0]["started"]) + (g[u1]["ended"] - g[u1]["started"])
            u0_compute = fwd[1]["ended"] - (w0["ended"] if w0 else fwd[0]["ended"])
            cpu = (step["ended"] - step["started"]) + u0_compute
            wait_u1 = spent(window, "wait_gather", before=bwd["started"], unit=u1)
            wait_u0 = (w0["ended"] - w0["started"]) if w0 else 0.0
            ptail = spent(previous, "wait_reduce", after=pbwd["ended"] - 1e-4)
            out.update({"boundary_exposed_ms": (ptail + wait_u0 + wait_u1) * ms,
                        "boundary_floor_ms": max(0.0, link - cpu) * ms,
                        "boundary_link_ms": link * ms, "boundary_cpu_ms": cpu * ms})
    return out


def show(window):
    t0 = next(e for e in window if e["what"] == "step")["started"]
    for e in sorted(window, key=key):
        issued, began, ended = ((e[k] - t0) * 1000 for k in ("issued", "started", "ended"))
        w = e["what"]
        if w in ("gather", "reduce"):
            print(f"{w:12s} {e['unit']:10s} issued {issued:8.1f} ran {began:8.1f} .. {ended:8.1f}"
                  f" ({ended - began:6.1f})")
        elif w in SPANS:
            print(f"{w:12s} {e['unit']:10s} {began:8.1f} .. {ended:8.1f} ({ended - began:6.1f})")
        else:
            print(f"{w:12s} {e['unit']:10s} at {ended:8.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--show", type=int, default=None)
    a = ap.parse_args()
    windows = steps_of(load(f"{a.path}.rank{a.rank}.jsonl"))
    if a.show is not None:
        show(windows[a.show])
        return
    rows = []
    for i, w in enumerate(windows):
        r = analyse(w, windows[i - 1] if i > 0 else None)
        if r:
            rows.append(r)
    keys = sorted({k for r in rows for k in r})
    summary = {k: round(statistics.median([r[k] for r in rows if k in r]), 1) for k in keys}
    summary["steps"] = len(rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
