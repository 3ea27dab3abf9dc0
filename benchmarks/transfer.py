"""Transfer between studies: a 3%-noise deconvolution study seeded from a 1%-noise one, against an unseeded one.

``search_spaces/deconvolution.yaml`` with trials shortened to ``--outer-steps`` (default 60,
validation every 20) and no scheduler, so that the whole benchmark takes minutes on 2 CPU cores.
Each is a real ``hpo run`` job (``hpo.driver.run_job``, one embedded Ray, SQLite, 2 trials at a time):

1. the 1% study (TPE, ``--trials`` trials);
2. for each of ``--seeds`` sampler seeds, two 3% studies of ``--trials`` trials with the same
   sampler seed: unseeded, and seeded (``seed_from``: the best ``--k`` trials of the 1% study,
   enqueued as its first trials).

For each pair the target is the lower of the two studies' final best PSNRs (a level both reach, so
neither study is measured against its own best alone), and the result is the trials each needs to
reach it. Goal: the seeded study reaches the target in fewer trials, in the median over seeds.

    python benchmarks/transfer.py [--trials 12] [--seeds 3] [--k 4] [--quick]

Writes ``benchmarks/results/transfer.json`` (``--quick``: ``transfer-quick.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
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


def spec_for(args, study: str, noise: float, seed: int, seed_from: dict | None, storage: str, results_dir: str) -> dict:
    """The deconvolution spec at ``noise`` with the benchmark's trial length and budget."""
    spec = yaml.safe_load((REPO / "search_spaces" / "deconvolution.yaml").read_text())
    spec["study"] = study
    spec["task_args"] = {**spec["task_args"], "noise": noise, **({"size": 64, "patch": 32, "batch_size": 2, "kernel_size": 9} if args.quick else {})}
    spec["fixed"] = {**spec["fixed"], "outer_steps": args.outer_steps, "eval_every": args.eval_every}
    if args.quick:
        spec["space"]["K"] = {"type": "int", "low": 2, "high": 4}
        spec["space"]["hypergrad"] = {"type": "categorical", "choices": ["jfb", "truncated"]}
    spec.update(trials=args.trials, concurrency=2, artifacts=False, keep_models="none", storage=storage,
                results_dir=results_dir, scheduler={"name": "none"}, sampler={"name": "tpe", "seed": seed,
                                                                                "n_startup_trials": args.startup})
    if seed_from:
        spec["seed_from"] = seed_from
    return spec


def run(spec: dict) -> list[float]:
    """Run the study; return each trial's value in trial order (None where it did not complete)."""
    import optuna

    from hpo.driver import run_job
    from hpo.spec import parse_spec

    run_job(parse_spec(spec), out=lambda line: None)
    study = optuna.load_study(study_name=spec["study"], storage=spec["storage"])
    return [t.value if t.state.name == "COMPLETE" else None for t in study.get_trials(deepcopy=False)]


