"""Sparse coding benchmark: BMO against ENA, ISTA and FISTA, and the cost of each hypergradient mode.

Measures, on the paper-size problem (m=250, n=500, K=16):

1. Quality: test NMSE (dB) and fixed-point residual after every layer k = 1..4K for
   ISTA / FISTA (λ tuned at K on the validation split, nothing trained), ENA
   (``lista_tied``, ``untied_coupled`` with layers=K, ``tied_coupled``; μ=0, unrolled)
   and BMO (``tied_coupled``, μ ∈ {0.05, 0.1, 0.2}), with training seconds and device.
2. The four claims of the issue (untrained layers, ENA degradation, BMO vs ISTA/FISTA,
   BMO vs ENA on the same operator), each recorded as pass/fail with its numbers.
3. Hypergradient cost per mode (unroll, truncated, implicit, jfb) and K ∈ {10, 50, 200}
   on ``tied_coupled`` with μ=0.1: median ms per ``hypergradient`` call (no optimizer
   step) and the bytes saved for backward (the autograd tape), plus
   ``torch.cuda.max_memory_allocated`` on CUDA, with ratios to ``unroll``.

Writes ``benchmarks/results/sparse_coding.json`` and prints three tables.

Run:

    python benchmarks/sparse_coding.py [--steps N] [--quick]

``--steps`` sets the outer training steps (default 2000); ``--quick`` is a smoke run
with tiny settings (under a minute on 2 CPU cores) whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import machine_info, torch_info  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from workers import BMOConfig, DivergenceError, evaluate, hypergradient, layer_metrics, make_problem, train
from workers.bmo import resolve_device

K = 16
LAYERS = (K // 2, K, 2 * K, 4 * K)
LAM_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
BMO_MUS = (0.05, 0.1, 0.2)
MODES = ("unroll", "truncated", "implicit", "jfb")
TRUNCATE = 5
OUT = Path(__file__).resolve().parent / "results" / "sparse_coding.json"


def train_config(mu: float, steps: int, eval_every: int) -> BMOConfig:
    """The training configuration of the issue, shared by every trained method."""
    return BMOConfig(mu=mu, K=K, s0=1.0, s_power=0.5, gamma=1e-3, optimizer="adam", outer_steps=steps,
                     eval_every=eval_every, eval_mu=0.0, device="auto")


# quality ---------------------------------------------------------------------------------


def classical(operator: str, config: BMOConfig) -> dict:
    """ISTA or FISTA with λ tuned at K on the validation split; per-layer test metrics."""
    device = resolve_device(config.device)
    val = {}
    for lam in LAM_GRID:
        problem = make_problem("sparse_coding", {"preset": "paper", "operator": operator, "lam": lam}).to(device)
        val[lam] = evaluate(problem, config, "val", K=K)["nmse_db"]
    best = min(val, key=val.get)
    problem = make_problem("sparse_coding", {"preset": "paper", "operator": operator, "lam": best}).to(device)
    per_layer = layer_metrics(problem, config, "test", K=4 * K)
    return {"operator": operator, "mu": 0.0, "lam": best, "lam_on_grid_edge": best in (LAM_GRID[0], LAM_GRID[-1]),
            "val_nmse_db_by_lam": {str(k): v for k, v in val.items()}, "train_seconds": 0.0, "device": str(device),
            **split_layers(per_layer)}


def trained(operator: str, mu: float, config: BMOConfig, **task_args) -> dict:
    """Train ``operator`` with BMO at ``mu`` (μ=0 is ENA) and return per-layer test metrics."""
    problem = make_problem("sparse_coding", {"preset": "paper", "operator": operator, **task_args})
    row = {"operator": operator, "mu": mu, **task_args}
    try:
        result = train(problem, config)
    except DivergenceError as e:
        return {**row, "error": str(e)}
    per_layer = layer_metrics(problem, config, "test", K=4 * K)
    return {**row, "train_seconds": result.seconds, "device": result.device, "final_val": result.final,
            **split_layers(per_layer)}


def split_layers(per_layer: list[dict]) -> dict:
    return {"nmse_db": [r["nmse_db"] for r in per_layer], "fp_residual": [r["fp_residual"] for r in per_layer]}


def nmse(method: dict, k: int) -> float | None:
    return method["nmse_db"][k - 1] if "nmse_db" in method else None


def residual(method: dict, k: int) -> float | None:
    return method["fp_residual"][k - 1] if "fp_residual" in method else None


def check_claims(m: dict) -> dict:
    """The four claims of the issue, each with the numbers it compares."""
    bmo, ista, fista = m["BMO mu=0.1"], m["ISTA"], m["FISTA"]
    ok = lambda *xs: all(x is not None for x in xs)  # noqa: E731
    claims = {}

    a = {"nmse_db_K": nmse(bmo, K), "nmse_db_4K": nmse(bmo, 4 * K), "fp_residual_K": residual(bmo, K),
         "fp_residual_4K": residual(bmo, 4 * K)}
    a["passed"] = ok(*a.values()) and a["nmse_db_4K"] <= a["nmse_db_K"] - 4.0 and a["fp_residual_4K"] <= a["fp_residual_K"] / 10
    claims["a_bmo_converges_past_K"] = {"statement": "BMO(mu=0.1): NMSE(4K) <= NMSE(K) - 4 dB and residual(4K) <= residual(K)/10", **a}

    b = {}
    for name in ("ENA lista_tied", "ENA untied_coupled"):
        b[name] = {"nmse_db_K": nmse(m[name], K), "nmse_db_4K": nmse(m[name], 4 * K)}
        b[name]["passed"] = ok(*b[name].values()) and b[name]["nmse_db_4K"] >= b[name]["nmse_db_K"] + 5.0
    claims["b_ena_degrades_past_K"] = {"statement": "ENA lista_tied and untied_coupled: NMSE(4K) >= NMSE(K) + 5 dB",
                                       **b, "passed": all(v["passed"] for v in b.values())}

    c = {}
    for k in LAYERS:
        best = None if not ok(nmse(ista, k), nmse(fista, k)) else min(nmse(ista, k), nmse(fista, k))
        c[str(k)] = {"bmo": nmse(bmo, k), "min_ista_fista": best}
        c[str(k)]["passed"] = ok(nmse(bmo, k), best) and nmse(bmo, k) <= best - 1.0
    claims["c_bmo_beats_ista_fista"] = {"statement": "BMO(mu=0.1) <= min(ISTA, FISTA) - 1 dB at k in {K/2, K, 2K, 4K}",
                                        "by_layer": c, "passed": all(v["passed"] for v in c.values())}

    d = {"bmo_4K": nmse(bmo, 4 * K), "ena_tied_coupled_4K": nmse(m["ENA tied_coupled"], 4 * K)}
    d["passed"] = ok(*d.values()) and d["bmo_4K"] <= d["ena_tied_coupled_4K"] - 1.0
    claims["d_bmo_beats_ena_same_operator"] = {"statement": "BMO(mu=0.1) NMSE(4K) <= ENA tied_coupled NMSE(4K) - 1 dB", **d}
    return claims


# hypergradient cost ---------------------------------------------------------------------


def tape_bytes(problem, batch, config) -> tuple[int, int]:
    """Bytes of tensors saved for backward during one hypergradient call: (sum over saves, unique storages)."""
    total, storages = 0, {}

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hypergradient(problem, batch, config)
    return total, sum(storages.values())


def time_hypergradient(problem, batch, config, repeats: int) -> float:
    """Median seconds of one hypergradient call, after one warm-up call."""
    cuda = batch.y.is_cuda
    hypergradient(problem, batch, config)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        hypergradient(problem, batch, config)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_peak(problem, batch, config) -> int:
    """Peak CUDA memory above the baseline during one hypergradient call."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    hypergradient(problem, batch, config)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def hypergrad_table(Ks: tuple[int, ...], repeats: int) -> list[dict]:
    """Time and tape memory of every mode at every K on tied_coupled, μ=0.1."""
    device = resolve_device("auto")
    problem = make_problem("sparse_coding", {"preset": "paper", "operator": "tied_coupled"}).to(device)
    batch = next(iter(problem.batches("train")))
    rows = []
    for k in Ks:
        for mode in MODES:
            config = BMOConfig(mu=0.1, K=k, hypergrad=mode, truncate=TRUNCATE, device="auto")
            saved, unique = tape_bytes(problem, batch, config)
            row = {"mode": mode, "K": k, "seconds": time_hypergradient(problem, batch, config, repeats),
                   "tape_bytes": saved, "tape_unique_bytes": unique}
            if device.type == "cuda":
                row["cuda_peak_bytes"] = cuda_peak(problem, batch, config)
            rows.append(row)
    for row in rows:
        ref = next(r for r in rows if r["mode"] == "unroll" and r["K"] == row["K"])
        row["time_vs_unroll"] = row["seconds"] / ref["seconds"]
        row["tape_vs_unroll"] = row["tape_bytes"] / ref["tape_bytes"]
        if "cuda_peak_bytes" in row:
            row["cuda_peak_vs_unroll"] = row["cuda_peak_bytes"] / max(ref["cuda_peak_bytes"], 1)
    return rows


