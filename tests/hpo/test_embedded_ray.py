"""The embedded Ray's clean-up of dead drivers' sessions, without Ray (``tests/hpo/test_ports.py`` runs the real one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from hpo.embedded_ray import EMBEDDED_MARKER, _names_session, clean_dead_embedded, session_processes


def test_a_session_is_named_only_as_a_whole_directory():
    session = "/tmp/ray/session_2024_1"
    assert _names_session(f"raylet --log_dir={session}/logs", session)
    assert _names_session(f"gcs_server {session}", session)
    assert not _names_session(f"raylet --log_dir={session}0/logs", session)


def test_only_marked_sessions_of_dead_drivers_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    me = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    for name, marker in [("session_dead", {"pid": dead_pid, "start": "1"}), ("session_alive", {"pid": os.getpid(), "start": me}),
                         ("session_unmarked", None), ("session_garbled", "{")]:
        (tmp_path / name).mkdir()
        if marker is not None:
            (tmp_path / name / EMBEDDED_MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    assert clean_dead_embedded(tmp_path) == []  # no Ray process names these sessions
    assert not (tmp_path / "session_dead" / EMBEDDED_MARKER).exists()
    assert not (tmp_path / "session_garbled" / EMBEDDED_MARKER).exists()  # unreadable: its driver counts as dead
    assert (tmp_path / "session_alive" / EMBEDDED_MARKER).exists()
    assert session_processes([str(tmp_path / "session_alive")]) == {}