def trials_to_reach(values: list[float | None], target: float) -> int:
    """1 + the index of the first trial at or above ``target`` (PSNR, higher is better); len + 1 if none."""
    return next((i + 1 for i, v in enumerate(values) if v is not None and v >= target), len(values) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=4, help="configurations taken from the 1%% study")
    parser.add_argument("--startup", type=int, default=4, help="TPE's random start-up trials")
    parser.add_argument("--outer-steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a schema smoke run: tiny images and trials, 1 seed")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/transfer.json)")
    parser.add_argument("--summarize", metavar="JSON", help="recompute the summary of a written result")
    args = parser.parse_args()
    if args.summarize:
        return resummarize(Path(args.summarize))
    if args.quick:
        args.trials, args.seeds, args.k, args.startup, args.outer_steps, args.eval_every = 3, 1, 2, 1, 4, 2
    output = Path(args.output or HERE / "results" / ("transfer-quick.json" if args.quick else "transfer.json"))
    import ray

    start = time.monotonic()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="bmo-transfer-") as tmp:
        storage, results_dir = f"sqlite:///{Path(tmp) / 'transfer.db'}", str(Path(tmp) / "ray")
        source = run(spec_for(args, "deconv-1pct", 0.01, 0, None, storage, results_dir))
        print(f"  1% study: best {max((v for v in source if v is not None), default=float('nan')):.3f} dB "
              f"over {len(source)} trials", flush=True)
        for seed in range(args.seeds):
            plain = run(spec_for(args, f"deconv-3pct-{seed}", 0.03, 100 + seed, None, storage, results_dir))
            seeded = run(spec_for(args, f"deconv-3pct-seeded-{seed}", 0.03, 100 + seed,
                                  {"study": "deconv-1pct", "k": args.k}, storage, results_dir))
            pairs.append(compare(100 + seed, plain, seeded, args.k))
            p = pairs[-1]
            print(f"  seed {p['seed']}: target {p['target_psnr'] or float('nan'):.3f} dB, reached at trial {p['unseeded_trials_to_target']} "
                  f"unseeded and {p['seeded_trials_to_target']} seeded", flush=True)
    ray.shutdown()
    setup = {"task": "deconvolution", "space": "search_spaces/deconvolution.yaml", "source_noise": 0.01, "noise": 0.03,
             "trials": args.trials, "seeds": args.seeds, "k": args.k, "n_startup_trials": args.startup,
             "outer_steps": args.outer_steps, "eval_every": args.eval_every, "quick": args.quick}
    report({"machine": machine_info(ray=ray.__version__), "setup": setup, "seconds": time.monotonic() - start},
           source, pairs, output)
    return 0


def compare(seed: int, plain: list[float | None], seeded: list[float | None], k: int) -> dict:
    """One pair of 3% studies: the target both reach (the lower of their best values), the trials each needs,
    and each one's best after its first ``k`` trials (the seeded study's are the source's configurations)."""
    best = lambda values: max((v for v in values if v is not None), default=None)  # noqa: E731
    bests = [b for b in (best(plain), best(seeded)) if b is not None]
    target = min(bests) if bests else None
    never = len(plain) + 1
    return {"seed": seed, "unseeded": plain, "seeded": seeded, "target_psnr": target,
            "unseeded_best": best(plain), "seeded_best": best(seeded),
            "unseeded_best_after_k": best(plain[:k]), "seeded_best_after_k": best(seeded[:k]),
            "unseeded_trials_to_target": never if target is None else trials_to_reach(plain, target),
            "seeded_trials_to_target": never if target is None else trials_to_reach(seeded, target)}


def report(head: dict, source: list, pairs: list[dict], output: Path) -> None:
    """Write the JSON and print the table of the pairs."""
    unseeded = statistics.median(p["unseeded_trials_to_target"] for p in pairs)
    seeded = statistics.median(p["seeded_trials_to_target"] for p in pairs)
    result = {**head, "source": source, "pairs": pairs,
              "median_trials_to_target": {"unseeded": unseeded, "seeded": seeded},
              "goals": {"seeded reaches the target in fewer trials (median over seeds)": seeded < unseeded}}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    k = head["setup"]["k"]
    print(f"\n{'seed':>6}{'target dB':>11}{'unseeded: trials':>18}{'seeded: trials':>16}{'unseeded best':>15}{'seeded best':>13}"
          f"{f'unseeded after {k}':>18}{f'seeded after {k}':>16}")
    for p in pairs:
        print(f"{p['seed']:>6}{f(p['target_psnr']):>11}{p['unseeded_trials_to_target']:>18}{p['seeded_trials_to_target']:>16}"
              f"{f(p['unseeded_best']):>15}{f(p['seeded_best']):>13}{f(p['unseeded_best_after_k']):>18}"
              f"{f(p['seeded_best_after_k']):>16}")
    print(f"median trials to the target: unseeded {unseeded:g}, seeded {seeded:g} (of {head['setup']['trials']})")
    print_goals(result["goals"])
    print(f"wrote {output}")


def resummarize(path: Path) -> int:
    """Recompute the pairs and table of a written result from its per-trial values (``--summarize``)."""
    saved = json.loads(path.read_text())
    pairs = [compare(p["seed"], p["unseeded"], p["seeded"], saved["setup"]["k"]) for p in saved["pairs"]]
    report({k: saved[k] for k in ("machine", "setup", "seconds")}, saved["source"], pairs, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
