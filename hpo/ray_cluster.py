"""The Ray side of a job: joining or starting Ray, and checking that some node can hold a trial.

The embedded Ray of ``hpo run`` is local; a joined cluster is read through Ray's public API where
one exists. The autoscaler's node types are read from what the autoscaler reports (see
``autoscaler_node_types``), which has no public API yet.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hpo.errors import ClusterError
from hpo.spec import JobSpec


def _module_root(task: str) -> str | None:
    """The directory that must be on PYTHONPATH for a ``module:Class`` task to import on workers."""
    if ":" not in task:
        return None
    import importlib.util

    top = task.split(":", 1)[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.origin:
        return None
    origin = Path(found.origin)
    return str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)


def connect_ray(address: str | None, task: str) -> str | None:
    """Join ``address`` or start an embedded local Ray (reusing one already started in this process).

    The embedded Ray is closed by default: its GCS, raylet, workers, agents and metrics export
    listen on 127.0.0.1 only (it runs no dashboard), and it does not outlive this process: a
    watchdog kills what is left of it when this process dies without shutting it down (SIGKILL,
    the OOM killer), and what the embedded Ray of an earlier, killed driver left behind is killed
    before a new one starts (``clean_dead_embedded``). A loopback ``address`` (127.0.0.1:PORT, a
    ``cluster/local.sh`` cluster) is joined on 127.0.0.1 rather than on the machine's address.

    Returns the URL of Ray's dashboard when the cluster runs one (a joined cluster; the embedded
    Ray starts none).
    """
    import ray

    if ray.is_initialized():
        return None
    paths = [p for p in (_module_root(task), os.getcwd(), os.environ.get("PYTHONPATH")) if p]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    kwargs = dict(runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    try:
        if address:
            with _loopback_node(_is_loopback_address(address)):
                context = ray.init(address=address, **kwargs)
        else:
            clean_dead_embedded()
            with _loopback_node(True):  # never join a running cluster
                context = ray.init(address="local", include_dashboard=False, **kwargs)
            _start_watchdog(context)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE") != "token" and Path("~/.ray/auth_token").expanduser().exists():
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token)"
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: {str(e).splitlines()[0]}{hint}") from None
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def _is_loopback_address(address: str) -> bool:
    """Whether a GCS address (``host:port``, or ``auto`` read from ``RAY_ADDRESS``) is this machine's loopback."""
    import ipaddress

    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or "://" in address:  # ray://, http://: not a GCS address
        return False
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _loopback_node:  # noqa: N801 - a context manager, used as `with _loopback_node(on):`
    """While active (and ``on``), Ray keeps 127.0.0.1 as this node's and the GCS's address.

    Ray binds its gRPC servers (GCS, raylet, core workers, dashboard agent) and its metrics export
    to 127.0.0.1 when the node's address is 127.0.0.1, and to every interface otherwise. But Ray
    2.60 turns a loopback address, given (``_node_ip_address``, ``address="127.0.0.1:P"``) or
    detected, into the machine's address (``ray._private.services.resolve_ip_for_localhost``),
    unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray reads once, when it is imported
    (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``). There is no public argument for this, and
    ray is imported long before this runs, so this sets that private constant during ``ray.init``
    and restores it afterwards (the node keeps the address it was started with).
    """

    def __init__(self, on: bool):
        self.on, self.old = on, None

    def __enter__(self):
        if self.on:
            from ray._private import ray_constants

            self.old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
            if self.old is not None:
                ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = self.old


# The embedded Ray's processes die with the driver only in part: the GCS and the raylet at once
# (Ray starts them with PR_SET_PDEATHSIG), idle workers within ~3 s, but the dashboard and runtime-env
# agents stay about 60 s (they wait on the dead GCS). So `connect_ray` leaves a marker in the
# embedded Ray's session directory (the driver's pid and start time) and starts a watchdog that
# kills the session's processes when the driver dies; a later `connect_ray` kills those of any
# marked session whose driver is gone (the watchdog was killed too). Only sessions with this
# marker are touched: never a Ray that a user or `cluster/local.sh` started.
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


