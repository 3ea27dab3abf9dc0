"""Study-level plots stored in the study for optuna-dashboard (its plotly graph API).

- ``convergence-best``: the objective's intermediate values against outer step for the
  best trials, overlaid;
- ``objective-vs-mu-K``: the objective against μ and against K over all finished trials.

Saved under fixed graph ids, so each run of the job replaces them.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

BEST_SHOWN = 5


def convergence_figure(study: optuna.Study, metric: str):
    """Intermediate values vs outer step of the best COMPLETE trials (first objective)."""
    import plotly.graph_objects as go

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best = sorted(complete, key=lambda t: t.values[0], reverse=reverse)[:BEST_SHOWN]
    fig = go.Figure()
    for t in best:
        steps = sorted(t.intermediate_values)
        fig.add_trace(go.Scatter(x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
                                 name=f"trial {t.number} ({t.values[0]:.4g})"))
    fig.update_layout(title=f"Convergence of the {len(best)} best trials", xaxis_title="outer step",
                      yaxis_title=f"validation {metric}")
    return fig


def objective_vs_mu_k_figure(study: optuna.Study, metric: str, fixed: dict):
    """The objective against μ and against K, one point per finished trial with a value."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.values is not None]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("μ", "K"), shared_yaxes=True)
    for col, name in enumerate(("mu", "K"), start=1):
        xs = [t.params.get(name, fixed.get(name)) for t in trials]
        colors = ["#1f77b4" if t.state == TrialState.COMPLETE else "#bbbbbb" for t in trials]
        fig.add_trace(go.Scatter(x=xs, y=[t.values[0] for t in trials], mode="markers", marker={"color": colors},
                                 text=[f"trial {t.number} ({t.state.name.lower()})" for t in trials], showlegend=False),
                      row=1, col=col)
    fig.update_layout(title=f"validation {metric} against μ and K (grey: pruned)", yaxis_title=metric)
    return fig


def save_study_plots(study: optuna.Study, metric: str, fixed: dict) -> None:
    """Store both figures in the study for the dashboard (replacing earlier versions)."""
    from optuna_dashboard import save_plotly_graph_object

    if len(study.directions) != 1:
        return  # Pareto fronts are one of optuna-dashboard's own plots
    save_plotly_graph_object(study, convergence_figure(study, metric), graph_object_id="convergence-best")
    save_plotly_graph_object(study, objective_vs_mu_k_figure(study, metric, fixed), graph_object_id="objective-vs-mu-K")
