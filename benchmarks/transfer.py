"""Transfer between studies: a 3%-noise deconvolution study seeded from a 1%-noise one, against an unseeded one.

``search_spaces/deconvolution.yaml`` with trials shortened to ``--outer-steps`` (default 60,
validation every 20) and no scheduler, so that the whole benchmark takes minutes on 2 CPU cores.
Each is a real ``hpo run`` job (``hpo.driver.run_job``, one embedded Ray, SQLite, 2 trials at a time):

1. the 1% study (TPE, ``--trials`` trials);
2. for each of ``--seeds`` sampler seeds, two 3% studies of ``--trials`` trials with the same
   sampler seed: unseeded, and seeded (``seed_from``: the best ``--k`` trials of the 1% study,
   enqueued as its first trials).

For each pair: the trials the seeded study needs to reach the unseeded study's final best PSNR
(its trial count when it never does), and the unseeded study's own count. Goal: the seeded study
reaches the unseeded best in fewer trials, in the median over seeds.

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
    args = parser.parse_args()
    if args.quick:
        args.trials, args.seeds, args.k, args.startup, args.outer_steps, args.eval_every = 3, 1, 2, 1, 4, 2
    output = Path(args.output or HERE / "results" / ("transfer-quick.json" if args.quick else "transfer.json"))
    import ray

    start = time.monotonic()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="bmo-transfer-") as tmp:
        storage, results_dir = f"sqlite:///{Path(tmp) / 'transfer.db'}", str(Path(tmp) / "ray")
        source = run(spec_for(args, "deconv-1pct", 0.01, 0, None, storage, results_dir))
        print(f"  1% study: best {max(v for v in source if v is not None):.3f} dB over {len(source)} trials", flush=True)
        for seed in range(args.seeds):
            plain = run(spec_for(args, f"deconv-3pct-{seed}", 0.03, 100 + seed, None, storage, results_dir))
            seeded = run(spec_for(args, f"deconv-3pct-seeded-{seed}", 0.03, 100 + seed,
                                  {"study": "deconv-1pct", "k": args.k}, storage, results_dir))
            target = max(v for v in plain if v is not None)
            pair = {"seed": 100 + seed, "unseeded": plain, "seeded": seeded, "target_psnr": target,
                    "unseeded_trials_to_target": trials_to_reach(plain, target),
                    "seeded_trials_to_target": trials_to_reach(seeded, target),
                    "seeded_best": max((v for v in seeded if v is not None), default=None)}
            pairs.append(pair)
            print(f"  seed {pair['seed']}: unseeded best {target:.3f} dB at trial {pair['unseeded_trials_to_target']}; "
                  f"seeded reaches it at trial {pair['seeded_trials_to_target']} (its best {pair['seeded_best']:.3f})", flush=True)
    ray.shutdown()
    unseeded = statistics.median(p["unseeded_trials_to_target"] for p in pairs)
    seeded = statistics.median(p["seeded_trials_to_target"] for p in pairs)
    result = {
        "machine": machine_info(ray=ray.__version__),
        "setup": {"task": "deconvolution", "space": "search_spaces/deconvolution.yaml", "source_noise": 0.01, "noise": 0.03,
                  "trials": args.trials, "seeds": args.seeds, "k": args.k, "n_startup_trials": args.startup,
                  "outer_steps": args.outer_steps, "eval_every": args.eval_every, "quick": args.quick},
        "seconds": time.monotonic() - start,
        "source": source, "pairs": pairs,
        "median_trials_to_target": {"unseeded": unseeded, "seeded": seeded},
        "goals": {"seeded reaches the unseeded best in fewer trials (median over seeds)": seeded < unseeded},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'seed':>6}{'unseeded best dB':>18}{'unseeded: trials':>18}{'seeded: trials':>16}{'seeded best dB':>16}")
    for p in pairs:
        print(f"{p['seed']:>6}{p['target_psnr']:>18.3f}{p['unseeded_trials_to_target']:>18}{p['seeded_trials_to_target']:>16}"
              f"{p['seeded_best']:>16.3f}")
    print(f"median trials to the unseeded best: unseeded {unseeded:g}, seeded {seeded:g} (of {args.trials})")
    print_goals(result["goals"])
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
