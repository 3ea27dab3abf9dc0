"""Latency of optuna-dashboard's study page on a 1,000-trial study, through the WSGI app in process.

The study (in a temporary SQLite file, WAL mode as `hpo run` writes it) has ``--trials`` trials
(85% complete, 10% pruned, 5% failed), each with 8 parameters, 20 intermediate values (pruned
ones fewer) and 6 user attributes, like the trials `hpo run` records. The requests are those the
single-page app makes when a study is opened (logged from headless Chromium): the page and its
script, ``/api/meta``, the study detail ``/api/studies/ID?after=0`` and
``/api/studies/ID/param_importances``; then it polls ``/api/studies/ID?after=N`` (every 10 s by
default at this size), and the home page lists ``/api/studies``.

optuna-dashboard caches a study's trials for 2-10 s (10 s above 500 trials) and the parameter
importances until the number of complete trials changes, so each request is timed twice:
``cold`` clears those caches first (the first open, and a poll after the cache expired: at this
size the default 10-second poll about always finds it expired), ``warm`` does not (another
browser tab within 10 s). Each: one warm-up, then the median of ``--repeats``.

    python benchmarks/dashboard_scale.py [--trials 1000] [--repeats 5]

Writes ``benchmarks/results/dashboard_scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from machine import machine_info  # noqa: E402  (benchmarks/machine.py)


def build_study(url: str, n_trials: int, seed: int = 0) -> tuple[int, float]:
    """Create study 'scale' with ``n_trials`` trials in one ``add_trials`` call; its id and the seconds taken."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from hpo.storage import open_storage

    rng = random.Random(seed)
    dists = {
        "mu": FloatDistribution(0.0, 0.3),
        "gamma": FloatDistribution(2e-4, 5e-3, log=True),
        "s0": FloatDistribution(0.5, 2.0),
        "s_power": FloatDistribution(0.0, 1.0),
        "lam": FloatDistribution(0.02, 0.5, log=True),
        "K": IntDistribution(4, 32),
        "hypergrad": CategoricalDistribution(["unroll", "truncated", "jfb", "implicit"]),
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
    }
    trials = []
    for number in range(n_trials):
        r = rng.random()
        state = TrialState.COMPLETE if r < 0.85 else TrialState.PRUNED if r < 0.95 else TrialState.FAIL
        params = {name: d.to_external_repr(d.to_internal_repr(_sample(rng, d))) for name, d in dists.items()}
        steps = 20 if state == TrialState.COMPLETE else rng.randint(2, 19)
        curve = [-2.0 - 8.0 * (1 - (k + 1) ** -0.5) * rng.uniform(0.7, 1.0) for k in range(steps)]
        attrs = {"fp_residual": rng.uniform(1e-4, 1e-2), "final_step": 100 * steps, "wall_time_s": rng.uniform(5, 60),
                 "device": "cpu", "node": f"10.0.0.{rng.randint(1, 8)}", "ray_trial_id": f"{rng.getrandbits(32):08x}"}
        trials.append(create_trial(
            state=state, value=curve[-1] if state == TrialState.COMPLETE else None,
            params=params, distributions=dists, user_attrs=attrs,
            intermediate_values={100 * (k + 1): v for k, v in enumerate(curve)},
        ))
    storage = open_storage(url)
    study = optuna.create_study(study_name="scale", storage=storage, direction="minimize")
    t0 = time.perf_counter()
    study.add_trials(trials)
    return study._study_id, time.perf_counter() - t0


def _sample(rng: random.Random, d):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return rng.choice(d.choices)
    if isinstance(d, IntDistribution):
        return rng.randint(d.low, d.high)
    return rng.uniform(d.low, d.high)


