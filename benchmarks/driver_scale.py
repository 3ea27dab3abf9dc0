"""Driver memory and throughput over thousands of tiny trials: does what the driver keeps per trial stay bounded?

One ``hpo run`` job (in this process, so its resident memory is the driver's) of ``--trials``
no-op trials (``benchmarks/noop.py``: one outer step, K=1), 2 at a time, random sampler, SQLite,
figures off. At each milestone (500, 2,000, 10,000 finished trials, and the end) it records the
driver's RSS and the trials per minute over the last ``--window`` trials.

Goals (from the issue): RSS at the last milestone within +150 MB of RSS at 500 trials, and the
throughput at the end within 20% of the throughput at the start (over the window after trial 500).

    python benchmarks/driver_scale.py [--trials 2000] [--window 250]     # --trials 10000: about 15 min on 2 CPUs

Writes ``benchmarks/results/driver_scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the no-op task is `noop:NoOp`
sys.path.insert(0, str(HERE.parent))

from machine import machine_info, print_goals  # noqa: E402  (benchmarks/machine.py)

MILESTONES = (500, 2000, 10000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--window", type=int, default=250, help="trials over which throughput is measured")
    parser.add_argument("--output", default=str(HERE / "results" / "driver_scale.json"))
    args = parser.parse_args()
    import psutil
    import ray

    from hpo.driver import run_job
    from hpo.spec import parse_spec

    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    me = psutil.Process()
    finished_at: list[float] = []  # monotonic time of each finished trial
    samples: list[dict] = []
    milestones = sorted({m for m in MILESTONES if m < args.trials} | {args.trials})

    def out(line: str) -> None:
        if line.startswith("trial ") and (" complete" in line or " pruned" in line or " failed" in line):
            finished_at.append(time.monotonic())
            n = len(finished_at)
            if n in milestones or n % 1000 == 0:
                window = finished_at[-args.window:]
                per_min = 60 * (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else None
                samples.append({"trials": n, "rss_mb": me.memory_info().rss / 2**20, "trials_per_min": per_min})
                print(f"  {n:>6} trials: RSS {samples[-1]['rss_mb']:.0f} MB, {per_min or 0:.0f} trials/min", flush=True)

    with tempfile.TemporaryDirectory(prefix="bmo-scale-") as tmp:
        tmp = Path(tmp)
        spec = parse_spec({
            "study": "scale", "task": "noop:NoOp",
            "fixed": {"K": 1, "outer_steps": 1, "eval_every": 1, "device": "cpu"},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "mode": "min"}, "sampler": {"name": "random", "seed": 0},
            "scheduler": {"name": "none"}, "trials": args.trials, "concurrency": 2, "resources": {"cpu": 1},
            "storage": f"sqlite:///{tmp / 'scale.db'}", "results_dir": str(tmp / "ray"), "artifacts": False,
            "keep_models": "none",
        })
        start = time.monotonic()
        run_job(spec, out=out)
        seconds = time.monotonic() - start
        experiment_state = sum(p.stat().st_size for p in (tmp / "ray").rglob("experiment_state*.json"))
    ray.shutdown()

    at = {s["trials"]: s for s in samples}
    first = at.get(500) or samples[0]
    last = samples[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    slowdown = 1 - last["trials_per_min"] / first["trials_per_min"]
    result = {
        "machine": machine_info(ray=ray.__version__),
        "setup": {"trials": args.trials, "window": args.window, "concurrency": 2, "trial": "no-op, 1 outer step, K=1"},
        "seconds": seconds, "samples": samples, "experiment_state_bytes": experiment_state,
        "rss_growth_mb": growth, "throughput_drop": slowdown,
        "goals": {"rss growth from 500 trials <= 150 MB": growth <= 150, "throughput drop <= 20%": slowdown <= 0.2},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'trials':>8}{'RSS MB':>10}{'trials/min':>12}")
    for s in samples:
        print(f"{s['trials']:>8}{s['rss_mb']:>10.0f}{s['trials_per_min'] or 0:>12.0f}")
    print(f"RSS growth from trial {first['trials']}: {growth:+.0f} MB; throughput change: {-100 * slowdown:+.0f}%; "
          f"Tune experiment state: {experiment_state / 1024:.0f} KiB")
    print_goals(result["goals"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
