"""Search space → Optuna distributions, sampled define-by-run so conditional parameters work."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from hpo.spec import STARTUP_SAMPLERS, JobSpec, Param


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one search-space entry."""
    if p.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
    return optuna.distributions.FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def is_active(p: Param, values: dict[str, Any]) -> bool:
    """Whether a conditional parameter applies, given the values sampled (or fixed) before it."""
    return all(values.get(parent) in allowed for parent, allowed in p.when.items())


def define_by_run(spec: JobSpec) -> Callable[[optuna.Trial], None]:
    """The function OptunaSearch calls per trial: suggest each active parameter, in spec order."""
    distributions = [(p, distribution(p)) for p in spec.space]

    def suggest(trial) -> None:
        values: dict[str, Any] = dict(spec.fixed)
        for p, dist in distributions:
            if not is_active(p, values):
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                values[p.name] = trial.suggest_categorical(p.name, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                values[p.name] = trial.suggest_int(p.name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                values[p.name] = trial.suggest_float(p.name, dist.low, dist.high, step=dist.step, log=dist.log)

    return suggest


_STARTUP_CLASSES = {"tpe": "TPESampler", "gp": "GPSampler", "cmaes": "CmaEsSampler"}  # spec.STARTUP_SAMPLERS' classes


def startup_trials(name: str, n_startup_trials: int | None) -> int | None:
    """How many random trials sampler ``name`` draws before it models the results (None: it never does)."""
    if name not in STARTUP_SAMPLERS:
        return None
    if n_startup_trials is not None:
        return n_startup_trials
    return inspect.signature(getattr(optuna.samplers, _STARTUP_CLASSES[name])).parameters["n_startup_trials"].default


def make_sampler(name: str, seed: int | None, n_startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for a spec's ``sampler`` section (``n_startup_trials``: None keeps Optuna's default)."""
    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, **startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, **startup)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
