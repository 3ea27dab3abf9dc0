"""What checkpoints cost, how large the trained solvers are, and the compute that resuming saves.

Part 1, per shipped spec (``search_spaces/*.yaml``, mid-range settings, no Ray): the seconds of
one outer step, the seconds of one checkpoint done as the trainable does it (``state.pt`` written
to a temporary directory, then copied into a results directory, as Tune persists it), the sizes of
``state.pt`` and ``solver.pt``, and the share of training time the default cadence costs
(``checkpoint_every: 0``: 4 checkpoints per trial) for the spec's ``outer_steps``.

Part 2, on a real local Ray with real ``hpo run`` processes: a job of 2 sparse-coding trials, 2 at a
time, run (a) uninterrupted; (b) killed (SIGKILL of the driver) once both trials are past 3/4 of
their steps, then ``--resume``d, with checkpoints every 1/20 of the steps; (c) the same kill with a
checkpoint at the last step only, so the killed trials start again from step 1 (what main did
before checkpoints). The ratios are the summed wall time of the killed run and the resume, less
one restart (the wall time of the same job with trials of 20 steps: Ray, the driver, the trial
workers and their torch imports), over (a). The resume first
waits out the killed driver's lease (``driver_lease: 2`` s here), not counted in either.

    python benchmarks/checkpoints.py [--steps 8000] [--quick]

Writes ``benchmarks/results/checkpoints.json`` and prints two tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import machine_info, print_goals, torch_info  # noqa: E402  (benchmarks/machine.py)

SPECS = ("quickstart", "sparse_coding", "deconvolution", "derain")
DEFAULT_CHECKPOINTS = 4  # checkpoint_every: 0 checkpoints at 1/4, 1/2, 3/4 and the end
LEASE_S = 2.0  # the killed driver's lease: the resume waits it out (part of the restart)


def _mid(p: dict):
    """A mid-range value of a search-space entry (geometric for log ranges, the first choice of a categorical)."""
    if p["type"] == "categorical":
        return p["choices"][0]
    low, high = p["low"], p["high"]
    value = math.sqrt(low * high) if p.get("log") else (low + high) / 2
    return int(round(value)) if p["type"] == "int" else value


def checkpoint_costs(name: str, steps: int) -> dict:
    """One spec's step time, checkpoint time and sizes, and the default cadence's share of a trial."""
    import torch

    from workers import BMOConfig, make_problem, split_settings, train
    from workers.protocol import STATE_FILE
    from workers.solver import save_solver

    spec = yaml.safe_load((REPO / "search_spaces" / f"{name}.yaml").read_text())
    values = {**spec["fixed"], **{k: _mid(p) for k, p in spec["space"].items() if "when" not in p}}
    outer_steps = values["outer_steps"]
    config_values, task_args = split_settings({**values, "outer_steps": steps, "eval_every": 10**9})
    task_args = {**spec["task_args"], **task_args}
    config = BMOConfig.from_dict(config_values)
    problem = make_problem(spec["task"], task_args)
    states = []
    result = train(problem, config, checkpoint=states.append, checkpoint_every=steps)
    step_s = (result.trace[-1]["seconds"] - result.trace[0]["seconds"]) / max(1, steps - 1)
    history = [{"step": s, "upper_loss": 0.0, "val_x": 0.0} for s in range(outer_steps // 100)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        times = []
        for i in range(5):
            start = time.perf_counter()
            work = tmp / f"work{i}"
            work.mkdir()
            torch.save({"train": states[-1].to_dict(), "history": history}, work / STATE_FILE)
            shutil.copytree(work, tmp / "results" / f"checkpoint_{i:06d}")  # what Tune does with a local results_dir
            shutil.rmtree(work)
            times.append(time.perf_counter() - start)
        state_bytes = (tmp / "results" / "checkpoint_000000" / STATE_FILE).stat().st_size
        solver = save_solver(tmp / "solver", problem, config, task=spec["task"], task_args=task_args)
        solver_bytes = solver.stat().st_size
    checkpoint_s = sorted(times)[len(times) // 2]
    trial_s = step_s * outer_steps
    return {
        "spec": name, "outer_steps": outer_steps, "settings": values, "step_s": step_s, "trial_training_s": trial_s,
        "checkpoint_s": checkpoint_s, "state_bytes": state_bytes, "solver_bytes": solver_bytes,
        "default_checkpoints_per_trial": DEFAULT_CHECKPOINTS,
        "default_share_of_training": DEFAULT_CHECKPOINTS * checkpoint_s / trial_s,
    }


def _spec(tmp: Path, study: str, steps: int, every: int) -> Path:
    """A 2-trial sparse-coding job of ``steps`` outer steps, validating every ``steps // 20``, checkpointing every ``every``."""
    path = tmp / f"{study}.yaml"
    path.write_text(yaml.safe_dump({
        "study": study, "task": "sparse_coding",
        "task_args": {"m": 32, "n": 64, "batch_size": 64, "val_size": 256, "test_size": 256},
        "fixed": {"K": 8, "outer_steps": steps, "eval_every": max(1, steps // 20), "mu": 0.1, "gamma": 0.003},
        "space": {"s0": {"type": "float", "low": 0.5, "high": 1.0}},
        "objective": {"metric": "nmse_db", "mode": "min"}, "sampler": {"name": "random", "seed": 0},
        "scheduler": {"name": "none"}, "trials": 2, "concurrency": 2, "resources": {"cpu": 1},
        "storage": f"sqlite:///{tmp / 'studies.db'}", "results_dir": str(tmp / "ray"), "checkpoint_every": every,
        "artifacts": False, "driver_lease": LEASE_S,
    }))
    return path


def _hpo(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _timed(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    proc = _hpo(*args, cwd=cwd)
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"hpo {' '.join(args)} failed: {out[-2000:]}")
    return time.perf_counter() - start


def _killed_then_resumed(tmp: Path, study: str, steps: int, every: int) -> dict:
    import optuna

    spec = _spec(tmp, study, steps, every)
    storage = f"sqlite:///{tmp / 'studies.db'}"
    start = time.perf_counter()
    driver = _hpo("run", str(spec), cwd=tmp)
    while True:  # both trials past 3/4 of their steps (validations every 1/20)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        except KeyError:
            trials = []
        if len([t for t in trials if t.intermediate_values and max(t.intermediate_values) >= 3 * steps // 4]) == 2:
            break
        if driver.poll() is not None:
            raise RuntimeError(f"the driver ended before the kill: {driver.stdout.read()[-2000:]}")
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_s = time.perf_counter() - start
    time.sleep(LEASE_S)  # until the dead driver's lease runs out
    resume_s = _timed("run", str(spec), "--resume", cwd=tmp)
    # the fixed cost of a start: Ray, the driver, and trial workers (a torch import each), for trials of one step
    restart_s = _timed("run", str(_spec(tmp, f"{study}-restart", 20, 1)), cwd=tmp)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    return {"killed_run_s": killed_s, "resume_s": resume_s, "restart_s": restart_s, "lease_wait_s": LEASE_S,
            "states": [t.state.name for t in trials], "resumed_from": [t.user_attrs.get("resumed_from", 0) for t in trials]}


def resume_savings(steps: int) -> dict:
    """Part 2: an uninterrupted job against a killed and resumed one, with and without mid-trial checkpoints."""
    with tempfile.TemporaryDirectory(prefix="bmo-ckpt-bench-") as tmp:
        tmp = Path(tmp)
        uninterrupted = _timed("run", str(_spec(tmp, "straight", steps, steps // 20)), cwd=tmp)
        with_checkpoints = _killed_then_resumed(tmp, "resumed", steps, steps // 20)
        from_step_1 = _killed_then_resumed(tmp, "from-step-1", steps, steps)
    out = {"uninterrupted_s": uninterrupted, "with_checkpoints": with_checkpoints, "from_step_1": from_step_1}
    for run in (with_checkpoints, from_step_1):
        run["ratio"] = (run["killed_run_s"] + run["resume_s"] - run["restart_s"]) / uninterrupted
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="outer steps of part 2's trials (default 8000)")
    parser.add_argument("--timing-steps", type=int, default=6, help="outer steps timed per spec in part 1")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the quick start spec, short trials")
    parser.add_argument("--output", default=str(HERE / "results" / "checkpoints.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    specs = ("quickstart",) if args.quick else SPECS
    steps = 400 if args.quick else args.steps
    costs = []
    for name in specs:
        print(f"timing {name} ...", flush=True)
        costs.append(checkpoint_costs(name, 3 if args.quick else args.timing_steps))
    print(f"killing and resuming a job of 2 trials x {steps} steps ...", flush=True)
    resume = resume_savings(steps)
    goals = {
        "default cadence < 2% of training on every shipped spec": all(c["default_share_of_training"] < 0.02 for c in costs),
        "killed job <= 1.1x an uninterrupted one (plus restart)": resume["with_checkpoints"]["ratio"] <= 1.1,
        "every trial COMPLETE after the resume": all(s == "COMPLETE" for s in resume["with_checkpoints"]["states"]),
    }
    result = {"machine": machine_info(**torch_info("cpu")), "quick": args.quick, "costs": costs, "resume": resume,
              "goals": goals}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'spec':<15}{'step s':>9}{'trial s':>10}{'ckpt ms':>9}{'state KiB':>11}{'solver KiB':>12}{'share':>8}")
    for c in costs:
        print(f"{c['spec']:<15}{c['step_s']:>9.4f}{c['trial_training_s']:>10.1f}{1000 * c['checkpoint_s']:>9.2f}"
              f"{c['state_bytes'] / 1024:>11.1f}{c['solver_bytes'] / 1024:>12.1f}{100 * c['default_share_of_training']:>7.2f}%")
    print(f"\n{'run':<34}{'wall s':>9}{'ratio':>8}")
    print(f"{'uninterrupted':<34}{resume['uninterrupted_s']:>9.1f}{1.0:>8.2f}")
    for name, run in (("killed + resume, checkpoints", resume["with_checkpoints"]),
                      ("killed + resume, from step 1", resume["from_step_1"])):
        print(f"{name:<34}{run['killed_run_s'] + run['resume_s']:>9.1f}{run['ratio']:>8.2f}   "
              f"(restart {run['restart_s']:.1f} s; resumed from {run['resumed_from']})")
    print_goals(goals)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
