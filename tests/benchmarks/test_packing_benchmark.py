"""The packing benchmark's smoke run writes its rows and goal."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_packing_run_writes_rows_and_goal(tmp_path):
    out = tmp_path / "packing.json"
    proc = subprocess.run([sys.executable, "benchmarks/packing.py", "--quick", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["B"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["completed_solo"] == row["completed_packed"] == row["B"] and row["solo_s"] > 0 and row["packed_s"] > 0
        assert row["speedup"] == row["solo_s"] / row["packed_s"]
    assert list(result["goals"]) == ["at least 5x configurations per hour at B = 16 on cpu"]
