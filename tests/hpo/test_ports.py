"""Closed by default: every Ray port we start listens on loopback, and a killed driver's Ray dies with it.

Only the sockets of the Ray processes under test are checked (Redis, PostgreSQL and other
engineers' processes on this machine are none of our business).
"""

import ipaddress
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.local_cluster import LOCAL_SH, LocalCluster
from tests.hpo.conftest import REPO, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.slow

# trials that last far longer than the checks (the driver is killed once they run)
LONG = {"K": 4, "outer_steps": 20000, "eval_every": 1000}
RAY_INFRA = {"ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _tree(*roots: int) -> dict[int, psutil.Process]:
    """``roots`` and all their descendants that are alive now."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found[pid] = root
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.Error:
            pass
    return found


def _listening(procs: dict[int, psutil.Process]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every listening TCP socket of ``procs``."""
    rows = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            try:
                name = procs[conn.pid].name()
            except psutil.Error:
                name = "?"
            rows.append((name, conn.pid, conn.laddr.ip, conn.laddr.port))
    return rows


def _assert_loopback_only(procs: dict[int, psutil.Process]) -> list:
    rows = _listening(procs)
    names = {name for name, *_ in rows}
    assert {"gcs_server", "raylet"} <= names, f"the Ray processes were not found listening: {rows}"
    exposed = [row for row in rows if not _loopback(row[2])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    return rows


def _alive(procs) -> list[tuple[int, str]]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append((p.pid, p.name()))
        except psutil.Error:
            pass
    return left


def _kill(procs) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _session_of(procs: dict[int, psutil.Process]) -> Path:
    """The session directory of the embedded Ray among ``procs`` (from its GCS's command line)."""
    for p in procs.values():
        try:
            if p.name() == "gcs_server":
                log_dir = next(a.split("=", 1)[1] for a in p.cmdline() if a.startswith("--log_dir="))
                return Path(log_dir).parent
        except (psutil.Error, StopIteration):
            pass
    raise AssertionError("no GCS among the driver's processes")


def _driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return {**env, "PYTHONPATH": str(REPO)}


def test_embedded_ray_listens_on_loopback_only_and_dies_with_a_killed_driver(tmp_path):
    spec = write_spec(tmp_path, fixed=LONG, trials=2, concurrency=2)
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed below
    driver = subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(spec)], cwd=tmp_path, env=_driver_env(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs: dict[int, psutil.Process] = {}
    try:
        def trials_run():
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            tree = _tree(driver.pid)
            return tree if any(p.name().startswith("ray::") and p.name() not in RAY_INFRA for p in tree.values()) else None

        procs = wait_for(trials_run, 120, what="a running trial")
        time.sleep(1.0)  # the trials' core workers have their servers up by now
        procs = _tree(driver.pid)
        _assert_loopback_only(procs)
        session = _session_of(procs)
        assert (session / "hpo-embedded-driver.json").is_file()

        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed = time.monotonic()
        others = [p for pid, p in procs.items() if pid != driver.pid]
        wait_for(lambda: not _alive(others), 10, interval=0.2, what="the end of the embedded Ray's processes")
        print(f"the embedded Ray's {len(others)} processes were gone {time.monotonic() - killed:.1f} s after the driver")
        assert not (session / "hpo-embedded-driver.json").exists()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        _kill(procs.values())
        log.close()


def test_the_next_embedded_ray_kills_what_a_dead_one_left_behind(tmp_path):
    """The watchdog was killed with the driver: the next driver's connect_ray cleans up."""
    start = ("import time\nfrom hpo.ray_cluster import connect_ray\nconnect_ray(None, 'sparse_coding')\n"
             "print('up', flush=True)\ntime.sleep(600)\n")
    first = subprocess.Popen([sys.executable, "-c", start], cwd=tmp_path, env=_driver_env(), stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    procs: dict[int, psutil.Process] = {}
    try:
        assert first.stdout.readline().strip() == "up"
        time.sleep(2.0)  # the agents are up
        procs = _tree(first.pid)
        watchdogs = [p for p in procs.values() if "watch_embedded" in " ".join(p.cmdline())]
        assert len(watchdogs) == 1, [p.cmdline() for p in procs.values()]
        _kill(watchdogs)
        first.kill()
        first.wait()
        rest = [p for pid, p in procs.items() if pid != first.pid and p not in watchdogs]
        time.sleep(3.0)
        left = _alive(rest)  # the agents wait about a minute on the dead GCS before they exit
        next_run = subprocess.run(
            [sys.executable, "-c", "from hpo.ray_cluster import connect_ray\nconnect_ray(None, 'sparse_coding')\n"],
            cwd=tmp_path, env=_driver_env(), capture_output=True, text=True, timeout=180,
        )
        assert next_run.returncode == 0, next_run.stderr[-3000:]
        assert not _alive(rest), f"left behind: {_alive(rest)}"
        if left:
            assert "left behind by the embedded Ray of a killed driver" in next_run.stderr
        print(f"left after 3 s: {left}; the next run killed them")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        _kill(procs.values())


def test_local_cluster_listens_on_loopback_only_and_keeps_its_token_private(tmp_path):
    home = tmp_path / "home"  # no token yet: local.sh generates one
    home.mkdir()
    cluster = LocalCluster(workers=1, cpus=1, env={"HOME": str(home)})
    driver = None
    try:
        out = cluster.up()
        token = home / ".ray" / "auth_token"
        assert "generated a Ray authentication token" in out
        assert stat.S_IMODE(token.stat().st_mode) == 0o600

        def status():  # Ray's status shows up a few seconds after `up` on a loaded machine
            done = subprocess.run(["bash", str(LOCAL_SH), "status"], env=cluster.env(), capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            return "Active" in done.stdout

        wait_for(status, 90, interval=2, what="the cluster's status (Active nodes)")

        spec = write_spec(tmp_path, fixed=LONG, trials=1, concurrency=1)
        driver = subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(spec), "--address", cluster.address],
                                  cwd=tmp_path, env={**cluster.env(), "PYTHONPATH": str(REPO)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        nodes = [int(f.read_text()) for f in (cluster.tmp / "local-cluster").glob("*.pid")]

        def trial_runs():
            assert driver.poll() is None, "the driver exited"
            tree = _tree(*nodes, driver.pid)
            return tree if any(p.name().startswith("ray::") and p.name() not in RAY_INFRA for p in tree.values()) else None

        wait_for(trial_runs, 120, what="a running trial on the cluster")
        time.sleep(1.0)
        rows = _assert_loopback_only(_tree(*nodes, driver.pid))
        assert any(port == cluster.dashboard_port for *_, port in rows), rows
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.down()
