"""The Ray Tune function trainable: searched params + the job's fixed settings → problem + BMO → tune.report.

The only module of ``workers`` that imports Ray. It reports validations (every
``eval_every`` outer steps), at most one per ``report_interval`` seconds and
always the last step, with ``outer_step`` as the time attribute. A divergence, a bad parameter
combination or an exception in the task's code is reported as a failed result (``diverged`` /
``trial_error``, with ``trial_traceback``) and the trial ends normally, so the driver records the
reason and the job goes on. Nothing the task does raises out of the trainable: an error Tune sees
is the trial's worker or node going away (a dead node, a killed process), which Tune retries
(``max_retries``); retrying a bug in the task would only fail again.
"""

from __future__ import annotations

import base64
import math
import socket
import time
import traceback
from typing import Any

import ray
import torch
from ray import tune

from workers.bmo import BMOConfig, DivergenceError, evaluate_solve, train
from workers.tasks import make_problem, split_settings


def _worst(objectives: list[tuple[str, str]]) -> dict[str, float]:
    return {key: (math.inf if mode == "min" else -math.inf) for key, mode in objectives}


def _artifacts(problem, config: BMOConfig, history: list[dict], metric: str) -> dict[str, str]:
    """The trial's figures as base64 PNGs under ``artifact:<file name>`` keys (the driver stores them)."""
    from workers.figures import convergence_png, restoration_png

    K = config.eval_steps
    batch = next(iter(problem.batches("val")))
    _, per_layer = evaluate_solve(problem, batch, config, K=2 * K, trace=True)
    figures = {"convergence.png": convergence_png([m["fp_residual"] for m in per_layer], K, history, metric)}
    test = next(iter(problem.batches("test")))
    if getattr(test, "x", None) is not None and test.x.ndim == 4:  # an image task: show a restoration
        u, _ = evaluate_solve(problem, test, config)
        restored = problem.estimate(u, test)
        quality = ", ".join(f"{k}={v:.4g}" for k, v in problem.metrics(u, test).items())
        names = ", ".join(getattr(test, "names", ()) or ())
        image = lambda t: t[0, 0].detach().float().cpu().numpy()  # noqa: E731
        figures["restoration.png"] = restoration_png(image(test.y), image(restored), image(test.x), f"{names} {quality}".strip())
    return {f"artifact:{name}": base64.b64encode(png).decode("ascii") for name, png in figures.items()}


def trainable(params: dict[str, Any], *, job: dict[str, Any]) -> None:
    """Train one BMO model with ``params`` (searched) over ``job`` (task, task_args, fixed, objectives, threads)."""
    torch.set_num_threads(job.get("threads", 1))
    config_values, task_args = split_settings({**job["fixed"], **params})
    objectives = [tuple(o) for o in job["objectives"]]
    base = {"outer_step": 0, "outer_steps": config_values.get("outer_steps", BMOConfig.outer_steps),
            "node": socket.gethostname(), "ray_node": ray.get_runtime_context().get_node_id()[:12],
            "gpus": [str(g) for g in ray.get_gpu_ids()]}  # the (logical) GPUs Ray gave this trial, shared when fractional

    def failed(message: str) -> None:
        tune.report({**base, **_worst(objectives), "trial_error": message, "trial_traceback": traceback.format_exc()[-4000:]})

    try:
        config = BMOConfig.from_dict(config_values)
        problem = make_problem(job["task"], {**job["task_args"], **task_args})
    except (ValueError, TypeError) as e:
        failed(f"invalid settings: {e}")
        return
    except Exception as e:  # the task's own code (an import, a constructor) is broken: fail, never retry
        failed(f"the task could not be built: {type(e).__name__}: {e}")
        return

    interval = job.get("report_interval", 0.0)
    last_report = [time.monotonic()]
    history: list[dict[str, float]] = []

    def report(step: int, metrics: dict[str, float]) -> None:
        if metrics["val_step"] != step:
            return
        history.append({"step": step, **{k: v for k, v in metrics.items() if k == "upper_loss" or k.startswith("val_")}})
        now = time.monotonic()
        if step != config.outer_steps and now - last_report[0] < interval:
            return  # each report costs Tune a few ms; at most one per interval, and always the last step
        last_report[0] = now
        out = {**base, **metrics, "outer_step": step, "device": str(problem.device)}
        if step == config.outer_steps:
            out.update({f"refined_{k}": v for k, v in problem.learned_values().items()})
            if job.get("artifacts", False):
                out.update(_artifacts(problem, config, history, job["objectives"][0][0].removeprefix("val_")))
        tune.report(out)

    try:
        train(problem, config, report=report)
    except DivergenceError as e:
        tune.report({**base, **_worst(objectives), "outer_step": e.outer_step, "diverged": str(e)})
    except Exception as e:  # a bug or a resource error in the task: reported, not raised (Tune would retry it)
        failed(f"{type(e).__name__}: {e}")
