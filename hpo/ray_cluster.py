"""The Ray side of a job: joining a cluster or starting the embedded Ray, and checking that the cluster fits the job.

A joined cluster is read through Ray's public API where one exists: its nodes and their resources
(``ray.nodes()``); the v2 autoscaler's status (``ray.autoscaler.v2.sdk``, outside ``ray._private``).
What else an autoscaler can add is read from what it reports to the GCS, and a loopback cluster
is joined on 127.0.0.1, through Ray's private API, which has no public alternative for either:
those uses are ``hpo.ray_private``. The embedded Ray of ``hpo run`` (no ``--address``) and its
watchdog are ``hpo.embedded_ray``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hpo import embedded_ray
from hpo.errors import ClusterError
from hpo.ray_private import autoscaler_v1_report, loopback_node, reported_cluster_config
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
    before a new one starts (``hpo.embedded_ray``). A loopback ``address`` (127.0.0.1:PORT, a
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
            with loopback_node(_is_loopback_address(address)):
                context = ray.init(address=address, **kwargs)
        else:
            context = embedded_ray.start(**kwargs)
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
        config = reported_cluster_config()
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
            report = autoscaler_v1_report()
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