def call(app, path: str) -> tuple[int, int]:
    """GET ``path`` from a WSGI app in process; the status and the body's size in bytes."""
    from wsgiref.util import setup_testing_defaults

    route, _, query = path.partition("?")
    environ = {"PATH_INFO": route, "QUERY_STRING": query, "HTTP_ACCEPT_ENCODING": "gzip", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    status = []
    body = app(environ, lambda s, headers, exc_info=None: status.append(int(s.split()[0])))
    size = sum(len(chunk) for chunk in body)
    if hasattr(body, "close"):
        body.close()
    return status[0], size


def clear_caches(app) -> None:
    """Forget the dashboard's trial, study-property and parameter-importance caches."""
    from optuna_dashboard import _importance

    app._inmemory_cache.clear()
    with _importance.param_importance_cache_lock:
        _importance.param_importance_cache.clear()


def time_request(app, path: str, repeats: int, cold: bool) -> dict:
    """One warm-up, then ``repeats`` timed calls; the median and all times in ms, status and size."""
    times = []
    for i in range(repeats + 1):
        if cold:
            clear_caches(app)
        t0 = time.perf_counter()
        status, size = call(app, path)
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"GET {path}: status {status}")
        if i:
            times.append(elapsed * 1000)
    return {"median_ms": statistics.median(times), "ms": times, "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(HERE / "results" / "dashboard_scale.json"))
    args = parser.parse_args()

    import optuna
    import optuna_dashboard

    from hpo.dashboard import make_app

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'studies.db'}"
        study_id, build_s = build_study(url, args.trials)
        print(f"created {args.trials} trials in {build_s:.1f}s", flush=True)
        app = make_app(url)
        n = args.trials
        requests = {
            "page /dashboard/studies/ID": f"/dashboard/studies/{study_id}",
            "script /static/bundle.js (gzip)": "/static/bundle.js",
            "/api/meta": "/api/meta",
            "detail /api/studies/ID?after=0": f"/api/studies/{study_id}?after=0",
            "/api/studies/ID/param_importances": f"/api/studies/{study_id}/param_importances",
            f"poll /api/studies/ID?after={n}": f"/api/studies/{study_id}?after={n}",
            "list /api/studies": "/api/studies",
        }
        rows = {}
        for name, path in requests.items():
            rows[name] = {"path": path, "cold": time_request(app, path, args.repeats, cold=True),
                          "warm": time_request(app, path, args.repeats, cold=False)}
            print(f"  {name}: cold {rows[name]['cold']['median_ms']:.1f} ms, warm {rows[name]['warm']['median_ms']:.1f} ms",
                  flush=True)

    opening = ["page /dashboard/studies/ID", "script /static/bundle.js (gzip)", "/api/meta",
               "detail /api/studies/ID?after=0", "/api/studies/ID/param_importances"]
    result = {
        "machine": machine_info(optuna=optuna.__version__, optuna_dashboard=optuna_dashboard.__version__),
        "setup": {"trials": args.trials, "params_per_trial": 8, "intermediate_values_per_complete_trial": 20,
                  "user_attrs_per_trial": 6, "states": "85% complete, 10% pruned, 5% failed",
                  "storage": "sqlite (WAL), temporary file", "repeats": args.repeats,
                  "client": "the WSGI app called in process (no sockets)"},
        "build_study_s": build_s,
        "requests": rows,
        "open_study_page_cold_ms": sum(rows[r]["cold"]["median_ms"] for r in opening),
        "open_study_page_warm_ms": sum(rows[r]["warm"]["median_ms"] for r in opening),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\noptuna-dashboard {optuna_dashboard.__version__}, study of {args.trials} trials "
          f"(median of {args.repeats} after a warm-up; cold = dashboard caches cleared)")
    print(f"{'request':<40}{'cold ms':>10}{'warm ms':>10}{'KiB':>10}")
    for name, row in rows.items():
        print(f"{name:<40}{row['cold']['median_ms']:>10.1f}{row['warm']['median_ms']:>10.1f}{row['cold']['bytes'] / 1024:>10.1f}")
    print(f"{'opening the study page (sum)':<40}{result['open_study_page_cold_ms']:>10.1f}{result['open_study_page_warm_ms']:>10.1f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
