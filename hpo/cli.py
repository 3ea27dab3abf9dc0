"""The ``hpo`` command. Heavy imports (Ray, Optuna, torch) happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

from hpo import __version__
from hpo.errors import HPOError, UsageError
from hpo.spec import DEFAULT_STORAGE, TOP_LEVEL


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"bmo-hpo {__version__}")
    return 0


def _parse_assignments(pairs: list[str]) -> dict:
    """``key=value`` strings → dict, values parsed as YAML scalars (``3`` → int, ``true`` → bool)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _find_modules_here() -> None:
    """Let a ``module:Class`` task live in the current directory, as with ``python -m``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _cmd_train(args: argparse.Namespace) -> int:
    """Train one BMO model (no tuning) and print its progress and final validation figures."""
    if args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    import torch

    from workers import TASKS, BMOConfig, BMOError, make_problem, split_settings, train
    from workers.testing import interface_error

    torch.set_num_threads(args.threads)
    _find_modules_here()
    config_values, task_args = split_settings(_parse_assignments(args.set))
    try:
        problem = make_problem(args.task, task_args)
        config = BMOConfig.from_dict(config_values)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.task not in TASKS:  # your own problem: the conformance checks first, so that a mistake is one line
        error = interface_error(lambda: make_problem(args.task, task_args), config)
        if error is not None:
            raise UsageError(f"{args.task} fails the conformance check {error} (`hpo check {args.task}` runs every check)")
    if args.init_from:
        from workers import SolverFileError, load_weights

        try:
            meta = load_weights(problem, args.init_from)
        except SolverFileError as e:
            raise UsageError(f"--init-from: {e}") from None
        print(f"ω starts from {args.init_from} (a {meta['task']} solver)", flush=True)
    every = max(1, config.outer_steps // 10)

    def report(step: int, m: dict) -> None:
        if step % every == 0 or step == config.outer_steps:
            vals = "  ".join(f"{k}={v:.4g}" for k, v in m.items() if k.startswith("val_"))
            print(f"step {step:>6}/{config.outer_steps}  upper_loss={m['upper_loss']:.4g}  "
                  f"fp_residual={m['fp_residual']:.3g}  {vals}  [{m['seconds']:.1f}s]", flush=True)

    try:
        result = train(problem, config, report=report)
    except BMOError as e:
        print(f"hpo: error: {e}", file=sys.stderr)
        return 1
    print(f"done in {result.seconds:.1f}s on {result.device}: " + "  ".join(f"{k}={v:.4g}" for k, v in result.final.items()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Run the conformance checks (``workers.testing``) on a task's Problem: one line per check."""
    import dataclasses

    import torch

    from workers import make_problem, split_settings
    from workers.testing import CONFIG, run_checks

    torch.set_num_threads(1)
    _find_modules_here()
    config_values, task_args = split_settings(_parse_assignments(args.set))
    try:
        config = dataclasses.replace(CONFIG, **config_values)
        make_problem(args.task, task_args)  # an unknown task or argument, or a value the task refuses
    except ValueError as e:
        raise UsageError(str(e)) from None
    except Exception:  # noqa: BLE001 - a bug in the constructor: run_checks reports it as the check "build"
        pass
    results = run_checks(lambda: make_problem(args.task, task_args), config)
    for name, error in results:
        print(f"ok  {name}" if error is None else f"FAIL {name}: {error}")
    return 1 if any(error is not None for _, error in results) else 0


