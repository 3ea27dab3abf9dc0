"""optuna-dashboard over a study storage, on loopback unless asked otherwise.

optuna-dashboard has no authentication and its API can rename and delete studies, tell trials,
upload or delete artifacts and migrate the storage's schema, so ``serve`` binds 127.0.0.1 by
default and refuses any other address without ``allow_remote``. It also refuses writes from other
origins (a web page posting a form to it) and, on loopback, requests whose Host header is not a
loopback name (DNS rebinding). Trial artifacts (files uploaded with ``optuna.artifacts.upload_artifact``)
live in an ``artifacts`` directory beside a SQLite storage. optuna_dashboard is imported inside the
functions and ``hpo.cli`` imports this module inside its command, so ``hpo --help`` stays fast.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from urllib.parse import urlsplit

from hpo.errors import DashboardError
from hpo.storage import artifact_dir as storage_artifact_dir



def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``; with it, warn on stderr."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise DashboardError(
            f"optuna-dashboard has no authentication; anyone who can reach {host!r} could read, edit and "
            f"delete every study in the storage (use 127.0.0.1 and an SSH tunnel: ssh -L 8080:127.0.0.1:8080 "
            f"SERVER), or pass --allow-remote to serve on {host} anyway")
    print(f"hpo: warning: serving optuna-dashboard on {host} without authentication: "
          "anyone who can reach it can read, change and delete the studies", file=sys.stderr)


def make_app(storage_url: str, artifact_dir: str | Path | None = None):
    """The dashboard's WSGI app over an existing storage, with a file-system artifact store."""
    import optuna.artifacts
    import optuna_dashboard

    from hpo.results import open_existing

    storage = open_existing(storage_url)  # before the artifact directory: a typo creates nothing
    artifact_dir = Path(artifact_dir) if artifact_dir is not None else storage_artifact_dir(storage_url)
    try:
        artifact_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DashboardError(f"artifact directory {str(artifact_dir)!r}: {e.strerror}") from None
    store = optuna.artifacts.FileSystemArtifactStore(artifact_dir)
    return optuna_dashboard.wsgi(storage, artifact_store=store)


def _hostname(netloc: str) -> str | None:
    """The host name of ``host[:port]`` (brackets stripped), or None when it does not parse."""
    try:
        return urlsplit(f"//{netloc}").hostname
    except ValueError:
        return None


def guard(app, loopback: bool = True):
    """Wrap a WSGI app to answer 403 to a write (any method but GET/HEAD) sent from another origin
    (cross-site form posts need no CORS preflight) and, with ``loopback``, to a request whose Host
    header is not a loopback name (a page that rebinds its own name to 127.0.0.1)."""
    def guarded(environ, start_response):
        host = environ.get("HTTP_HOST", "")
        origin = environ.get("HTTP_ORIGIN")
        method = environ.get("REQUEST_METHOD", "GET")
        if loopback and host and not is_loopback(_hostname(host) or ""):
            reason = f"Host {host!r} refused: this dashboard answers loopback names only"
        elif method not in ("GET", "HEAD") and origin is not None and urlsplit(origin).netloc != host:
            reason = f"{method} from origin {origin!r} refused: writes are accepted from the dashboard's own pages only"
        else:
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{reason}\n".encode()]

    return guarded


def make_server(app, host: str, port: int, quiet: bool = False):
    """A threaded wsgiref server bound to ``host:port`` (as the optuna-dashboard command runs)."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgiref_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Handler(WSGIRequestHandler):
        def address_string(self) -> str:  # no reverse DNS lookup per request
            return self.client_address[0]

        def log_message(self, *args) -> None:
            if not quiet:
                super().log_message(*args)

    try:
        return wsgiref_server(host.strip("[]"), port, app, server_class=Server, handler_class=Handler)
    except OSError as e:
        raise DashboardError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, allow_remote: bool = False,
          artifact_dir: str | Path | None = None, quiet: bool = False) -> None:
    """Serve the dashboard until Ctrl-C; prints its URL once it listens. ``quiet`` drops request logs."""
    if not 0 <= port <= 65535:
        raise DashboardError(f"port must be in 0..65535 (0 picks a free one), got {port}")
    check_host(host, allow_remote)
    artifact_dir = Path(artifact_dir) if artifact_dir is not None else storage_artifact_dir(storage_url)
    app = make_app(storage_url, artifact_dir)
    server = make_server(guard(app, loopback=is_loopback(host)), host, port, quiet)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(f"optuna-dashboard for {storage_url} (artifacts in {artifact_dir}) at "
          f"http://{shown}:{server.server_port}/dashboard  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
