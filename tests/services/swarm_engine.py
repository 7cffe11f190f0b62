"""A throwaway dockerd with a single-node swarm, and a minimal Engine API client over its unix socket.

The daemon runs as a child of the test with its own data root, exec root, socket and pid file, and
publishes container ports on 127.0.0.1 only (`--ip`). Swarm is initialised on 127.0.0.1 with a free
listen port. `Engine` speaks the Engine API (https://docs.docker.com/reference/api/engine/) with JSON,
so the services test can post service specs field by field instead of going through CLI flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.engine.rollout import UnixConnection
from gateway.local.binaries import default_docker, default_dockerd


class EngineError(RuntimeError):
    pass


class Engine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        # Unversioned until the daemon said its API version; then that version, as the provider
        # negotiates it (Docker 28.5: 1.51).
        self.api = ""

    @property
    def cli(self) -> list[str]:
        return [default_docker(), "-H", f"unix://{self.socket_path}"]

    def negotiate(self) -> str:
        self.api = ""
        self.api = "/v" + self.get("/version")["ApiVersion"]
        return self.api

    def request(
        self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 204)
    ) -> Any:
        conn = UnixConnection(self.socket_path, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, self.api + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status not in expect:
            raise EngineError(f"{method} {path}: {resp.status} {raw.decode(errors='replace')[:500]}")
        if resp.getheader("Content-Type", "").startswith("application/json") and raw.strip():
            return json.loads(raw)
        return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port(low: int = 20000, high: int = 30000) -> int:
    """A free UDP port in Docker's allowed data-path range (1024-49151), below the ephemeral ports."""
    for port in random.sample(range(low, high), 50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))  # noqa: S104 (probe only: VXLAN binds the wildcard address)
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


def wait_for(what: str, check, timeout: float, interval: float = 0.5) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, EngineError) as err:
            last = err
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last})")


@contextmanager
def swarm_daemon(workdir: Path) -> Iterator[Engine]:
    """dockerd (not yet in a swarm); leaves any swarm and stops the daemon (process group) afterwards."""
    # Unix socket paths are limited to 108 bytes: keep the exec root and socket short.
    short = Path(tempfile.mkdtemp(prefix="owncr-sw-"))
    sock = str(short / "d.sock")
    # Swarm creates the docker_gwbridge interface in the host's namespace and dockerd leaves it there.
    had_gwbridge = Path("/sys/class/net/docker_gwbridge").exists()
    log = open(workdir / "dockerd.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [
            default_dockerd(),
            f"--data-root={workdir / 'data'}",
            f"--exec-root={short / 'x'}",
            f"--pidfile={short / 'd.pid'}",
            f"-H=unix://{sock}",
            # Publish task ports on loopback only (Docker's userland proxy forwards them, no NAT rules);
            # no docker0 bridge (swarm brings docker_gwbridge); leave the host's iptables alone.
            "--ip=127.0.0.1",
            "--bridge=none",
            "--iptables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = Engine(sock)
    try:
        wait_for("dockerd", lambda: engine.get("/_ping") == "OK", 30)
        engine.negotiate()
        yield engine
    finally:
        with contextlib.suppress(OSError, EngineError):
            engine.request("POST", "/swarm/leave?force=true", expect=(200, 503))
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(short, ignore_errors=True)
        if not had_gwbridge:
            subprocess.run(["ip", "link", "delete", "docker_gwbridge"], capture_output=True, check=False)


def running_tasks(engine: Engine, service_id: str, *, up_to_date: bool = False) -> list[dict[str, Any]]:
    """Tasks Swarm wants running; with `up_to_date`, only those of the service's current spec."""
    wanted: dict[str, list[str]] = {"service": [service_id], "desired-state": ["running"]}
    if up_to_date:
        wanted["_up-to-date"] = ["true"]
    filters = json.dumps(wanted)
    return engine.get("/tasks?filters=" + urllib.parse.quote(filters))


def wait_converged(engine: Engine, service_ids: list[str], timeout: float) -> None:
    """Every service has as many running, healthy tasks as it wants (one per node for global)."""

    def converged() -> bool:
        for sid in service_ids:
            svc = engine.get(f"/services/{sid}")
            mode = svc["Spec"]["Mode"]
            want = mode["Replicated"]["Replicas"] if "Replicated" in mode else 1
            tasks = running_tasks(engine, sid)
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            if len(running) < want:
                return False
            for t in running:
                cid = t["Status"]["ContainerStatus"]["ContainerID"]
                health = engine.get(f"/containers/{cid}/json")["State"].get("Health")
                if health is not None and health["Status"] != "healthy":
                    return False
        return True

    wait_for("services", converged, timeout, interval=1.0)


def service_logs(engine: Engine, service_id: str) -> str:
    out = subprocess.run(
        [*engine.cli, "service", "logs", "--raw", "--tail", "40", service_id],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout + out.stderr
