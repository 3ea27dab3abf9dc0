"""The ``hpo`` command's own handling: where ``--set`` keys go, user problems in the current directory, bad flags."""

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hpo.cli import _spec_overrides, main
from hpo.spec import load_spec
from tests.hpo.conftest import USER_PROBLEM, write_spec


def test_set_keeps_every_top_level_field_and_sends_bare_config_fields_to_fixed(tmp_path):
    path = write_spec(tmp_path)
    args = argparse.Namespace(spec=str(path), set=["artifacts=false", "max_retries=1", "keep_models=best", "K=8", "task_args.m=20"],
                              trials=None, storage=None, study=None)
    overrides = _spec_overrides(args)
    assert overrides == {"artifacts": False, "max_retries": 1, "keep_models": "best", "fixed.K": 8, "task_args.m": 20}
    spec = load_spec(path, overrides)
    assert spec.artifacts is False and spec.max_retries == 1 and spec.fixed["K"] == 8


def test_train_finds_a_user_problem_in_the_current_directory(tmp_path):
    (tmp_path / "my_problem.py").write_text(textwrap.dedent(USER_PROBLEM))
    # the installed console script, not `python -m hpo.cli`: -m puts the current directory on sys.path by itself
    hpo = Path(sys.executable).with_name("hpo")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(hpo), "train", "my_problem:Shrink", "--set", "K=3", "--set", "outer_steps=20",
                           "--set", "eval_every=5", "--set", "t0=0.3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done in" in proc.stdout and "val_mse=" in proc.stdout


def test_train_rejects_a_thread_count_below_one_in_one_line(capsys):
    assert main(["train", "sparse_coding", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "hpo: error: --threads must be a positive integer, got 0\n"
