"""Joint convergence and untrained layers on sparse coding (issue 7d): BMO against ENA, ISTA and FISTA."""

import pytest

from workers import BMOConfig, evaluate, layer_metrics, make_problem, train

K = 16
TRAIN = dict(K=K, s0=1.0, s_power=0.5, gamma=1e-3, optimizer="adam", outer_steps=2000, eval_every=500, eval_mu=0.0, device="cpu")
LAYERS = (K // 2, K, 2 * K, 4 * K)


def _nmse_by_layer(operator: str, mu: float | None, **task_args) -> dict[int, dict]:
    problem = make_problem("sparse_coding", {"operator": operator, **task_args})
    config = BMOConfig(mu=mu or 0.0, **TRAIN)
    if mu is not None:
        train(problem, config)
    per_layer = layer_metrics(problem, config, "test", K=4 * K)
    return {k: per_layer[k - 1] for k in LAYERS}


def _classical(operator: str) -> dict[int, dict]:
    """ISTA / FISTA with λ tuned on the validation set at K (the UNH baseline)."""
    config = BMOConfig(mu=0.0, K=K)
    lams = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    best = min(lams, key=lambda lam: evaluate(make_problem("sparse_coding", {"operator": operator, "lam": lam}), config)["nmse_db"])
    assert best not in (lams[0], lams[-1]), f"{operator}: tuned λ={best} is on the grid's edge"
    return _nmse_by_layer(operator, None, lam=best)


@pytest.mark.slow
def test_bmo_converges_past_K_and_beats_ena_ista_fista():
    bmo = _nmse_by_layer("tied_coupled", 0.1)
    ena_same_operator = _nmse_by_layer("tied_coupled", 0.0)
    ena_lista = _nmse_by_layer("lista_tied", 0.0)
    ena_untied = _nmse_by_layer("untied_coupled", 0.0, layers=K)
    ista, fista = _classical("ista"), _classical("fista")
    db = lambda run, k: run[k]["nmse_db"]  # noqa: E731

    # Untrained layers: BMO keeps converging, 4 dB lower NMSE at 4K and a tenfold smaller residual.
    assert db(bmo, 4 * K) <= db(bmo, K) - 4.0
    assert bmo[4 * K]["fp_residual"] <= bmo[K]["fp_residual"] / 10
    # ENA on operators without the fixed-point structure degrades past K by more than 5 dB.
    assert db(ena_lista, 4 * K) >= db(ena_lista, K) + 5.0
    assert db(ena_untied, 4 * K) >= db(ena_untied, K) + 5.0
    # BMO beats the classical iterations with λ tuned at K, at every depth.
    for k in LAYERS:
        assert db(bmo, k) <= min(db(ista, k), db(fista, k)) - 1.0, k
    # ... and ENA trained on the same tied operator, in the limit.
    assert db(bmo, 4 * K) <= db(ena_same_operator, 4 * K) - 1.0