def _spec_overrides(args: argparse.Namespace) -> dict:
    """The command line's changes to the spec, as dotted keys; prints each one that pins a searched parameter."""
    from hpo.spec import apply_override, read_spec_data

    overrides = {}
    for key, value in _parse_assignments(args.set).items():
        overrides[key if "." in key or key in TOP_LEVEL else f"fixed.{key}"] = value
    if args.trials is not None:
        overrides["trials"] = args.trials
    if args.storage is not None:
        overrides["storage"] = args.storage
    if args.study is not None:
        overrides["study"] = args.study
    if getattr(args, "seed_from", None) is not None:
        overrides["seed_from"] = args.seed_from
    data = read_spec_data(args.spec)
    for key, value in overrides.items():
        if isinstance(data, dict) and apply_override(data, key, value):
            print(f"pinned {key.split('.', 1)[1]}={value} (taken out of the search space)", flush=True)
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) a tuning job from a spec."""
    from hpo.driver import print_result, run_job
    from hpo.spec import load_spec

    _find_modules_here()
    spec = load_spec(args.spec, _spec_overrides(args))

    def out(line: str) -> None:
        print(line, flush=True)

    result = run_job(spec, address=args.address, resume=args.resume, out=out)
    argv = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[1:2] == ["run"] else ["run", args.spec]
    print_result(result, out, resume_command=shlex.join(["hpo", *argv, "--resume"]))
    if result.interrupted:
        return 130  # the shell's code for a job stopped by Ctrl-C
    return 0 if result.complete else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    """Submit a tuning job to a Ray cluster through Ray Jobs."""
    from hpo.jobs import submit
    from hpo.spec import parse_spec, read_spec_data

    data = read_spec_data(args.spec, _spec_overrides(args))
    spec = parse_spec(data, source=args.spec)
    job_id, spec = submit(data, spec, args.address)
    print(f"submitted job {job_id}: study {spec.study!r}, {spec.trials} trials")
    print(f"storage on the head node: {spec.storage}")
    print(f"follow it:  hpo jobs logs {job_id} --follow --address {args.address}")
    print(f"Ray dashboard: {args.address}   (study dashboard: `hpo dashboard --storage URL` on the head node)")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    """List jobs, or show the status or logs of one, or stop it."""
    from hpo import jobs
    from hpo.results import format_table

    if args.action == "list":
        rows = jobs.list_jobs(args.address)
        print(format_table(rows, ["job", "status", "study", "started", "entrypoint"]) if rows else "no jobs")
        return 0
    if not args.job_id:
        raise UsageError(f"hpo jobs {args.action} needs a job id")
    if args.action == "status":
        info = jobs.status(args.address, args.job_id)
        print(f"{info['job']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
    elif args.action == "logs":
        jobs.logs(args.address, args.job_id, follow=args.follow, out=print)
    else:
        stopped = jobs.stop(args.address, args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _cmd_studies(args: argparse.Namespace) -> int:
    """List the studies in a storage."""
    from hpo.results import format_table, list_studies

    rows = list_studies(args.storage)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(f"no studies in {args.storage}")
    else:
        print(format_table(rows, ["study", "directions", "trials", "complete", "pruned", "failed", "running", "best"]))
    return 0


def _cmd_trials(args: argparse.Namespace) -> int:
    """Print a study's trials as a table."""
    from hpo.results import format_table, trials_rows

    rows, columns = trials_rows(args.storage, args.study)
    print(format_table(rows, columns) if rows else f"study {args.study!r} has no trials")
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    """Print the best trial (or the Pareto front)."""
    from hpo.results import best_trials

    best = best_trials(args.storage, args.study)
    if args.json:
        print(json.dumps(best if len(best) > 1 else best[0], indent=2, default=str))
        return 0
    for b in best:
        print(f"trial {b['number']}: values={b['values']}")
        for name, value in b["params"].items():
            print(f"  {name} = {value}")
        for name, value in b["user_attrs"].items():
            print(f"  [{name}] {value}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a study's trials as CSV or JSON, to stdout or --output."""
    from hpo.results import export, write_atomically

    text = export(args.storage, args.study, args.format)
    if args.output:
        write_atomically(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    """Write a trial's trained solver (default: the best trial's) to a file."""
    from hpo.models import download_solver, solver_meta, solver_trial
    from hpo.results import load

    if args.trial is not None and args.trial < 0:
        raise UsageError(f"--trial must be a trial number >= 0, got {args.trial}")
    study = load(args.storage, args.study)
    trial = solver_trial(study, args.trial)
    out = args.output or f"{re.sub(r'[^A-Za-z0-9._-]+', '_', args.study)}-trial{trial.number}-solver.pt"
    download_solver(args.storage, trial, out)
    meta = solver_meta(args.storage, trial) or {}
    names = study.metric_names or ["value" if len(study.directions) == 1 else f"value_{i}" for i in range(len(study.directions))]
    values = ", ".join(f"{n}={v:.5g}" for n, v in zip(names, trial.values)) if trial.values else "no value"
    print(f"wrote {out}: {meta.get('task', 'the')} solver of trial {trial.number} ({values}); load it with "
          f"workers.load_solver({out!r}) or run it with `hpo apply {shlex.quote(str(out))} --input IN --output OUT`")
    return 0


def _replace_file(path: Path, write) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_png(path: Path, task: str):
    """A grayscale PNG (8- or 16-bit) as a float array in [0, 1]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    expect = f"a {task} solver reads grayscale PNG images"
    try:
        with Image.open(path) as image:
            kind, mode = image.format, image.mode
            pixels = np.asarray(image) if kind == "PNG" else None
    except UnidentifiedImageError:
        raise UsageError(f"--input {path} is not an image; {expect}") from None
    except OSError as e:  # a truncated or damaged file
        raise UsageError(f"--input {path}: cannot read the image ({e}); {expect}") from None
    if kind != "PNG":
        raise UsageError(f"--input {path} is a {kind} image; {expect}")
    scale = {"1": 1, "L": 255, "I;16": 65535, "I;16B": 65535, "I": 65535}.get(mode)
    if scale is None:
        raise UsageError(f"--input {path} is a PNG of mode {mode} (colour or alpha); {expect} (8- or 16-bit): convert it first")
    return pixels.astype(np.float64) / scale


def _read_npy(path: Path, task: str):
    """A finite 1-D or 2-D numeric ``.npy`` array."""
    import numpy as np

    expect = f"a {task} solver reads a .npy array of one observation (m,) or a batch (B, m)"
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UsageError(f"--input {path} is not a .npy array; {expect}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise UsageError(f"--input {path} is an .npz archive, not a .npy array; {expect}")
    if array.dtype.kind not in "fiu" or array.ndim not in (1, 2):
        raise UsageError(f"--input {path} holds a {array.dtype} array of shape {array.shape}; {expect}")
    if not np.isfinite(array).all():
        raise UsageError(f"--input {path} has NaN or infinite entries")
    return array


def _cmd_apply(args: argparse.Namespace) -> int:
    """Run a trained solver on an observation file and write the estimate."""
    if args.K is not None and args.K < 1:
        raise UsageError(f"--K must be a positive integer, got {args.K}")
    source, out = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"--input {source}: no such file")
    if not out.parent.is_dir():
        raise UsageError(f"--output {out}: directory {str(out.parent)!r} does not exist")
    import numpy as np
    import torch

    from workers import apply_solver, load_solver
    from workers.checks import CheckError

    torch.set_num_threads(1)
    _find_modules_here()
    try:
        solver = load_solver(args.file, device=args.device)
    except ValueError as e:  # SolverFileError, or a device torch does not see
        raise UsageError(str(e)) from None
    problem, task = solver.problem, solver.meta["task"]
    kind = problem.observation_kind
    if kind not in ("image", "vector"):
        raise UsageError(f"{task}: observation_kind must be 'image' or 'vector', got {kind!r}")
    suffix = ".png" if kind == "image" else ".npy"
    if out.suffix.lower() != suffix:
        raise UsageError(f"--output {out}: a {task} solver writes {suffix} files")
    if kind == "image":
        observed = _read_png(source, task)
        y = torch.from_numpy(observed)[None, None]
    else:
        observed = _read_npy(source, task)
        y = torch.from_numpy(observed.astype(np.float64))
        y = y[None] if y.ndim == 1 else y
    K = args.K or solver.config.eval_steps
    try:
        estimate = apply_solver(solver, y, K=K).detach().cpu().numpy()
    except (ValueError, NotImplementedError) as e:  # the observation does not fit the task (observation_batch)
        if isinstance(e, CheckError) and e.field == "y":  # observation_batch's check of the observation y
            raise UsageError(f"--input {source}: a {task} solver expects {e.expected}, got {e.got!r}") from None
        raise UsageError(f"--input {source}: {e}") from None
    if kind == "image":
        from PIL import Image

        pixels = np.round(np.clip(estimate[0, 0], 0.0, 1.0) * 65535).astype(np.uint16)
        _replace_file(out, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
        shape = f"{pixels.shape[0]}x{pixels.shape[1]}, 16-bit"
    else:
        estimate = estimate.reshape(-1) if observed.ndim == 1 else estimate
        _replace_file(out, lambda f: np.save(f, estimate))
        shape = f"shape {estimate.shape}"
    assumes = problem.degradation()
    print(f"wrote {out} ({shape}): {task} solver, {K} steps" + (f"; it assumes {assumes}" if assumes else ""))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard over a storage until Ctrl-C (loopback only unless --allow-remote)."""
    from hpo.dashboard import serve

    serve(args.storage, host=args.host, port=args.port, allow_remote=args.allow_remote,
          artifact_dir=args.artifacts, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="hpo", description="Tune BMO solvers with Ray Tune and Optuna.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)
    _add_training_commands(sub)
    _add_cluster_commands(sub)
    _add_result_commands(sub)
    _add_solver_and_dashboard_commands(sub)
    return parser


def _with_storage(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
    return p


def _add_training_commands(sub) -> None:
    """train, check and run: one model, a problem's conformance, a tuning job."""
    p = sub.add_parser("train", help="train one BMO model on a task, without tuning")
    p.add_argument("task", help="registry name (e.g. sparse_coding) or module:Class of your own Problem")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a BMOConfig field or task argument, e.g. --set mu=0.1 --set m=250 (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest per process on CPU)")
    p.add_argument("--init-from", metavar="FILE", help="start ω from this solver file (from `hpo model`): fine-tuning")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("check", help="run the conformance checks on a task's Problem (yours: module:Class)")
    p.add_argument("task", help="registry name or module:Class of your own Problem (found in the current directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a task argument, or a BMOConfig field of the solver checks (default K=4, mu=0.1); repeatable")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="run (or --resume) a tuning job from a YAML spec")
    p.add_argument("spec", help="job spec (YAML), e.g. search_spaces/quickstart.yaml")
    p.add_argument("--trials", type=int, help="total trials in the study (overrides the spec)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///hpo-results/studies.db or postgresql://host/db")
    p.add_argument("--study", help="study name (overrides the spec)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value: a top-level field, a dotted path (task_args.m=32), "
                        "or a bare BMOConfig field (K=8 means fixed.K=8); repeatable")
    p.add_argument("--address", help="join this Ray cluster (default: start an embedded local Ray)")
    p.add_argument("--resume", action="store_true", help="finish the spec's existing study after an interrupted run")
    p.add_argument("--seed-from", metavar="STUDY",
                   help="start a new study with the best 5 configurations of STUDY (same storage), fitted to this space")
    p.set_defaults(func=_cmd_run)



def _add_cluster_commands(sub) -> None:
    """submit and jobs: tuning jobs on a Ray cluster through Ray Jobs."""
    p = sub.add_parser("submit", help="submit a tuning job to a Ray cluster (Ray Jobs)")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--address", default=None, help="the cluster's jobs API (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--trials", type=int, help="total trials in the study (overrides the spec)")
    p.add_argument("--storage", help="Optuna storage URL as seen from the head node (absolute SQLite path or PostgreSQL)")
    p.add_argument("--study", help="study name (overrides the spec)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec value (as for run)")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="list jobs, or the status / logs of one, or stop it")
    p.add_argument("action", choices=("list", "status", "logs", "stop"))
    p.add_argument("job_id", nargs="?")
    p.add_argument("--address", default=None, help="the cluster's jobs API (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--follow", "-f", action="store_true", help="with logs: stream until the job ends")
    p.set_defaults(func=_cmd_jobs)


def _add_result_commands(sub) -> None:
    """studies, trials, best, export and model: reading a storage back."""
    p = _with_storage(sub.add_parser("studies", help="list the studies in a storage"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_studies)
    p = _with_storage(sub.add_parser("trials", help="a study's trials as a table"))
    p.add_argument("study")
    p.set_defaults(func=_cmd_trials)
    p = _with_storage(sub.add_parser("best", help="a study's best trial (Pareto front if multi-objective)"))
    p.add_argument("study")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_best)
    p = _with_storage(sub.add_parser("export", help="export a study's trials"))
    p.add_argument("study")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=_cmd_export)
    p = _with_storage(sub.add_parser("model", help="write a trial's trained solver to a file (default: the best trial's)"))
    p.add_argument("study")
    p.add_argument("--trial", type=int, help="trial number (default: the best trial; needed for multi-objective studies)")
    p.add_argument("--output", "-o", metavar="FILE", help="where to write it (default: STUDY-trialN-solver.pt here; replaced if present)")
    p.set_defaults(func=_cmd_model)


def _add_solver_and_dashboard_commands(sub) -> None:
    """apply (a trained solver on a user's data) and dashboard."""
    p = sub.add_parser("apply", help="run a trained solver on your data: a grayscale PNG (image tasks) or a .npy array")
    p.add_argument("file", help="solver file (from `hpo model`, or solver.pt from workers.save_solver)")
    p.add_argument("--input", "-i", required=True, metavar="IN", help="the observation: a grayscale PNG, or .npy (m,) or (B, m)")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="where to write the estimate: a 16-bit PNG, or .npy")
    p.add_argument("--K", type=int, help="solver steps (default: the solver's eval_K, else K)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default: where it was trained, when available)")
    p.set_defaults(func=_cmd_apply)
    p = _with_storage(sub.add_parser("dashboard", help="serve optuna-dashboard over the storage (on 127.0.0.1)"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; anything but loopback needs --allow-remote)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true",
                   help="serve on a non-loopback address although the dashboard has no authentication")
    p.add_argument("--artifacts", metavar="DIR",
                   help="trial artifact directory (default: artifacts/ beside a SQLite storage, else hpo-results/artifacts)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.set_defaults(func=_cmd_dashboard)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if getattr(args, "address", "") is None and args.func in (_cmd_submit, _cmd_jobs):
        from hpo.jobs import default_address

        args.address = default_address()
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except HPOError as e:  # every user error (UsageError, SpecError, ...): one line, exit code 2
        print(f"hpo: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left early (`hpo best --json | head -1`): not worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
