"""The value of the search, measured: how much compute each search method needs to reach random search's best.

Sparse coding (m=64, n=128) over the full space of ``search_spaces/sparse_coding.yaml``, with
trials shortened to ``--outer-steps`` (default 200, validation every 25) so that the whole benchmark
fits in about an hour on 2 CPU cores. Every study is a real ``hpo run`` job (``hpo.driver.run_job``,
one embedded Ray for all of them, SQLite, 2 trials at a time) of ``--trials`` trials:

- random, TPE, GP and CMA-ES samplers (TPE and GP: ``--startup`` random trials first, default 8),
  each without a scheduler and with ASHA (grace period: one validation, 25 outer steps; reduction factor 3),
  ``--seeds`` seeds each;
- a grid of the same space (every float range at 3 points, log-spaced where the range is log;
  every categorical choice; ints at 3 points; ``truncate`` only where ``hypergrad`` is truncated:
  4,374 points), run in a seeded random order and stopped at the trial budget: at this budget a
  grid search is a random search on a coarse lattice, which is what a grid costs in 8 dimensions;
- the objective choice (``objective.value``: last, best, averaged): random search, same seeds, so
  the three see the same configurations; compared on the test NMSE of the trial each one selects.

Compute is the summed trial-seconds: the CPU seconds each trial's process spent on it (``cpu_time_s``,
one torch thread per trial, so it equals the trial's wall time on an idle machine and stays right on
a busy one), of every trial, pruned and diverged ones included, in the order the trials finished.
The target is random search's final best (the median over seeds of the best validation NMSE), and
random search's compute is the median over seeds of what its runs spent in all. For each method the
compute to reach the target is the upper median over seeds (a seed that never reaches it counts as
infinite). Goal (issue 17): TPE + ASHA reaches the target with at most 1/3 of random search's compute.

    python benchmarks/tuning.py [--seeds 5] [--trials 24] [--outer-steps 200] [--quick]

Writes ``benchmarks/results/tuning.json`` (``--quick``: ``tuning-quick.json``), a PNG of the
best-so-far against compute beside it, and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import machine_info, print_goals  # noqa: E402  (benchmarks/machine.py)

SAMPLERS = ("random", "tpe", "gp", "cmaes")
OBJECTIVE_VALUES = ("last", "best", "averaged")
GOAL_RATIO = 1 / 3
GRID_POINTS = 3


def methods(quick: bool) -> list[tuple[str, str]]:
    """(sampler, scheduler) pairs to run; the grid is sampler ``grid``."""
    if quick:
        return [("random", "none"), ("tpe", "asha"), ("grid", "none")]
    return [(s, sched) for s in SAMPLERS for sched in ("none", "asha")] + [("grid", "none")]


def base_spec(args) -> dict:
    """``search_spaces/sparse_coding.yaml`` with the benchmark's trial length, storage and budget."""
    spec = yaml.safe_load((REPO / "search_spaces" / "sparse_coding.yaml").read_text())
    spec["task_args"] = {**spec["task_args"], "m": args.m, "n": args.n, "val_size": args.val_size}
    spec["fixed"] = {**spec["fixed"], "outer_steps": args.outer_steps, "eval_every": args.eval_every}
    spec.update(trials=args.trials, concurrency=2, artifacts=False, keep_models="none")
    return spec


