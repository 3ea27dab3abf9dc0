"""Every use bmo-hpo makes of Ray's private API (``ray._private``), each where Ray has no public one.

Ray 2.60 has no public way to do any of these; each is one small function, so that an upgrade of
Ray that moves or renames the private name breaks here, in one place. ``PRIVATE_NAMES`` lists the
names used (``tests/hpo/test_ray_private.py`` fails loudly when one is gone, and checks that the
loopback toggle still works): on an upgrade, run that test first.

What breaks when a name disappears, should that test be skipped:

- ``loopback_node``: the embedded Ray and a joined loopback cluster would listen on every
  interface instead of 127.0.0.1 (``tests/hpo/test_ports.py`` would fail too);
- ``reported_cluster_config`` and ``autoscaler_v1_report``: ``check_resources`` would not see an
  autoscaler's node types from these sources (it falls back to the next source, then to "no
  autoscaler"); ``tests/hpo/test_cluster.py`` covers the v1 report.

``cluster/local.sh`` makes one more private use, in its own process:
``ray._private.services.resolve_ip_for_localhost`` (see the comment there); it is listed here too.
"""

from __future__ import annotations

import json

# (module, attribute) of every private name used here or by cluster/local.sh
PRIVATE_NAMES = [
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    ("ray._private.ray_constants", "DEBUG_AUTOSCALING_STATUS"),
    ("ray._private.state", "state"),
    ("ray._private.services", "resolve_ip_for_localhost"),  # cluster/local.sh
]


class loopback_node:  # noqa: N801 - a context manager, used as `with loopback_node(on):`
    """While active (and ``on``), Ray keeps 127.0.0.1 as this node's and the GCS's address.

    Ray binds its gRPC servers (GCS, raylet, core workers, dashboard agent) and its metrics export
    to 127.0.0.1 when the node's address is 127.0.0.1, and to every interface otherwise. But Ray
    2.60 turns a loopback address, given (``_node_ip_address``, ``address="127.0.0.1:P"``) or
    detected, into the machine's address (``ray._private.services.resolve_ip_for_localhost``),
    unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray reads once, when it is imported
    (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``). There is no public argument for this, and
    ray is imported long before this runs, so this sets that private constant during ``ray.init``
    and restores it afterwards (the node keeps the address it was started with).

    Private: should a Ray upgrade drop the constant, this does nothing (Ray then listens on every
    interface); ``tests/hpo/test_ray_private.py`` fails on such a Ray.
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


def reported_cluster_config():
    """The cluster config an autoscaler reported to the GCS (``autoscaler_pb2.ClusterConfig``), or None.

    What Ray Train and Ray Data read to learn what an autoscaler can add, through the same private
    ``ray._private.state.state.get_cluster_config()``: Ray has no public reader of it. Needs a
    connected Ray. Raises on a Ray without it (the caller treats that as "not reported").
    """
    from ray._private.state import state

    return state.get_cluster_config()


def autoscaler_v1_report() -> dict:
    """The v1 autoscaler's last status report (``autoscaler_report`` of what ``ray status`` shows), or {}.

    The v1 autoscaler writes its status as JSON to the GCS's internal key-value store, under the
    private key ``ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS``; ``ray status`` reads it
    there, and Ray has no public reader (``ray.autoscaler.v2.sdk.get_cluster_status``, which
    ``autoscaler_node_types`` uses for it, answers for the v2 autoscaler only). Needs a connected Ray.
    """
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    return json.loads(raw).get("autoscaler_report") or {} if raw else {}
