"""The embedded Ray of ``hpo run`` (no ``--address``): started on loopback, and never outliving its driver.

Its processes die with the driver only in part: the GCS and the raylet at once (Ray starts them
with PR_SET_PDEATHSIG), idle workers within ~3 s, but the dashboard and runtime-env agents stay
about 60 s (they wait on the dead GCS). So ``start`` leaves a marker in the embedded Ray's session
directory (the driver's pid and start time) and starts a watchdog (``watch_embedded``) that kills
the session's processes when the driver dies; a later ``start`` kills those of any marked session
whose driver is gone (the watchdog was killed too: ``clean_dead_embedded``). Only sessions with
this marker are touched: never a Ray that a user or ``cluster/local.sh`` started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hpo.ray_private import loopback_node


def start(**init_kwargs):
    """Start the embedded Ray (``ray.init(address="local")``, no dashboard, on 127.0.0.1) and its watchdog.

    First kills what the embedded Ray of an earlier, killed driver left behind. Returns
    ``ray.init``'s context; raises what ``ray.init`` raises.
    """
    import ray

    clean_dead_embedded()
    with loopback_node(True):  # never join a running cluster
        context = ray.init(address="local", include_dashboard=False, **init_kwargs)
    start_watchdog(context)
    return context


EMBEDDED_MARKER = "hpo-embedded-driver.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot, /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def _ray_temp_root() -> Path:
    """Where ``ray.init()`` puts its session directories (as ``ray._common.utils.get_default_ray_temp_dir``)."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def _names_session(text: str, session: str) -> bool:
    """Whether ``text`` names the directory ``session`` or a path under it (not ``session`` + more characters)."""
    start = text.find(session)
    while start >= 0:
        end = start + len(session)
        if end == len(text) or text[end] in "/ \t\"',;:=":
            return True
        start = text.find(session, end)
    return False


def session_processes(sessions: list[str], *, core_only: bool = False) -> dict[int, str]:
    """Ray's processes of the session directories ``sessions``: ``{pid: session}`` (Linux, /proc).

    The GCS, raylet and Ray's Python daemons name their session directory on the command line;
    workers and agents (``ray::...``, their command line rewritten) keep log files in it open.
    Only Ray's own programs count, not, say, a ``tail -f`` of one of its logs. ``core_only``: the
    GCS and raylets only (cheap: command lines only).
    """
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        args = raw.decode(errors="replace").split("\0")
        if not args or not args[0]:
            continue
        command, program = " ".join(args), os.path.basename(args[0].split(" ")[0])
        core = program in ("gcs_server", "raylet")
        if core_only and not core:
            continue
        daemon = program.startswith("python") and any(a.endswith(".py") and "/ray/" in a for a in args)
        if not (core or daemon or args[0].startswith("ray::")):
            continue
        session = next((s for s in sessions if _names_session(command, s)), None)
        if session is None and not core_only:
            try:
                targets = [os.readlink(f"/proc/{entry.name}/fd/{fd}") for fd in os.listdir(f"/proc/{entry.name}/fd")]
            except OSError:
                targets = []
            session = next((s for s in sessions if any(t.startswith(s + "/") for t in targets)), None)
        if session is not None:
            found[int(entry.name)] = session
    return found


def kill_sessions(sessions: list[str], rounds: int = 5) -> list[int]:
    """SIGKILL every Ray process of ``sessions`` (see ``session_processes``); return their pids."""
    import signal
    import time

    killed: list[int] = []
    for _ in range(rounds):
        pids = session_processes(sessions)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        time.sleep(0.2)
    return sorted(set(killed))


def _driver_alive(marker: Path) -> bool:
    try:
        data = json.loads(marker.read_text())
        return _process_start(int(data["pid"])) == data["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable: treat as dead; only this session's Ray processes are killed


def clean_dead_embedded(root: Path | None = None) -> list[int]:
    """Kill what embedded Rays of dead drivers left behind (marked sessions under Ray's temp dir)."""
    if not sys.platform.startswith("linux"):
        return []
    root = root or _ray_temp_root()
    markers = {m.resolve() for m in root.glob(f"session_*/{EMBEDDED_MARKER}") if not m.parent.is_symlink()}
    dead = [m for m in markers if not _driver_alive(m)]
    if not dead:
        return []
    killed = kill_sessions([str(m.parent) for m in dead])
    for m in dead:
        m.unlink(missing_ok=True)
    if killed:
        print(f"killed {len(killed)} Ray processes left behind by the embedded Ray of a killed driver "
              f"({', '.join(m.parent.name for m in dead)})", file=sys.stderr)
    return killed


def start_watchdog(context) -> None:
    """Mark the embedded Ray's session as ours and start its watchdog (``watch_embedded``)."""
    import subprocess

    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    started = _process_start(os.getpid())
    if not session or started is None or not sys.platform.startswith("linux"):
        return
    try:
        (Path(session) / EMBEDDED_MARKER).write_text(json.dumps({"pid": os.getpid(), "start": started}))
    except OSError:
        return
    root = str(Path(__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {root!r}); from hpo.embedded_ray import watch_embedded; watch_embedded()"
    # its own session: a Ctrl-C or a closed terminal that reaches the driver's process group spares it
    _WATCHDOGS.append(subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid()), session],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    ))


_WATCHDOGS: list = []  # the Popen objects, so that none is collected (and warned about) while its driver runs


def watch_embedded() -> None:
    """The watchdog process: ``python -c ... DRIVER_PID SESSION_DIR``, started by the driver.

    Waits for the driver to exit, then kills the session's Ray processes still alive and removes
    the marker. Exits quietly when the session ends first (``ray.shutdown()`` in a driver that
    lives on). Takes no CPU while it waits (a pidfd; polling the parent pid where there is none).
    """
    import select
    import signal
    import time

    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    driver, session = int(sys.argv[1]), sys.argv[2]
    try:
        pidfd = os.pidfd_open(driver)
    except (AttributeError, OSError):
        pidfd = None
    if os.getppid() != driver:  # gone already (or the pid is not our parent's any more)
        if pidfd is not None:
            os.close(pidfd)
        pidfd = None
    else:
        checked = time.monotonic()
        while True:
            if pidfd is not None:
                if select.select([pidfd], [], [], 5.0)[0]:
                    break
            else:
                time.sleep(0.5)
                if os.getppid() != driver:
                    break
            if time.monotonic() - checked >= 5.0:
                checked = time.monotonic()
                if not session_processes([session], core_only=True):
                    break  # the driver shut this Ray down and goes on without it
    kill_sessions([session])
    (Path(session) / EMBEDDED_MARKER).unlink(missing_ok=True)
