"""The Ray Tune function trainable: searched params + the job's fixed settings → problem + BMO → tune.report.

The only module of ``workers`` that imports Ray; the keys it reports are ``workers.protocol``'s.

- Reports follow the solver, not the clock: every validation (``eval_every`` outer steps), every
  checkpoint and the last step are reported, with ``outer_step`` as the time attribute, so a
  scheduler sees the same rungs on any hardware.
- Every ``checkpoint_every`` outer steps the full training state goes to Tune as a checkpoint
  (``state.pt``: ``workers.bmo.TrainState`` plus the validation history its figures need). A
  trial Tune restarts after a lost worker or node continues from ``tune.get_checkpoint()``; a
  trial the driver hands out again after a restart continues from ``RESUME_FROM``.
- The last step's checkpoint also holds the trained solver (``solver.pt``, ``solver.json``) and
  the trial's figures; the driver stores them as the trial's artifacts.
- A divergence, a bad parameter combination or an exception in the task's code is reported as a
  failed result (``diverged`` / ``trial_error``, with ``trial_traceback``) and the trial ends
  normally, so the driver records the reason and the job goes on. Nothing the task does raises out
  of the trainable: an error Tune sees is the trial's worker or node going away, which Tune retries
  (``max_retries``); retrying a bug in the task would only fail again.
"""

from __future__ import annotations

import math
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from workers import protocol as P
from workers.bmo import BMOConfig, DivergenceError, TrainState, evaluate, evaluate_solve, train
from workers.tasks import make_problem, split_settings


class _Unusable(Exception):
    """The last step's objective or fixed-point residual is no usable value."""


def _worst(objectives: list[tuple[str, str]]) -> dict[str, float]:
    return {key: (math.inf if mode == "min" else -math.inf) for key, mode in objectives}


def write_figures(directory: Path, problem, config: BMOConfig, history: list[dict], metric: str) -> None:
    """The trial's figures as PNG files in ``directory``: convergence, and a restoration for image tasks."""
    from workers.figures import convergence_png, restoration_png

    K = config.eval_steps
    batch = next(iter(problem.batches("val")))
    _, per_layer = evaluate_solve(problem, batch, config, K=2 * K, trace=True)
    (directory / "convergence.png").write_bytes(convergence_png([m["fp_residual"] for m in per_layer], K, history, metric))
    test = next(iter(problem.batches("test")))
    if getattr(test, "x", None) is not None and test.x.ndim == 4:  # an image task: show a restoration
        u, _ = evaluate_solve(problem, test, config)
        restored = problem.estimate(u, test)
        quality = ", ".join(f"{k}={v:.4g}" for k, v in problem.metrics(u, test).items())
        names = ", ".join(getattr(test, "names", ()) or ())
        image = lambda t: t[0, 0].detach().float().cpu().numpy()  # noqa: E731
        png = restoration_png(image(test.y), image(restored), image(test.x), f"{names} {quality}".strip())
        (directory / "restoration.png").write_bytes(png)


def default_checkpoint_every(outer_steps: int) -> int:
    """Outer steps between checkpoints when the spec sets none: at a quarter, half, three quarters and the end."""
    return max(1, math.ceil(outer_steps / 4))


class Best:
    """The best validation values seen (``objective.value: best``) and ω's state at the first objective's best."""

    def __init__(self, values: dict[str, float] | None = None, step: int = 0, state: dict | None = None):
        self.values, self.step, self.state = dict(values or {}), step, state

    def see(self, step: int, metrics: dict[str, float], objectives: list[tuple[str, str]], problem) -> None:
        """Take the validation of ``step`` into account (``objectives``: the reported ``val_best_*`` keys)."""
        for i, (key, mode) in enumerate(objectives):
            v = metrics.get(P.VAL_PREFIX + key.removeprefix("val_best_"))
            if v is None or not math.isfinite(v):
                continue
            old = self.values.get(key)
            if old is None or (v < old if mode == "min" else v > old):
                self.values[key] = v
                if i == 0:
                    self.step = step
                    self.state = {k: t.detach().to("cpu", copy=True) for k, t in problem.state_dict().items()}


def save_state(directory: Path, state: TrainState, history: list[dict], best: Best) -> None:
    """``state.pt``: the training state, the validation history and the best validation so far."""
    torch.save({"train": state.to_dict(), "history": history,
                "best": {"values": best.values, "step": best.step, "state": best.state}}, directory / P.STATE_FILE)