def memory_growth(rows: list[dict], Ks: tuple[int, ...]) -> dict:
    """Per mode, tape bytes at the largest K over the smallest K (the issue's goal: <= 1.5 for jfb and implicit)."""
    growth = {}
    for mode in MODES:
        at = {r["K"]: r["tape_bytes"] for r in rows if r["mode"] == mode}
        ratio = at[Ks[-1]] / at[Ks[0]]
        growth[mode] = {"K_small": Ks[0], "K_large": Ks[-1], "tape_ratio": ratio}
        if mode in ("jfb", "implicit"):
            growth[mode]["flat_in_K"] = ratio <= 1.5
    return growth


# output ------------------------------------------------------------------------------------


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_quality(methods: dict) -> None:
    print(f"\nTest NMSE (dB) by layer, K={K}")
    print(f"{'method':<22}" + "".join(f"{'k=' + str(k):>9}" for k in LAYERS) + f"{'train s':>10}  device")
    for name, m in methods.items():
        cells = "".join(f"{fmt(nmse(m, k)):>9}" for k in LAYERS)
        extra = f"  lam={m['lam']}" if "lam" in m else ""
        if "error" in m:
            extra += f"  ERROR: {m['error']}"
        print(f"{name:<22}{cells}{fmt(m.get('train_seconds'), '.1f'):>10}  {m.get('device', '-')}{extra}")


