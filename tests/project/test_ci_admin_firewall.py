"""scripts/ci_admin_firewall.py against a stand-in for DigitalOcean's API on loopback: which firewall it
opens for the runner (only its /32, only 22 and 2376, on the stack's node tag) and what it closes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import ROOT

SCRIPT = ROOT / "scripts" / "ci_admin_firewall.py"


class StubApi:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.firewalls = [
            {"id": "old-1", "name": "owncr-dev-ci-41", "created_at": "2020-01-01T00:00:00Z"},  # a leftover
            {"id": "prod-own", "name": "owncr-dev-firewall", "created_at": "2020-01-01T00:00:00Z"},
            {"id": "other", "name": "owncr-prod-ci-7", "created_at": "2020-01-01T00:00:00Z"},
        ]
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(("POST", self.path, body))
                assert self.headers["Authorization"] == "Bearer do-token"
                if self.path == "/v2/tags":
                    self._answer(422, {"id": "unprocessable_entity", "message": "tag already exists"})
                else:
                    firewall = {"id": "fw-new", "name": body["name"], "created_at": "2099-01-01T00:00:00Z"}
                    stub.firewalls.append(firewall)
                    self._answer(202, {"firewall": firewall})

            def do_GET(self) -> None:  # noqa: N802
                stub.requests.append(("GET", self.path, None))
                self._answer(200, {"firewalls": stub.firewalls})

            def do_DELETE(self) -> None:  # noqa: N802
                stub.requests.append(("DELETE", self.path, None))
                self._answer(204)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stub() -> Iterator[StubApi]:
    api = StubApi()
    try:
        yield api
    finally:
        api.server.shutdown()


RUNNER_IP = "8.8.4.4"  # any public address (only a string here: nothing is sent to it)


def run(stub: StubApi, tmp_path: Path, *args: str, ip: str = RUNNER_IP) -> subprocess.CompletedProcess[str]:
    env = {"DIGITALOCEAN_TOKEN": "do-token", "OWNCR_DO_API": stub.url, "OWNCR_RUNNER_IP": ip}
    env["GITHUB_RUN_ID"] = "42"
    argv = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_open_then_close_touches_only_the_runners_firewall(stub: StubApi, tmp_path: Path) -> None:
    opened = run(stub, tmp_path, "open", "dev")
    assert opened.returncode == 0, opened.stderr
    (tag_call, firewall_call) = [r for r in stub.requests if r[0] == "POST"]
    assert tag_call[1:] == ("/v2/tags", {"name": "owncr-dev-node"})
    assert firewall_call[1] == "/v2/firewalls"
    assert firewall_call[2] == {
        "name": "owncr-dev-ci-42",
        "tags": ["owncr-dev-node"],
        "inbound_rules": [
            {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["8.8.4.4/32"]}},
            {"protocol": "tcp", "ports": "2376", "sources": {"addresses": ["8.8.4.4/32"]}},
        ],
        "outbound_rules": [],
    }
    assert (tmp_path / ".ci-admin-firewall-id").read_text() == "fw-new\n"

    closed = run(stub, tmp_path, "close", "dev")
    assert closed.returncode == 0, closed.stderr
    deletes = sorted(path for method, path, _ in stub.requests if method == "DELETE")
    # This job's firewall and dev's leftover from a killed job; never the stack's own or prod's.
    assert deletes == ["/v2/firewalls/fw-new", "/v2/firewalls/old-1"]
    assert not (tmp_path / ".ci-admin-firewall-id").exists()


@pytest.mark.parametrize(
    ("ip", "message"), [("not-an-ip", "not an IP address"), ("10.0.0.5", "not a public address")]
)
def test_an_address_the_nodes_would_not_see_is_refused(
    stub: StubApi, tmp_path: Path, ip: str, message: str
) -> None:
    done = run(stub, tmp_path, "open", "dev", ip=ip)
    assert done.returncode == 1 and message in done.stderr
    assert [r for r in stub.requests if r[1] == "/v2/firewalls"] == []


def test_usage(stub: StubApi, tmp_path: Path) -> None:
    done = run(stub, tmp_path, "widen", "dev")
    assert done.returncode == 2 and "usage" in done.stderr
