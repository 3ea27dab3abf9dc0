"""Per-trial overhead of `hpo run` against plain Ray Tune + OptunaSearch and an Optuna ask/tell loop over Ray actors.

All run the same no-op trial (``benchmarks/noop.py``: build the problem, one BMO outer
step with K=1, report the loss) with a random sampler, SQLite storage and 2 trials at a time,
on one Ray instance in one run, so the ratios compare like with like. Each method runs once
to warm up, then ``--repeats`` times; the median is kept. ``hpo_run`` is measured with
``artifacts: false``; ``hpo_run_with_figures`` adds the per-trial figures (rendered in the
worker, stored by the driver).

Report cost: the same hpo job of 51 outer steps per trial, validating (and so reporting) at every
step (``eval_every: 1``) against at the first and last only (``eval_every: 51``); the difference,
per report, in trial-slot seconds. A trial reports once per validation, so its share of a 1-second
trial is given for 10 validations (``eval_every`` = a tenth of ``outer_steps``).

    python benchmarks/service_overhead.py [--trials 40] [--repeats 3]

Writes ``benchmarks/results/service_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the no-op task is `noop:NoOp`
sys.path.insert(0, str(HERE.parent))

from machine import machine_info, print_goals  # noqa: E402  (benchmarks/machine.py)

CONCURRENCY = 2


def _noop_trial(x: float, steps: int = 1) -> float:
    """The trial every method runs: a no-op BMO training of ``steps`` outer steps."""
    import torch

    from noop import NoOp
    from workers import BMOConfig, train

    torch.set_num_threads(1)
    result = train(NoOp(x), BMOConfig(K=1, outer_steps=steps, eval_every=1, device="cpu"))
    return result.final["val_loss"]


def run_hpo(trials: int, tmp: Path, tag: str, *, steps: int = 1, eval_every: int = 1, artifacts: bool = False) -> float:
    from hpo.driver import run_job
    from hpo.spec import parse_spec

    spec = parse_spec({
        "study": f"hpo-{tag}",
        "task": "noop:NoOp",
        "fixed": {"K": 1, "outer_steps": steps, "eval_every": eval_every, "device": "cpu"},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "loss", "mode": "min"},
        "sampler": {"name": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "trials": trials,
        "concurrency": CONCURRENCY,
        "resources": {"cpu": 1},
        "storage": f"sqlite:///{tmp / f'hpo-{tag}.db'}",
        "results_dir": str(tmp / "ray"),
        "artifacts": artifacts,
    })
    start = time.perf_counter()
    run_job(spec, out=lambda line: None)
    return time.perf_counter() - start


def _plain_trainable(config):
    from ray import tune

    tune.report({"loss": _noop_trial(config["x"])})


def run_plain_tune(trials: int, tmp: Path, tag: str) -> float:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp / f'plain-{tag}.db'}")
    search = OptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="loss", mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0), study_name=f"plain-{tag}", storage=storage,
    )
    tuner = tune.Tuner(
        tune.with_resources(_plain_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=CONCURRENCY, reuse_actors=True),
        run_config=tune.RunConfig(name=f"plain-{tag}", storage_path=str(tmp / "ray"), verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def run_ask_tell(trials: int, tmp: Path, tag: str) -> float:
    import optuna
    import ray

    @ray.remote(num_cpus=1)
    class Worker:
        def run(self, x: float) -> float:
            return _noop_trial(x)

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp / f'asktell-{tag}.db'}")
    start = time.perf_counter()
    study = optuna.create_study(study_name=f"asktell-{tag}", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    workers = [Worker.remote() for _ in range(CONCURRENCY)]
    pending, idle, asked = {}, list(workers), 0
    while asked < trials or pending:
        while idle and asked < trials:
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
            worker = idle.pop()
            pending[worker.run.remote(trial.params["x"])] = (trial, worker)
            asked += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        trial, worker = pending.pop(done[0])
        study.tell(trial, ray.get(done[0]))
        idle.append(worker)
    elapsed = time.perf_counter() - start
    for w in workers:
        ray.kill(w)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(HERE / "results" / "service_overhead.json"))
    args = parser.parse_args()

    import optuna
    import ray
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    pythonpath = os.pathsep.join([str(HERE), str(HERE.parent)])
    ray.init(address="local", num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    methods = {
        "hpo_run": run_hpo,
        "plain_tune_optunasearch": run_plain_tune,
        "optuna_ask_tell_actors": run_ask_tell,
        "hpo_run_with_figures": lambda n, tmp, tag: run_hpo(n, tmp, tag, artifacts=True),
    }
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, fn in methods.items():
            fn(4, tmp, f"warm-{name}")
        for r in range(args.repeats):
            for name, fn in methods.items():
                seconds[name].append(fn(args.trials, tmp, f"{name}-{r}"))
                print(f"  {name} run {r + 1}: {seconds[name][-1]:.2f}s for {args.trials} trials", flush=True)
        report_runs = {"all": [], "last": []}
        for r in range(args.repeats):
            report_runs["all"].append(run_hpo(args.trials, tmp, f"rep-all-{r}", steps=51, eval_every=1))
            report_runs["last"].append(run_hpo(args.trials, tmp, f"rep-last-{r}", steps=51, eval_every=51))
    ray.shutdown()

    per_trial = {m: statistics.median(v) / args.trials for m, v in seconds.items()}
    # 51 reports against 2 (steps 1 and 51); the validations themselves are no-ops
    per_report = (statistics.median(report_runs["all"]) - statistics.median(report_runs["last"])) * CONCURRENCY / (args.trials * 49)
    reports_in_1s_trial = 10  # a trial validating 10 times
    result = {
        "machine": machine_info(torch=torch.__version__, ray=ray.__version__, optuna=optuna.__version__),
        "setup": {"trials": args.trials, "repeats": args.repeats, "concurrency": CONCURRENCY, "sampler": "random",
                  "storage": "sqlite", "trial": "no-op BMO training, K=1, 1 outer step"},
        "seconds_per_run": seconds,
        "per_trial_s": per_trial,
        "ratio_hpo_to_plain_tune": per_trial["hpo_run"] / per_trial["plain_tune_optunasearch"],
        "ratio_hpo_to_ask_tell": per_trial["hpo_run"] / per_trial["optuna_ask_tell_actors"],
        "report_runs_s": report_runs,
        "per_report_s": per_report,
        "report_share_of_1s_trial": reports_in_1s_trial * per_report / 1.0,
        "goals": {"ratio_hpo_to_plain_tune <= 1.1": None, "report_share_of_1s_trial < 0.1": None},
    }
    result["goals"]["ratio_hpo_to_plain_tune <= 1.1"] = result["ratio_hpo_to_plain_tune"] <= 1.1
    result["goals"]["report_share_of_1s_trial < 0.1"] = result["report_share_of_1s_trial"] < 0.1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nper-trial overhead, {args.trials} no-op trials, {CONCURRENCY} at a time (median of {args.repeats})")
    print(f"{'method':<28}{'s/trial':>10}{'ratio':>10}")
    base = per_trial["plain_tune_optunasearch"]
    for m, v in per_trial.items():
        print(f"{m:<28}{v:>10.4f}{v / base:>10.2f}")
    print(f"\nper report: {per_report * 1000:.2f} ms; share of a 1-second trial with 10 validations: "
          f"{100 * result['report_share_of_1s_trial']:.2f}%")
    print_goals(result["goals"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