def grid_points(space: dict, seed: int) -> list[dict]:
    """Every point of the space's grid (conditional entries only where they apply), in a seeded order."""
    axes: dict[str, list] = {}
    for name, p in space.items():
        if p["type"] == "categorical":
            axes[name] = list(p["choices"])
        elif p.get("log"):
            axes[name] = [p["low"] * (p["high"] / p["low"]) ** (i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)]
        else:
            axes[name] = [p["low"] + (p["high"] - p["low"]) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
        if p["type"] == "int":
            axes[name] = sorted({int(round(v)) for v in axes[name]})
    points, seen = [], set()
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        for name, p in space.items():
            when = p.get("when")
            if when and any(point.get(k) != v for k, v in when.items()):
                point.pop(name)
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            points.append(point)
    random.Random(seed).shuffle(points)
    return points


def run_study(spec_dict: dict, storage: str, results_dir: str, grid: list[dict] | None) -> list[dict]:
    """Run one study through ``run_job``; return its trials (state, value, seconds, test NMSE) in finishing order."""
    import optuna

    from hpo.driver import run_job
    from hpo.spec import parse_spec

    spec_dict = {**spec_dict, "storage": storage, "results_dir": results_dir}
    resume = False
    if grid is not None:  # the grid's points are queued in the study first; run_job asks for them in order
        spec_dict["sampler"] = {"name": "random", "seed": spec_dict["sampler"]["seed"]}
        study = optuna.create_study(storage=storage, study_name=spec_dict["study"], direction="minimize")
        for point in grid[: spec_dict["trials"]]:
            study.enqueue_trial(point)
        resume = True  # the study exists (with its queue), so the run continues it
    run_job(parse_spec(spec_dict), resume=resume, out=lambda line: None)
    study = optuna.load_study(study_name=spec_dict["study"], storage=storage)
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            trials.append({
                "number": t.number, "state": t.state.name, "value": t.value,
                "seconds": float(t.user_attrs.get("cpu_time_s", 0.0)), "wall_s": t.user_attrs.get("wall_time_s"),
                "test_nmse_db": t.user_attrs.get("test_nmse_db"), "params": t.params,
                "finished": t.datetime_complete.timestamp() if t.datetime_complete else math.inf,
            })
    trials.sort(key=lambda t: t["finished"])
    return trials


def best_so_far(trials: list[dict]) -> list[tuple[float, float]]:
    """(cumulative trial CPU-seconds, best complete value so far) after each finished trial."""
    curve, spent, best = [], 0.0, math.inf
    for t in trials:
        spent += t["seconds"]
        if t["state"] == "COMPLETE" and t["value"] is not None and math.isfinite(t["value"]):
            best = min(best, t["value"])
        curve.append((spent, best))
    return curve


def compute_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """The trial-seconds after which the best value is at or below ``target`` (inf if never)."""
    return next((spent for spent, best in curve if best <= target), math.inf)


def summarize(runs: dict) -> dict:
    """The target, the compute each method needs to reach it, ratios to random search's compute, the goal,
    and the objective comparison.

    The target is the median over seeds of random search's final best; random search's compute is the
    median of what its runs spent in all. A method's compute to
    the target is the upper median over its seeds, a seed that never reaches it counting as infinite.
    """
    finals = {name: [r["curve"][-1][1] if r["curve"] else math.inf for r in rs] for name, rs in runs["methods"].items()}
    reached_finals = [f for f in finals["random"] if math.isfinite(f)]
    target = statistics.median(reached_finals) if reached_finals else -math.inf
    base = statistics.median(r["curve"][-1][0] if r["curve"] else 0.0 for r in runs["methods"]["random"])
    table = {}
    for name, rs in runs["methods"].items():
        needed = [compute_to_reach(r["curve"], target) for r in rs]
        to_target = statistics.median_high(needed)
        table[name] = {"final_best_median": statistics.median(finals[name]), "reached": sum(math.isfinite(x) for x in needed),
                       "seeds": len(rs), "compute_to_target_median_s": to_target,
                       "compute_total_median_s": statistics.median(r["curve"][-1][0] if r["curve"] else 0.0 for r in rs),
                       "ratio_to_random": to_target / base if math.isfinite(to_target) and base > 0 else None}
    ratio = table.get("tpe+asha", {}).get("ratio_to_random")
    return {
        "target_nmse_db": target, "random_compute_median_s": base, "methods": table,
        **compare_objectives(runs["objectives"]),
        "goals": {"tpe+asha reaches random search's best with <= 1/3 of its compute": ratio is not None and ratio <= GOAL_RATIO},
    }


def compare_objectives(runs: dict) -> dict:
    """Each objective value against ``last`` on the same seeds: the paired difference in the selected trial's
    test NMSE (negative: better). One is chosen over ``last`` only when it is better on at least 4 of 5
    paired seeds (a sign test's strongest evidence at 5 seeds short of 5/5); otherwise ``last`` stays."""
    last = {r["seed"]: r["selected_test_nmse_db"] for r in runs.get("last", [])}
    out, chosen, best_mean = {}, "last", 0.0
    for value, rs in runs.items():
        per_seed = {r["seed"]: r["selected_test_nmse_db"] for r in rs}
        pairs = [(per_seed[s], last[s]) for s in per_seed if per_seed[s] is not None and last.get(s) is not None]
        diffs = [a - b for a, b in pairs]
        wins = sum(d < 0 for d in diffs)
        mean = statistics.fmean(diffs) if diffs else None
        out[value] = {"per_seed": [per_seed[s] for s in sorted(per_seed)], "paired_seeds": len(diffs),
                      "mean_difference_to_last_db": mean, "better_than_last_on": wins}
        if value != "last" and diffs and wins >= math.ceil(0.8 * len(diffs)) and mean < best_mean:
            chosen, best_mean = value, mean
    return {"objectives": out, "best_objective_value": chosen}


def finite_or_none(value):
    """JSON has no infinity: ``None`` for a non-finite float (a target never reached), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def selected_test(trials: list[dict]) -> float | None:
    """The test NMSE of the study's best complete trial (the one a user would take)."""
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    return min(complete, key=lambda t: t["value"])["test_nmse_db"] if complete else None


def plot(runs: dict, target: float, path: Path) -> None:
    """Median best-so-far NMSE against summed trial-seconds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rs in runs["methods"].items():
        curves = [r["curve"] for r in rs if r["curve"]]
        if not curves:
            continue
        end = min(c[-1][0] for c in curves)
        xs = [end * i / 100 for i in range(1, 101)]
        median = [statistics.median(next((b for s, b in reversed(c) if s <= x), math.inf) for c in curves) for x in xs]
        ax.plot(xs, [m if math.isfinite(m) else float("nan") for m in median], label=name,
                linestyle="--" if "asha" in name else "-")
    ax.axhline(target, color="gray", linewidth=0.8, linestyle=":", label="random search's best (target)")
    ax.set_xlabel("summed trial CPU-seconds")
    ax.set_ylabel("best validation NMSE so far (dB, median over seeds)")
    ax.set_title("Sparse coding m=64, n=128: best so far against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--startup", type=int, default=8, help="n_startup_trials of TPE and GP")
    parser.add_argument("--outer-steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="a schema smoke run: 1 seed, 3 methods, tiny trials")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/tuning.json)")
    parser.add_argument("--summarize", metavar="JSON", help="recompute the summary of a written result from its runs")
    args = parser.parse_args()
    if args.summarize:
        return resummarize(Path(args.summarize))
    args.m, args.n, args.val_size = 64, 128, 1000
    if args.quick:
        args.seeds, args.trials, args.outer_steps, args.eval_every = 1, 2, 20, 10
        args.m, args.n, args.val_size = 16, 32, 64
    output = Path(args.output or HERE / "results" / ("tuning-quick.json" if args.quick else "tuning.json"))
    import ray

    spec = base_spec(args)
    grace = args.eval_every
    runs: dict = {"methods": {}, "objectives": {}}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bmo-tuning-") as tmp:
        storage = f"sqlite:///{Path(tmp) / 'tuning.db'}"
        jobs = [(f"{s}+{sched}" if sched != "none" else s, s, sched, "last") for s, sched in methods(args.quick)]
        jobs += [(f"random/{v}", "random", "none", v) for v in OBJECTIVE_VALUES if v != "last"]
        for seed in range(args.seeds):  # seed-major, so that a busy spell of the machine touches every method alike
            for name, sampler, scheduler, value in jobs:
                s = json.loads(json.dumps(spec))
                s["study"] = f"{name.replace('/', '-').replace('+', '-')}-{seed}"
                s["sampler"] = {"name": sampler if sampler != "grid" else "random", "seed": seed}
                if sampler in ("tpe", "gp"):
                    s["sampler"]["n_startup_trials"] = args.startup
                s["scheduler"] = ({"name": "asha", "grace_period": grace, "reduction_factor": 3} if scheduler == "asha"
                                  else {"name": "none"})
                s["objective"] = {**s["objective"], "value": value}
                if value == "averaged":
                    s["fixed"] = {**s["fixed"], "average": 0.99}
                grid = grid_points(spec["space"], seed) if sampler == "grid" else None
                began = time.monotonic()
                trials = run_study(s, storage, str(Path(tmp) / "ray"), grid)
                run = {"seed": seed, "trials": trials, "curve": best_so_far(trials), "wall_s": time.monotonic() - began,
                       "selected_test_nmse_db": selected_test(trials)}
                if value == "last":
                    runs["methods"].setdefault(name, []).append(run)
                if sampler == "random" and scheduler == "none":
                    runs["objectives"].setdefault(value, []).append(run)
                print(f"  {name:<16} seed {seed}: best {run['curve'][-1][1] if run['curve'] else math.nan:8.3f} dB "
                      f"after {run['curve'][-1][0] if run['curve'] else 0:7.1f} trial-s ({run['wall_s']:.0f} s)", flush=True)
    ray.shutdown()
    setup = {"task": "sparse_coding", "m": args.m, "n": args.n, "space": "search_spaces/sparse_coding.yaml",
             "seeds": args.seeds, "trials": args.trials, "outer_steps": args.outer_steps, "eval_every": args.eval_every,
             "n_startup_trials": args.startup, "concurrency": 2, "asha": {"grace_period": grace, "reduction_factor": 3},
             "grid_points": GRID_POINTS, "quick": args.quick}
    report({"machine": machine_info(ray=ray.__version__), "setup": setup, "seconds": time.monotonic() - start}, runs, output)
    return 0


def report(head: dict, runs: dict, output: Path) -> None:
    """Summarize ``runs``, write the JSON (no infinities) and the plot beside it, print the tables."""
    summary = summarize(runs)
    png = output.with_suffix(".png")
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, summary["target_nmse_db"], png)
    result = finite_or_none({**head, **summary, "runs": runs, "plot": png.name})
    output.write_text(json.dumps(result, indent=2) + "\n")
    seeds = head["setup"]["seeds"]
    print(f"\ntarget: random search's best, median over {seeds} seeds: {summary['target_nmse_db']:.3f} dB; "
          f"random search's compute: {summary['random_compute_median_s']:.1f} trial-s (median)")
    print(f"{'method':<14}{'best (median)':>15}{'reached':>9}{'compute to target':>19}{'ratio':>8}{'compute total':>15}")
    for name, row in summary["methods"].items():
        ratio = "-" if row["ratio_to_random"] is None else f"{row['ratio_to_random']:.2f}"
        print(f"{name:<14}{row['final_best_median']:>15.3f}{row['reached']:>5}/{row['seeds']:<3}"
              f"{row['compute_to_target_median_s']:>19.1f}{ratio:>8}{row['compute_total_median_s']:>15.1f}")
    print("\nobjective.value (random search, same seeds and configurations): test NMSE of the selected trial")
    print(f"  {'value':<10}{'mean diff to last':>19}{'better on':>11}")
    for value, row in summary["objectives"].items():
        mean = row["mean_difference_to_last_db"]
        print(f"  {value:<10}{'-' if mean is None else f'{mean:+.3f} dB':>19}{row['better_than_last_on']:>5}/{row['paired_seeds']}")
    print(f"objective value the benchmark supports as the default: {summary['best_objective_value']}")
    print_goals(summary["goals"])
    print(f"wrote {output} and {png}")


def resummarize(path: Path) -> int:
    """Recompute the summary, plot and tables of a written result from its runs (``--summarize``)."""
    saved = json.loads(path.read_text())  # json reads the Infinity an older version wrote

    def inf(run: dict) -> dict:
        run["curve"] = [(s, math.inf if b is None else b) for s, b in run["curve"]]
        return run

    runs = {part: {k: [inf(r) for r in rs] for k, rs in saved["runs"][part].items()} for part in ("methods", "objectives")}
    report({k: saved[k] for k in ("machine", "setup", "seconds")}, runs, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
