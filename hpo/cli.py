"""The ``hpo`` command. Heavy imports (Ray, Optuna, torch) happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hpo import __version__
from hpo.errors import HPOError
from hpo.spec import DEFAULT_STORAGE, TOP_LEVEL


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


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

    from workers import BMOConfig, BMOError, make_problem, split_settings, train

    torch.set_num_threads(args.threads)
    _find_modules_here()
    config_values, task_args = split_settings(_parse_assignments(args.set))
    try:
        problem = make_problem(args.task, task_args)
        config = BMOConfig.from_dict(config_values)
    except ValueError as e:
        raise UsageError(str(e)) from None
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


def _spec_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for key, value in _parse_assignments(args.set).items():
        overrides[key if "." in key or key in TOP_LEVEL else f"fixed.{key}"] = value
    if args.trials is not None:
        overrides["trials"] = args.trials
    if args.storage is not None:
        overrides["storage"] = args.storage
    if args.study is not None:
        overrides["study"] = args.study
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
    print_result(result, out)
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
        print(format_table(rows, ["job", "status", "study", "start_time", "entrypoint"]) if rows else "no jobs")
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

    p = sub.add_parser("train", help="train one BMO model on a task, without tuning")
    p.add_argument("task", help="registry name (e.g. sparse_coding) or module:Class of your own Problem")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a BMOConfig field or task argument, e.g. --set mu=0.1 --set m=250 (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest per process on CPU)")
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_run)

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

    def with_storage(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
        return p

    p = with_storage(sub.add_parser("studies", help="list the studies in a storage"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_studies)
    p = with_storage(sub.add_parser("trials", help="a study's trials as a table"))
    p.add_argument("study")
    p.set_defaults(func=_cmd_trials)
    p = with_storage(sub.add_parser("best", help="a study's best trial (Pareto front if multi-objective)"))
    p.add_argument("study")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_best)
    p = with_storage(sub.add_parser("export", help="export a study's trials"))
    p.add_argument("study")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=_cmd_export)
    p = with_storage(sub.add_parser("dashboard", help="serve optuna-dashboard over the storage (on 127.0.0.1)"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; anything but loopback needs --allow-remote)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true",
                   help="serve on a non-loopback address although the dashboard has no authentication")
    p.add_argument("--artifacts", metavar="DIR",
                   help="trial artifact directory (default: artifacts/ beside a SQLite storage, else hpo-results/artifacts)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.set_defaults(func=_cmd_dashboard)
    return parser


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
        return args.func(args)
    except (UsageError, HPOError) as e:
        print(f"hpo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
