"""hpo dashboard: loopback-only serving, the dashboard's API and artifacts over a real SQLite study,
and (slow) the study page in headless Chromium."""

import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from hpo.cli import main
from hpo.dashboard import check_host, guard, make_app, make_server
from hpo.storage import artifact_dir

from .conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def png_bytes(width: int, height: int, rgb=(200, 40, 40)) -> bytes:
    """A valid one-colour RGB PNG, written without any imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture
def storage(tmp_path):
    """Study 's': 3 complete trials and a pruned one, each with params, reports, attributes and a PNG artifact."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    store_dir = artifact_dir(url)
    store_dir.mkdir()
    store = FileSystemArtifactStore(store_dir)
    image = tmp_path / "residual.png"
    image.write_bytes(png_bytes(64, 48))
    study = optuna.create_study(study_name="s", storage=url, direction="minimize")
    for i, value in enumerate([-3.0, -5.0, None, -4.0]):
        t = study.ask()
        t.suggest_float("mu", 0.0, 0.3)
        t.suggest_categorical("hypergrad", ["unroll", "jfb"])
        for step in (10, 20):
            t.report(-1.0 - i - step / 100, step)
        t.set_user_attr("fp_residual", 0.01 * (i + 1))
        t.set_user_attr("device", "cpu")
        upload_artifact(artifact_store=store, file_path=str(image), study_or_trial=t)
        study.tell(t, value, state=TrialState.PRUNED if value is None else TrialState.COMPLETE)
    optuna.create_study(study_name="empty", storage=url)
    return url


