"""The transfer benchmark's smoke run writes its JSON schema and table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_transfer_run_writes_pairs_and_goal(tmp_path):
    out = tmp_path / "transfer.json"
    proc = subprocess.run([sys.executable, "benchmarks/transfer.py", "--quick", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["source"]) == result["setup"]["trials"] == 3
    (pair,) = result["pairs"]
    assert len(pair["unseeded"]) == len(pair["seeded"]) == 3
    assert pair["target_psnr"] == min(pair["unseeded_best"], pair["seeded_best"])  # a level both reach
    assert 1 <= pair["unseeded_trials_to_target"] <= 3 and 1 <= pair["seeded_trials_to_target"] <= 3
    assert set(result["median_trials_to_target"]) == {"unseeded", "seeded"}
    assert list(result["goals"]) == ["seeded reaches the target in fewer trials (median over seeds)"]
    assert "median trials to the target" in proc.stdout


def test_trials_to_reach_counts_from_one_and_says_never_with_one_past_the_end():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from transfer import compare, trials_to_reach

    assert trials_to_reach([20.0, None, 25.0, 24.0], 25.0) == 3
    assert trials_to_reach([20.0, None], 25.0) == 3
    pair = compare(1, [20.0, 26.0, 24.0], [25.0, None, 27.0], k=1)
    assert pair["target_psnr"] == 26.0 and pair["unseeded_trials_to_target"] == 2 and pair["seeded_trials_to_target"] == 3
    assert pair["unseeded_best_after_k"] == 20.0 and pair["seeded_best_after_k"] == 25.0
    assert compare(1, [None], [None], k=1)["seeded_trials_to_target"] == 2  # nothing completed: never