def load_state(checkpoint) -> tuple[TrainState, list[dict], Best]:
    """The training state, validation history and best validation saved in a Tune checkpoint (or a directory)."""
    if isinstance(checkpoint, (str, Path)):
        checkpoint = tune.Checkpoint(str(checkpoint))
    with checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / P.STATE_FILE, weights_only=True, map_location="cpu")
    return TrainState.from_dict(saved["train"]), list(saved["history"]), Best(**saved.get("best", {}))


def trainable(params: dict[str, Any], *, job: dict[str, Any]) -> None:
    """Train one BMO model with ``params`` (searched) over ``job`` (task, task_args, fixed, objectives, ...)."""
    torch.set_num_threads(job.get("threads", 1))
    _Trial(params, job).run()


class _Trial:
    """One trial of a job: builds the problem, trains it with reports and checkpoints, reports the final solver."""

    def __init__(self, params: dict[str, Any], job: dict[str, Any]):
        self.cpu_start = time.process_time()
        params = dict(params)
        params.pop(P.OPTUNA_TRIAL, None)
        self.resume_from = params.pop(P.RESUME_FROM, None)
        self.config_values, searched_task_args = split_settings({**job["fixed"], **params})
        self.task_args = {**job["task_args"], **searched_task_args}
        self.job, self.objectives = job, [tuple(o) for o in job["objectives"]]
        self.value = job.get("objective_value", "last")
        self.base = {P.OUTER_STEP: 0, P.OUTER_STEPS: self.config_values.get("outer_steps", BMOConfig.outer_steps),
                     P.NODE: socket.gethostname(), P.RAY_NODE: ray.get_runtime_context().get_node_id()[:12],
                     P.GPUS: [str(g) for g in ray.get_gpu_ids()]}  # the (logical) GPUs Ray gave it, shared when fractional
        self.history: list[dict] = []
        self.best = Best()
        self.pending: dict[int, TrainState] = {}  # states to checkpoint, by outer step
        self.final: dict[str, Any] = {}  # the last step's metrics and state, reported once train returns

    def send(self, metrics: dict, checkpoint=None) -> None:
        """``tune.report`` with the CPU seconds spent so far."""
        tune.report({**metrics, P.CPU_SECONDS: time.process_time() - self.cpu_start}, checkpoint=checkpoint)

    def failed(self, message: str) -> None:
        self.send({**self.base, **_worst(self.objectives), P.TRIAL_ERROR: message,
                   P.TRIAL_TRACEBACK: traceback.format_exc()[-4000:]})

    def run(self) -> None:
        try:
            self.config = BMOConfig.from_dict(self.config_values)
            self.problem = make_problem(self.job["task"], self.task_args)
            if self.job.get("init_from"):
                from workers.solver import load_weights

                load_weights(self.problem, self.job["init_from"])
        except (ValueError, TypeError) as e:
            self.failed(f"invalid settings: {e}")
            return
        except Exception as e:  # the task's own code (an import, a constructor) is broken: fail, never retry
            self.failed(f"the task could not be built: {type(e).__name__}: {e}")
            return
        start = self.restore()
        try:
            self.train(start)
        except DivergenceError as e:
            self.send({**self.base, **_worst(self.objectives), P.OUTER_STEP: e.outer_step, P.DIVERGED: str(e)})
        except _Unusable as e:
            self.send({**self.base, **_worst(self.objectives), P.OUTER_STEP: self.config.outer_steps, P.TRIAL_ERROR: str(e)})
        except Exception as e:  # a bug or a resource error in the task: reported, not raised (Tune would retry it)
            self.failed(f"{type(e).__name__}: {e}")

    def restore(self) -> TrainState | None:
        """The state to continue from: Tune's checkpoint after a lost worker, or the driver's after a restart."""
        checkpoint = tune.get_checkpoint() or (tune.Checkpoint(self.resume_from) if self.resume_from else None)
        start = None
        if checkpoint is not None:
            try:
                start, self.history, self.best = load_state(checkpoint)
            except Exception as e:  # noqa: BLE001 - a checkpoint cut short by a crash: start over, and say so
                self.base["checkpoint_error"] = f"{type(e).__name__}: {e}"[:300]
        self.base["resumed_from"] = 0 if start is None else start.step
        return start

    def train(self, start: TrainState | None) -> None:
        problem, config = self.problem, self.config
        if self.job.get("init_from") and start is None:  # a fine-tuned trial's first report: the solver it starts from
            self.send({**self.base, **{f"{P.VAL_PREFIX}{k}": v for k, v in evaluate(problem, config, "val").items()},
                       P.VAL_STEP: 0, P.DEVICE: str(problem.device)})
        every = self.job.get("checkpoint_every", 0) or default_checkpoint_every(config.outer_steps)
        # the last step always checkpoints: its checkpoint carries the solver
        result = train(problem, config, report=self.report, start=start, checkpoint=self.keep, checkpoint_every=every)
        if not self.final and start is not None and start.step == config.outer_steps:  # stopped after its last step
            metrics = {**start.val, **self.best.values, P.VAL_STEP: start.val_step, "seconds": start.seconds}
            self.final.update(metrics=metrics, state=start)
        self.finish(self.final["metrics"], self.final["state"], result.average)

    def keep(self, state: TrainState) -> None:
        self.pending[state.step] = state

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """``train``'s report of outer step ``step``: every validation and checkpoint goes to Tune."""
        validated = metrics[P.VAL_STEP] == step
        if validated and not (self.history and self.history[-1]["step"] == step):
            self.history.append({"step": step, **{k: v for k, v in metrics.items()
                                                  if k == "upper_loss" or k.startswith(P.VAL_PREFIX)}})
            if self.value == "best":
                self.best.see(step, metrics, self.objectives, self.problem)
        metrics = {**metrics, **self.best.values}
        if step == self.config.outer_steps:  # reported once train returns, with the solver
            self.final.update(metrics=metrics, state=self.pending.pop(step, None))
            return
        if validated or step in self.pending:
            out = {**self.base, **metrics, P.OUTER_STEP: step, P.DEVICE: str(self.problem.device)}
            state = self.pending.pop(step, None)
            if state is None:
                self.send(out)
                return
            with tempfile.TemporaryDirectory(prefix="bmo-ckpt-") as tmp:
                save_state(Path(tmp), state, self.history, self.best)
                self.send(out, checkpoint=tune.Checkpoint.from_directory(tmp))

    def finish(self, metrics: dict[str, float], state: TrainState | None, average) -> None:
        """The last report: its checkpoint holds the state, the solver (the weights the objective is of),
        the figures, and the solver's test metrics."""
        unusable = P.unusable_final(metrics, [key for key, _ in self.objectives])
        if unusable:
            raise _Unusable(unusable)
        problem = self.problem
        out = {**self.base, **metrics, P.OUTER_STEP: self.config.outer_steps, P.DEVICE: str(problem.device)}
        with tempfile.TemporaryDirectory(prefix="bmo-ckpt-") as tmp:
            directory = Path(tmp)
            if state is not None:
                save_state(directory, state, self.history, self.best)
            if self.value == "best" and self.best.state is not None:
                problem.load_state_dict(self.best.state)
            elif self.value == "averaged" and average is not None:
                with torch.no_grad():
                    for p, a in zip([p for p in problem.parameters() if p.requires_grad], average):
                        p.copy_(a)
            out.update({f"{P.REFINED_PREFIX}{k}": v for k, v in problem.learned_values().items()})
            self.write_solver(directory, out)
            self.send(out, checkpoint=tune.Checkpoint.from_directory(tmp))

    def write_solver(self, directory: Path, out: dict) -> None:
        """The final solver, its test metrics and the figures, into the last checkpoint."""
        from workers.solver import save_solver

        problem, config, job = self.problem, self.config, self.job
        test = {f"{P.TEST_PREFIX}{k}": v for k, v in evaluate(problem, config, "test").items()}
        out.update(test)
        if job.get("keep_models", "all") != "none":
            save_solver(directory, problem, config, task=job["task"], task_args=self.task_args,
                        metrics={k.removeprefix(P.TEST_PREFIX): v for k, v in test.items()})
        if job.get("artifacts", False):
            metric = self.objectives[0][0].removeprefix("val_best_").removeprefix("val_avg_").removeprefix(P.VAL_PREFIX)
            write_figures(directory, problem, config, self.history, metric)