@pytest.fixture
def server(storage):
    """The dashboard of ``storage`` served (as ``hpo dashboard`` serves it) on 127.0.0.1, a free port."""
    srv = make_server(guard(make_app(storage)), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def http(url: str, host: str | None = None, method: str = "GET", data: bytes | None = None,
         headers: dict | None = None) -> tuple[int, str, bytes]:
    """Request ``url`` (optionally with another Host header): status, content type, body."""
    headers = {**({"Host": host} if host else {}), **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def study_detail(base: str, name: str = "s") -> dict:
    status, _, body = http(f"{base}/api/studies")
    assert status == 200
    ids = {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}
    status, _, body = http(f"{base}/api/studies/{ids[name]}")
    assert status == 200
    return {"study_id": ids[name], **json.loads(body)}


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///path/to/studies.db", Path("path/to/artifacts")),
    ("sqlite:////abs/dir/x.db", Path("/abs/dir/artifacts")),
    ("sqlite:///studies.db", Path("artifacts")),
    ("sqlite:///:memory:", Path("hpo-results/artifacts")),
    ("postgresql://user@host/db", Path("hpo-results/artifacts")),
])
def test_artifact_dir_is_beside_a_sqlite_storage(url, expected):
    assert artifact_dir(url) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_loopback_hosts_are_accepted_silently(host, capsys):
    check_host(host, allow_remote=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org", ""])
def test_remote_host_is_refused_as_one_line(host, storage, tmp_path, capsys):
    assert main(["dashboard", "--storage", storage, "--host", host, "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hpo: error: optuna-dashboard has no authentication")
    assert f"--allow-remote to serve on {host} anyway" in err
    assert not (tmp_path / "a").exists()


def test_allow_remote_warns_on_one_line(capsys):
    check_host("0.0.0.0", allow_remote=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "without authentication" in err


def test_missing_storage_is_one_line_and_creates_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    assert main(["dashboard", "--storage", url, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no database" in err
    assert list(tmp_path.iterdir()) == []  # neither the database nor an artifacts directory


def test_busy_port_is_one_line(storage, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--storage", storage, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot serve on 127.0.0.1:{port}" in err


def test_api_serves_study_list_and_study_detail(server):
    status, content_type, body = http(f"{server}/api/studies")
    assert status == 200 and content_type.startswith("application/json")
    assert sorted(s["study_name"] for s in json.loads(body)["study_summaries"]) == ["empty", "s"]
    detail = study_detail(server)
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete", "Pruned", "Complete"]
    assert [t["number"] for t in detail["best_trials"]] == [1]
    assert {p["name"] for p in trials[0]["params"]} == {"mu", "hypergrad"}
    assert [v["step"] for v in trials[0]["intermediate_values"]] == [10, 20]
    assert {a["key"] for a in trials[0]["user_attrs"]} == {"fp_residual", "device"}
    status, _, body = http(f"{server}/api/studies/{detail['study_id']}?after=3")
    assert status == 200 and [t["number"] for t in json.loads(body)["trials"]] == [3]  # the SPA's poll


def test_trial_artifact_is_downloadable(server):
    detail = study_detail(server)
    trial = detail["trials"][1]
    [artifact] = trial["artifacts"]
    assert artifact["filename"] == "residual.png" and artifact["mimetype"] == "image/png"
    prefix = f"{server}/artifacts/{detail['study_id']}/{trial['trial_id']}"
    assert http(f"{prefix}/{artifact['artifact_id']}") == (200, "image/png", png_bytes(64, 48))
    assert http(f"{prefix}/00000000-0000-0000-0000-000000000000")[0] == 404


def test_foreign_host_header_is_refused(server):
    """A page that rebinds its own name to 127.0.0.1 (DNS rebinding) sends its name as Host: refused."""
    port = server.rsplit(":", 1)[1]
    assert http(f"{server}/api/studies", host=f"attacker.example:{port}")[0] == 403
    assert http(f"{server}/api/studies", host=f"localhost:{port}")[0] == 200
    assert http(f"{server}/api/studies", host=f"[::1]:{port}")[0] == 200


def test_cross_origin_write_is_refused(server):
    """A web page may post a form anywhere without a CORS preflight; the guard refuses it by Origin."""
    form = {"Origin": "http://attacker.example", "Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = http(f"{server}/incompatible-rdb-schema", method="POST", data=b"", headers=form)
    assert status == 403 and b"origin 'http://attacker.example' refused" in body  # else: a schema migration
    note_url = f"{server}/api/studies/{study_detail(server)['study_id']}/note"
    put = {"Content-Type": "application/json"}
    note = json.dumps({"version": 1, "body": "checked"}).encode()
    assert http(note_url, method="PUT", data=note, headers=put)[0] == 204  # no Origin: a script
    note = json.dumps({"version": 2, "body": "again"}).encode()
    assert http(note_url, method="PUT", data=note, headers={**put, "Origin": server})[0] == 204  # its own page


def test_cli_serves_until_interrupted(storage, tmp_path):
    artifacts = tmp_path / "elsewhere"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "dashboard", "--storage", storage, "--port", "0",
         "--artifacts", str(artifacts), "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line and str(artifacts) in line, proc.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        assert http(url)[0] == 200  # the SPA's page
        assert http(url.replace("/dashboard", "/api/studies"))[0] == 200
        assert artifacts.is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ""  # --quiet: no request log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_study_page_in_headless_chromium(server, tmp_path):
    """Open the study page and a trial in a real browser; its artifact image loads; save a screenshot."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    detail = study_detail(server)
    failed = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{server}/dashboard/studies/{detail['study_id']}")
            page.get_by_text("Best Trial (number=1)").wait_for(timeout=30_000)
            page.goto(f"{server}/dashboard/studies/{detail['study_id']}/trials")
            for number in range(4):
                page.get_by_role("button", name=f"Trial {number}").first.wait_for(timeout=30_000)
            page.get_by_role("button", name="Trial 1").first.click()
            page.get_by_role("heading", name=f"Trial 1 (trial_id={detail['trials'][1]['trial_id']})").wait_for()
            image = page.locator('img[alt="residual.png"]').first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=30_000)
            assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 48]
            write = page.evaluate("""id => fetch(`/api/studies/${id}/note`, {method: "PUT",
                headers: {"Content-Type": "application/json"}, body: JSON.stringify({version: 1, body: "ok"})})
                .then(r => r.status)""", detail["study_id"])
            assert write == 204  # the dashboard's own pages may still write (same origin)
            screenshot = tmp_path / "dashboard-trial.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    assert failed == []
    assert screenshot.stat().st_size > 10_000