def _start_watchdog(context) -> None:
    """Mark the embedded Ray's session as ours and start its watchdog (``watch_embedded``)."""
    import subprocess

    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    start = _process_start(os.getpid())
    if not session or start is None or not sys.platform.startswith("linux"):
        return
    try:
        (Path(session) / EMBEDDED_MARKER).write_text(json.dumps({"pid": os.getpid(), "start": start}))
    except OSError:
        return
    root = str(Path(__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {root!r}); from hpo.ray_cluster import watch_embedded; watch_embedded()"
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


BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # `ray up` leaves the cluster's config here on the head node


def _readonly(node_type: str) -> bool:
    """Ray's name for a node no autoscaler manages (a cluster started by hand): ``node_<node id>``."""
    return node_type.startswith("node_") and len(node_type) > 40


def autoscaler_node_types(bootstrap: Path | None = None) -> tuple[str, dict[str, dict | None]] | None:
    """What the connected cluster's autoscaler can add: ``(where that was read, {node type: resources})``.

    None when the cluster has no autoscaler (nodes started by hand, an embedded Ray). The mapping
    holds the worker node types it may still add (``max_workers`` > 0) with their resources per
    node, ``None`` for a type whose resources are not visible; it is empty when an autoscaler runs
    but its node types are not visible from here. Read, in order: the cluster config the autoscaler
    reports to the GCS (what Ray Train and Ray Data read; not every autoscaler reports it), the
    cluster launcher's config on the head (``~/ray_bootstrap_config.yaml``, a ``ray up`` cluster),
    then the autoscaler's status (v1 and v2), whose node types name a read-only cluster's nodes
    ``node_<id>`` and an autoscaler's by their configured types (KubeRay groups, ``ray up`` types).
    """
    import ray

    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older Ray, or a GCS without the key
        config = None
    if config is not None and config.node_group_configs:
        types = {g.name or f"group-{i}": dict(g.resources) for i, g in enumerate(config.node_group_configs) if g.max_count != 0}
        return "the cluster config the autoscaler reported", types

    path = (bootstrap or BOOTSTRAP_CONFIG).expanduser()
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        node_types = data.get("available_node_types") or {}
        if isinstance(node_types, dict) and node_types:
            head = data.get("head_node_type")
            types = {
                name: (dict(t.get("resources")) if t.get("resources") else None)
                for name, t in node_types.items()
                if name != head and isinstance(t, dict) and t.get("max_workers", data.get("max_workers", 1)) != 0
            }
            return str(path), types

    seen: set[str] = set()
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_status

            status = get_cluster_status(ray.get_runtime_context().gcs_address)
            for node in [*status.active_nodes, *status.idle_nodes, *status.pending_nodes, *status.pending_launches]:
                seen.add(node.ray_node_type_name)
        else:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
            report = json.loads(raw).get("autoscaler_report") or {} if raw else {}
            for key in ("active_nodes", "idle_nodes", "pending_launches"):
                seen.update(report.get(key) or {})
            seen.update(row[1] for row in report.get("pending_nodes") or [] if len(row) > 1)
    except Exception:  # noqa: BLE001 - no status (yet), or a Ray whose status looks different
        return None
    seen.discard("")
    if seen and not all(_readonly(t) for t in seen):
        return f"the autoscaler's status (node types seen: {', '.join(sorted(seen))})", {}
    return None


def _offers(resources: dict, cpu: float, gpu: float) -> bool:
    return resources.get("CPU", 0.0) >= cpu and resources.get("GPU", 0.0) >= gpu


def check_resources(spec: JobSpec, out: Callable[[str], None] = print) -> None:
    """Fail unless some node has, or an autoscaler can add, the CPU and GPU one trial asks for.

    A trial no node can hold would stay PENDING forever. When no alive node has it, an autoscaling
    cluster that can add such a node (GPU workers that scale from zero) is fine: the trials wait for
    it, and this prints so. Without an autoscaler, or when none of its node types has it, this is an
    error. When an autoscaler runs but its node types cannot be read here (KubeRay, for one), this
    prints a warning and goes on.
    """
    import ray

    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(_offers(n, cpu, gpu) for n in nodes):
        return
    max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if cpu > max_cpu:
        problem = f"resources.cpu={cpu:g} per trial, but the largest node has {max_cpu:g} CPUs"
    elif gpu > max_gpu:
        problem = f"resources.gpu={gpu:g} per trial, but the largest node has {max_gpu:g} GPUs"
    else:
        problem = f"resources: {cpu:g} CPUs and {gpu:g} GPUs per trial, but no node has both"
    need = f"{cpu:g} CPUs and {gpu:g} GPUs"
    scaling = autoscaler_node_types()
    if scaling is None:
        raise ClusterError(f"{problem}, and the cluster has no autoscaler that could add such a node")
    source, types = scaling
    fitting = [name for name, r in types.items() if r is not None and _offers(r, cpu, gpu)]
    if fitting:
        out(f"no node has {need} for a trial yet: the trials wait for the autoscaler to add a {fitting[0]!r} node")
        return
    if types and all(r is not None for r in types.values()):
        raise ClusterError(f"{problem}, and none of the autoscaler's node types ({', '.join(types)}) has it")
    out(f"warning: {problem}. The trials wait for the cluster's autoscaler to add a node that has it "
        f"(read from {source}); if none of its node types has {need}, they wait forever: stop the job then "
        "(Ctrl-C, or `hpo jobs stop`)")


SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse")


def filesystem_type(path: Path) -> str | None:
    """The type of the file system that holds ``path`` (the longest mount point above it in /proc/mounts)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    path = path.resolve()
    best: tuple[int, str] | None = None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and (best is None or len(str(point)) > best[0]):
            best = (len(str(point)), fields[2])
    return None if best is None else best[1]


def check_results_dir(spec: JobSpec, out: Callable[[str], None] = print) -> None:
    """Refuse a node-local ``results_dir`` when the cluster's nodes are on several hosts.

    Trials save checkpoints under ``results_dir`` and are restored from them on any node, so every
    host must reach it: a URI (``s3://``, ``gs://``) or a shared file system (NFS and the like).
    With one host and an autoscaler, this warns: nodes it adds may not reach the directory.
    """
    import ray

    if "://" in spec.results_dir:
        return
    directory = Path(spec.results_dir).expanduser().absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    kind = filesystem_type(directory)
    if kind is not None and kind.split(".")[0] in SHARED_FILESYSTEMS:
        return
    hosts = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    problem = (f"results_dir {spec.results_dir!r} is on this node's own disk ({kind or 'file system unknown'}), "
               "but checkpoints must be reachable from every node")
    fix = "set results_dir to a shared path (NFS) or to s3://, gs:// (see cluster/README.md)"
    if len(hosts) > 1:
        raise ClusterError(f"{problem} and the cluster's nodes are on {len(hosts)} hosts; {fix}")
    if autoscaler_node_types() is not None:
        out(f"warning: {problem}; nodes the autoscaler adds on other hosts will not reach it: {fix}")
