"""Trials per minute of a CPU-bound job on 1 and on 2 worker nodes of a real local Ray cluster.

For each size, ``cluster/local.sh up --workers N`` starts a head (no CPUs) and N worker nodes of
1 CPU each, on free ports, in a temp directory of its own, with token authentication; ``hpo run
--address`` then runs the same job on it from a subprocess, and the cluster is stopped again. The
job: ``--trials`` trials of BMO on sparse coding (m=32, n=64, K=8, ``--steps`` Adam steps, about 8 s
each on an idle core), 1 CPU and one torch thread per trial, as many at a time as there are
worker nodes, random sampler with a fixed seed (both sizes train the same trials), no scheduler
(none pruned), no figures. Seconds: from the first trial's start to the last trial's end in the
study (the trials, not the driver's start-up and spec check; ``job_seconds`` has the whole
``hpo run``). The ratio is the 2-node rate over the 1-node rate, measured in the same run.

Every trial process competes for the same cores with the cluster's own processes and the
driver, and with anything else running on the machine: run it on an otherwise idle machine with
at least 2 cores (the load average at the start is recorded).

    python benchmarks/scaling.py [--trials 16] [--steps 800]
    python benchmarks/scaling.py --quick        # a smoke test: 4 short trials, JSON to a new temp dir

Writes ``benchmarks/results/scaling.json`` (``--quick``: ``/tmp/bmo-scaling-quick-*/scaling.json``;
or ``--output``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from machine import machine_info  # noqa: E402  (benchmarks/machine.py; this folder is on sys.path when run as a script)
from cluster.local_cluster import LocalCluster  # noqa: E402  (cluster/local.sh on free ports, own temp dir)

GOAL = 1.8
TASK_ARGS = {"m": 32, "n": 64, "batch_size": 64, "val_size": 256, "test_size": 256}


def job_spec(study: str, trials: int, steps: int, concurrency: int, tmp: Path) -> dict:
    return {
        "study": study,
        "task": "sparse_coding",
        "task_args": TASK_ARGS,
        "fixed": {"K": 8, "outer_steps": steps, "eval_every": max(1, steps // 4), "optimizer": "adam", "device": "cpu"},
        "space": {
            "mu": {"type": "float", "low": 0.0, "high": 0.3},
            "gamma": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        },
        "objective": {"metric": "nmse_db", "mode": "min"},
        "sampler": {"name": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "trials": trials,
        "concurrency": concurrency,
        "resources": {"cpu": 1, "gpu": 0},
        "storage": f"sqlite:///{tmp / 'scaling.db'}",
        "results_dir": str(tmp / "ray"),
        "artifacts": False,
        "max_retries": 0,  # a lost worker here is a broken measurement, not something to ride out
    }


def run_on(workers: int, trials: int, steps: int, tmp: Path) -> dict:
    """Start a cluster of ``workers`` one-CPU worker nodes, run the job on it, stop it; one table row."""
    import optuna

    study = f"scaling-{workers}"
    spec_path = tmp / f"{study}.yaml"
    spec_path.write_text(yaml.safe_dump(job_spec(study, trials, steps, workers, tmp), sort_keys=False))
    print(f"{workers} worker node(s): starting the cluster", flush=True)
    with LocalCluster(workers=workers, cpus=1) as cluster:
        print(f"{workers} worker node(s): running {trials} trials, {workers} at a time", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hpo.cli", "run", str(spec_path), "--address", cluster.address],
                              cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=3600)
        job_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"hpo run failed on {workers} worker node(s):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    done = optuna.load_study(study_name=study, storage=f"sqlite:///{tmp / 'scaling.db'}").get_trials()
    states = {t.state.name for t in done}
    if len(done) != trials or states != {"COMPLETE"}:
        raise SystemExit(f"{workers} worker node(s): expected {trials} COMPLETE trials, got {len(done)} ({states})")
    seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "workers": workers,
        "trials": trials,
        "seconds": round(seconds, 2),
        "trials_per_minute": round(60.0 * trials / seconds, 3),
        "job_seconds": round(job_seconds, 2),
        "nodes_used": len({t.user_attrs.get("ray_node") for t in done}),
        "mean_trial_seconds": round(sum(t.user_attrs["wall_time_s"] for t in done) / trials, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per cluster size (default 16)")
    parser.add_argument("--steps", type=int, default=800, help="outer (Adam) steps per trial (default 800, ~8 s)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 trials of 60 steps, JSON to a temp dir")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/scaling.json)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.steps = 4, 60
    if args.trials < 2 or args.steps < 1:
        parser.error("--trials must be >= 2 and --steps >= 1")
    with tempfile.TemporaryDirectory(prefix="bmo-scaling-") as tmp_dir:
        tmp = Path(tmp_dir)
        if args.output:
            output = Path(args.output)
        elif args.quick:  # never the real results file; kept for a look afterwards
            output = Path(tempfile.mkdtemp(prefix="bmo-scaling-quick-")) / "scaling.json"
        else:
            output = HERE / "results" / "scaling.json"
        import optuna
        import ray
        import torch

        load = os.getloadavg()
        rows = [run_on(workers, args.trials, args.steps, tmp) for workers in (1, 2)]
        ratio = rows[1]["trials_per_minute"] / rows[0]["trials_per_minute"]
        result = {
            "machine": machine_info(torch=torch.__version__, ray=ray.__version__, optuna=optuna.__version__,
                                   load_average_at_start=[round(x, 2) for x in load]),
            "config": {"cluster": "cluster/local.sh: head with 0 CPUs + N worker nodes of 1 CPU, token auth",
                       "trials": args.trials, "outer_steps": args.steps, "quick": args.quick,
                       "task": "sparse_coding", "task_args": TASK_ARGS, "K": 8, "optimizer": "adam",
                       "per_trial": "1 CPU, 1 torch thread", "concurrency": "= worker nodes",
                       "sampler": "random, seed 0", "scheduler": "none", "artifacts": False,
                       "seconds": "first trial start to last trial end (Optuna timestamps)"},
            "rows": rows,
            "ratio": round(ratio, 3),
            "goal": f">= {GOAL}x",
            "passed": ratio >= GOAL,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")

        print(f"\ntrials per minute: {args.trials} trials of {args.steps} BMO steps (sparse coding), 1 CPU and 1 torch thread "
              f"each, as many at a time as worker nodes (load average at start {load[0]:.2f})")
        print(f"{'workers':>8}{'trials':>8}{'seconds':>10}{'trials/min':>12}{'job s':>9}{'nodes used':>12}")
        for r in rows:
            print(f"{r['workers']:>8}{r['trials']:>8}{r['seconds']:>10.1f}{r['trials_per_minute']:>12.2f}"
                  f"{r['job_seconds']:>9.1f}{r['nodes_used']:>12}")
        print(f"ratio 2 nodes / 1 node: {ratio:.2f}x (goal >= {GOAL}x: {'met' if result['passed'] else 'NOT met'})")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