def print_claims(claims: dict) -> None:
    print("\nClaims")
    a, b, c, d = (claims[k] for k in claims)
    print(f"(a) {'PASS' if a['passed'] else 'FAIL'}  BMO(0.1) NMSE K={fmt(a['nmse_db_K'])} 4K={fmt(a['nmse_db_4K'])} dB;"
          f" residual K={fmt(a['fp_residual_K'], '.2e')} 4K={fmt(a['fp_residual_4K'], '.2e')}")
    parts = "; ".join(f"{n} K={fmt(v['nmse_db_K'])} 4K={fmt(v['nmse_db_4K'])}" for n, v in b.items() if isinstance(v, dict))
    print(f"(b) {'PASS' if b['passed'] else 'FAIL'}  {parts}")
    parts = "; ".join(f"k={k}: {fmt(v['bmo'])} vs {fmt(v['min_ista_fista'])}" for k, v in c["by_layer"].items())
    print(f"(c) {'PASS' if c['passed'] else 'FAIL'}  BMO(0.1) vs min(ISTA,FISTA): {parts}")
    print(f"(d) {'PASS' if d['passed'] else 'FAIL'}  at 4K: BMO(0.1) {fmt(d['bmo_4K'])} vs ENA tied_coupled {fmt(d['ena_tied_coupled_4K'])}")


