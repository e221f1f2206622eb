"""Job timeline of a sweep, read from its run folders: which GPU each job held, when, and how many ran at once.

    python -m rewardsds.eval.timeline outputs/sweeps/<date>/<time>

Every run records ``pid``, ``hostname``, ``gpu_index`` (the GPU it locked, ``hydra/launcher=gpus``),
``device_index`` (the CUDA device it ran on), ``started_at`` and ``finished_at`` (Unix seconds) in its
``metrics.json``. The command prints one line per job and a summary, and exits with status 1 when two jobs
of one machine held the same GPU at overlapping times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def load_jobs(folder: Path) -> list[dict[str, Any]]:
    """Jobs with a start and an end time below ``folder``, sorted by start."""
    jobs = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        m = json.loads(path.read_text())
        if m.get("started_at") is None or m.get("finished_at") is None:
            continue
        jobs.append({"run": str(path.parent.relative_to(folder)), "pid": m.get("pid"), "host": m.get("hostname", ""),
                     "gpu": m.get("gpu_index"), "device": m.get("device_index"), "status": m.get("status"),
                     "start": float(m["started_at"]), "end": float(m["finished_at"])})
    return sorted(jobs, key=lambda j: j["start"])


def overlapping(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two jobs of the same machine whose [start, end) intervals intersect."""
    return a["host"] == b["host"] and a["start"] < b["end"] and b["start"] < a["end"]


def max_concurrency(jobs: Sequence[dict[str, Any]]) -> int:
    """The largest number of jobs running at the same moment (ends before starts at equal times)."""
    events = sorted([(j["start"], 1) for j in jobs] + [(j["end"], -1) for j in jobs], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def conflicts(jobs: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """Pairs of overlapping jobs that held the same GPU: ``(run_a, run_b, gpu)``."""
    out = []
    for i, a in enumerate(jobs):
        for b in jobs[i + 1 :]:
            if a["gpu"] is not None and a["gpu"] == b["gpu"] and overlapping(a, b):
                out.append((a["run"], b["run"], a["gpu"]))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardsds.eval.timeline", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a sweep folder (searched recursively for metrics.json)")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        p.error(f"folder = '{args.folder}': is not a folder. Fix: give a sweep folder, e.g. outputs/sweeps/<date>/<time>")
    jobs = load_jobs(args.folder)
    if not jobs:
        print(f"{p.prog}: error: {args.folder}: no finished jobs with timestamps in it or below. Fix: give the folder of "
              "a sweep whose jobs have ended (their metrics.json record when each started and finished)", file=sys.stderr)
        return 2
    t0 = jobs[0]["start"]
    width = max(len(j["run"]) for j in jobs)
    print(f"{'job':<{width}}  {'pid':>7}  {'gpu':>3}  {'device':>6}  {'start_s':>8}  {'end_s':>8}  status")
    for j in jobs:
        gpu = "-" if j["gpu"] is None else str(j["gpu"])
        dev = "cpu" if j["device"] is None else f"cuda:{j['device']}"
        print(f"{j['run']:<{width}}  {j['pid']!s:>7}  {gpu:>3}  {dev:>6}  {j['start'] - t0:8.2f}  {j['end'] - t0:8.2f}  {j['status']}")
    bad = conflicts(jobs)
    gpus = sorted({j["gpu"] for j in jobs if j["gpu"] is not None})
    print(f"\n{len(jobs)} jobs, {len({j['pid'] for j in jobs})} processes, at most {max_concurrency(jobs)} at once; "
          f"GPUs held: {gpus or 'none'}; jobs sharing a GPU at the same time: {len(bad)}")
    for a, b, g in bad:
        print(f"  GPU {g}: {a} and {b} overlap")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
