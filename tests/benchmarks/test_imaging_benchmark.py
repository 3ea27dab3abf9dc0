"""The imaging benchmark's smoke run writes the JSON the issue asks for and prints its tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_imaging_run_writes_rows_layers_and_goals(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/imaging.py", "--quick", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    deconv = json.loads((tmp_path / "deconvolution.json").read_text())
    derain = json.loads((tmp_path / "derain.json").read_text())
    assert (tmp_path / "untrained_layers.png").stat().st_size > 0

    methods = {r["method"] for r in deconv["rows"]}
    assert methods == {"blurred", "wiener", "tv", "ena", "bmo", "bmo_plain", "bmo_restart", "bmo_cnn"}
    for row in deconv["rows"]:
        assert set(row) == {"method", "image", "noise", "psnr", "ssim", "train_seconds", "device"}
    assert {r["image"] for r in deconv["rows"]} == {"camera", "astronaut", "coffee"}
    assert deconv["config"]["learned"]["bmo"]["operator"] == "pnp_convex"
    learned = deconv["config"]["learned"]
    assert learned["bmo"]["task_args"] == {"width": 32, "scheme": "drs", "adaptive": True} and learned["bmo"]["restarts"] == 1
    assert learned["bmo_plain"]["task_args"] == learned["bmo_restart"]["task_args"] == {"width": 32, "scheme": "drs"}
    assert "error" not in deconv["methods"]["bmo"]["0.01"]
    assert len(deconv["layers"]["bmo"]["0.01"]["psnr"]) == 4 * deconv["config"]["K"]
    assert set(deconv["goals"]) == {"bmo_beats_tv_by_margin", "bmo_ahead_of_every_baseline", "bmo_stable_past_K",
                                    "ena_degrades_past_K"}

    assert {r["method"] for r in derain["rows"]} == {"rainy", "filter", "ena", "bmo", "bmo_cnn"}
    assert derain["config"]["learned"]["bmo"]["operator"] == "convex"
    assert all("noise" not in r for r in derain["rows"])
    assert "Deconvolution goals" in proc.stdout and "Derain goals" in proc.stdout