def print_hypergrad(rows: list[dict], growth: dict) -> None:
    cuda = any("cuda_peak_bytes" in r for r in rows)
    print(f"\nHypergradient cost, tied_coupled, mu=0.1, truncate={TRUNCATE} (ratios vs unroll at the same K)")
    head = f"{'mode':<10}{'K':>5}{'ms/step':>10}{'tape MiB':>10}{'unique MiB':>11}{'time x':>8}{'tape x':>8}"
    print(head + (f"{'cuda MiB':>9}{'cuda x':>8}" if cuda else ""))
    for r in rows:
        line = (f"{r['mode']:<10}{r['K']:>5}{r['seconds'] * 1e3:>10.1f}{r['tape_bytes'] / 2**20:>10.2f}"
                f"{r['tape_unique_bytes'] / 2**20:>11.2f}{r['time_vs_unroll']:>8.3f}{r['tape_vs_unroll']:>8.3f}")
        if cuda:
            line += f"{r['cuda_peak_bytes'] / 2**20:>9.2f}{r['cuda_peak_vs_unroll']:>8.3f}"
        print(line)
    for mode, g in growth.items():
        flat = f"  flat (<=1.5x): {g['flat_in_K']}" if "flat_in_K" in g else ""
        print(f"tape K={g['K_large']} / K={g['K_small']}  {mode:<10}{g['tape_ratio']:>8.2f}x{flat}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="outer training steps (default 2000)")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny settings")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    steps = 10 if args.quick else args.steps
    eval_every = 5 if args.quick else 500
    Ks = (5, 10, 20) if args.quick else (10, 50, 200)
    repeats = 2 if args.quick else 5
    start = time.perf_counter()

    base = train_config(0.0, steps, eval_every)
    methods = {"ISTA": classical("ista", base), "FISTA": classical("fista", base)}
    for name, operator, task_args in (("ENA lista_tied", "lista_tied", {}),
                                      ("ENA untied_coupled", "untied_coupled", {"layers": K}),
                                      ("ENA tied_coupled", "tied_coupled", {})):
        methods[name] = trained(operator, 0.0, base, **task_args)
        print(f"trained {name}: {methods[name].get('train_seconds', 0):.1f} s", file=sys.stderr)
    for mu in BMO_MUS:
        methods[f"BMO mu={mu}"] = trained("tied_coupled", mu, train_config(mu, steps, eval_every))
        print(f"trained BMO mu={mu}: {methods[f'BMO mu={mu}'].get('train_seconds', 0):.1f} s", file=sys.stderr)
    claims = check_claims(methods)
    rows = hypergrad_table(Ks, repeats)
    growth = memory_growth(rows, Ks)
    total = time.perf_counter() - start

    result = {
        "machine": machine_info(**torch_info(str(resolve_device("auto")))),
        "config": {"quick": args.quick, "steps": steps, "K": K, "layers_reported": list(LAYERS), "lam_grid": list(LAM_GRID),
                   "train": dataclasses.asdict(train_config(0.1, steps, eval_every)), "bmo_mus": list(BMO_MUS),
                   "hypergrad": {"operator": "tied_coupled", "mu": 0.1, "Ks": list(Ks), "modes": list(MODES),
                                 "truncate": TRUNCATE, "repeats": repeats, "batch_size": 100,
                                 "parameters": "fresh (untrained) problem, W=A/L"}},
        "methods": methods,
        "claims": claims,
        "hypergradient": {"rows": rows, "memory_growth": growth},
        "total_seconds": total,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print_quality(methods)
    print_claims(claims)
    print_hypergrad(rows, growth)
    print(f"\ntotal {total:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
