"""Configurations per hour with trial packing: B members in one vectorized solve against B solo trainings.

The workers core only (``workers.packing.train_packed`` against ``workers.bmo.train``, no Ray, no
Optuna): the quick start's sparse coding (m=32, n=64, K=8, batch 64, Adam) with B configurations
drawn from the quick start's space (μ, γ, s0 per member; K and the hypergradient mode shared), each
trained for ``--steps`` outer steps with validation every ``--eval-every``. Both sides use one torch
thread, are warmed up first, and build their problems outside the timing; the median of ``--repeats``
timings is kept, and configurations per hour count the configurations that completed (a diverged one
costs its time and counts for nothing). Goal (issue 20): at least 5x configurations per hour at B = 16 on CPU.

    python benchmarks/packing.py [--packs 1 4 16] [--steps 200] [--device cpu|cuda] [--quick]

Writes ``benchmarks/results/packing.json`` (``--quick``: ``packing-quick.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from machine import machine_info, print_goals, torch_info  # noqa: E402  (benchmarks/machine.py)

GOAL_B, GOAL_SPEEDUP = 16, 5.0


def configs(n: int, args, seed: int = 0):
    """``n`` BMOConfigs with μ, γ and s0 drawn (seeded) from the quick start's ranges; the rest shared."""
    from workers.bmo import BMOConfig

    rng = random.Random(seed)
    return [BMOConfig(K=8, outer_steps=args.steps, eval_every=args.eval_every, optimizer="adam", hypergrad=args.hypergrad,
                      mu=rng.uniform(0.0, 0.3), gamma=10 ** rng.uniform(-3, -1.52), s0=10 ** rng.uniform(-0.7, 0.3),
                      device=args.device) for _ in range(n)]


def problem(args):
    from workers.tasks import make_problem

    return make_problem("sparse_coding", {"m": 32, "n": 64, "batch_size": 64, "val_size": 256, "test_size": 256})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--hypergrad", default="truncated", choices=("unroll", "truncated", "jfb", "implicit"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timings per B; the median is kept")
    parser.add_argument("--quick", action="store_true", help="a schema smoke run: B = 1 and 2, 4 steps")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/packing.json)")
    args = parser.parse_args()
    if args.quick:
        args.packs, args.steps, args.eval_every, args.repeats = [1, 2], 4, 2, 1
    output = Path(args.output or HERE / "results" / ("packing-quick.json" if args.quick else "packing.json"))
    import torch

    from workers.bmo import DivergenceError, train
    from workers.packing import train_packed

    torch.set_num_threads(1)
    warm = argparse.Namespace(**{**vars(args), "steps": 2, "eval_every": 1})
    train(problem(args), configs(1, warm)[0])  # first calls pay one-off costs (torch.func's, the allocator's)
    train_packed(problem(args), configs(2, warm))
    rows = []
    for B in args.packs:
        cs = configs(B, args)
        solo_s, packed_s = [], []
        for _ in range(args.repeats):
            problems = [problem(args) for _ in cs]  # built outside the timing, as for the packed run
            begin = time.perf_counter()
            solo_done = 0
            for p, c in zip(problems, cs):  # one after another, as B separate trials would run on one core
                try:
                    train(p, c)
                    solo_done += 1
                except DivergenceError:
                    pass
            solo_s.append(time.perf_counter() - begin)
            template = problem(args)
            begin = time.perf_counter()
            results = train_packed(template, cs)
            packed_s.append(time.perf_counter() - begin)
        solo, packed = statistics.median(solo_s), statistics.median(packed_s)
        done = sum(r.status == "done" for r in results)
        rows.append({"B": B, "solo_s": solo, "packed_s": packed, "speedup": solo / packed, "completed_solo": solo_done,
                     "completed_packed": done, "configs_per_hour_solo": 3600 * solo_done / solo,
                     "configs_per_hour_packed": 3600 * done / packed})
        print(f"  B={B:>3}: solo {solo:7.2f} s, packed {packed:7.2f} s, {solo / packed:5.2f}x", flush=True)
    at_goal = next((r for r in rows if r["B"] == GOAL_B), None)
    result = {
        "machine": machine_info(**torch_info(args.device)),
        "setup": {"task": "sparse_coding (quick start: m=32, n=64, K=8, batch 64)", "steps": args.steps,
                  "eval_every": args.eval_every, "hypergrad": args.hypergrad, "quick": args.quick},
        "rows": rows,
        "goals": {f"at least {GOAL_SPEEDUP:g}x configurations per hour at B = {GOAL_B} on {args.device}":
                  at_goal is not None and at_goal["speedup"] >= GOAL_SPEEDUP},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'B':>4}{'solo s':>10}{'packed s':>10}{'configs/h solo':>16}{'configs/h packed':>18}{'ratio':>8}")
    for r in rows:
        print(f"{r['B']:>4}{r['solo_s']:>10.2f}{r['packed_s']:>10.2f}{r['configs_per_hour_solo']:>16.0f}"
              f"{r['configs_per_hour_packed']:>18.0f}{r['speedup']:>8.2f}")
    print_goals(result["goals"])
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
