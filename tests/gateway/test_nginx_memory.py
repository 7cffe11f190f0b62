"""nginx within its production memory limit under a fleet on slow links: the rendered gateway with nginx
(master and workers, moved there once started) in a memory cgroup limited to production's NGINX_LIMITS
(components/plan/swarm_specs.py), swap off, and several hundred concurrent downloads of one blob through
the registry door (filesystem storage, so every byte passes through nginx, as on NFS), each client
reading slowly through a small receive window. Every download completes with the right bytes; the OOM
killer never runs. Measured on the earlier buffers (1.25 MiB per connection): the OOM killer ran and
163 of 300 downloads broke off.

The figures (peak memory, per connection) are printed: docs/architecture.md sizes buffers and the limit
from them. cgroup v1 here does not count socket buffers, which production's cgroup v2 does: the limit
keeps headroom for them (see there)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.plan.swarm_specs import NGINX_LIMITS
from gateway.config import FilesystemStorage
from gateway.local.runner import LocalGateway
from gateway.names import NGINX_KEY
from tests.gateway.client_harness import USERS, Launcher, descendants, team_settings
from tests.gateway.routing_fixtures import TinyImage, digest_of

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
CLIENTS = 300
BLOB_MIB = 8
READ_BYTES = 32 * 1024  # per client and tick: 320 KiB/s each, about 25 s per download
TICK_SECONDS = 0.1
RECEIVE_WINDOW = 32 * 1024  # the client's socket buffer: bytes wait in nginx, not in the kernel
DEADLINE_SECONDS = 150


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    if os.geteuid() != 0 or not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    group = CGROUP_ROOT / f"owncr-nginx-{secrets.token_hex(4)}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(NGINX_LIMITS["memory_bytes"]))
    (group / "memory.swappiness").write_text("0")
    yield group
    for pid in (group / "cgroup.procs").read_text().split():  # the gateway stopped them; stragglers
        os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    group.rmdir()


def _move_nginx_into(group: Path, gateway: LocalGateway) -> None:
    """nginx's master and workers into `group`: what they allocate from now on (every connection's
    buffers) is charged there; this kernel no longer moves earlier charges along (move_charge_at_immigrate
    is gone), so the few MiB nginx holds at start are not counted."""
    master = gateway.processes[NGINX_KEY].pid
    for pid in [master, *(p.pid for p in descendants(master))]:
        (group / "cgroup.procs").write_text(str(pid))


def _download_all(port: int, path: str, auth: str, size: int) -> tuple[list[str], int]:
    """CLIENTS downloads at once, each read slowly; the sha256 of each body (or why it failed)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    sel = selectors.DefaultSelector()
    states = []
    for i in range(CLIENTS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_WINDOW)
        s.connect(("127.0.0.1", port))
        s.sendall(request.encode())
        s.setblocking(False)
        state = {"i": i, "buf": bytearray(), "done": False, "sock": s}
        states.append(state)
        sel.register(s, selectors.EVENT_READ, state)
    deadline = time.monotonic() + DEADLINE_SECONDS
    open_ = CLIENTS
    while open_ and time.monotonic() < deadline:
        tick = time.monotonic()
        for key, _ in sel.select(timeout=TICK_SECONDS):
            state = key.data
            try:
                chunk = state["sock"].recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if chunk:
                state["buf"] += chunk
                continue
            sel.unregister(state["sock"])
            state["sock"].close()
            state["done"] = True
            open_ -= 1
        time.sleep(max(0.0, TICK_SECONDS - (time.monotonic() - tick)))
    results = []
    for state in states:
        if not state["done"]:
            state["sock"].close()
            results.append("unfinished")
            continue
        head, _, body = bytes(state["buf"]).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        ok = " 200 " in status and len(body) == size
        results.append("sha256:" + hashlib.sha256(body).hexdigest() if ok else f"{status} {len(body)} bytes")
    return results, CLIENTS - open_


def test_hundreds_of_slow_downloads_fit_in_nginx_production_memory_limit(
    memory_cgroup: Path, launch: Launcher, tmp_path: Path
) -> None:
    # memory_cgroup first: set up before the gateway, removed after the gateway stopped.
    upstream = launch.distribution("dockerhub")
    settings = team_settings(FilesystemStorage(str(tmp_path / "storage")), upstream.url)
    gateway = launch.local_gateway(settings)
    _move_nginx_into(memory_cgroup, gateway)
    auth = ("alice", USERS["alice"])
    image = TinyImage.make("a layer the fleet pulls", size=BLOB_MIB << 20)
    image.push(gateway.registry_url, "team/fleet", "1", auth)
    blob = digest_of(image.layer)
    baseline = int((memory_cgroup / "memory.usage_in_bytes").read_text())

    token = base64.b64encode(":".join(auth).encode()).decode()
    started = time.monotonic()
    results, finished = _download_all(
        gateway.registry_port, f"/v2/team/fleet/blobs/{blob}", token, len(image.layer)
    )
    took = time.monotonic() - started

    peak = int((memory_cgroup / "memory.max_usage_in_bytes").read_text())
    oom = dict(line.split() for line in (memory_cgroup / "memory.oom_control").read_text().splitlines())
    failed = [r for r in results if r != blob]
    mib, limit, kills = 2**20, NGINX_LIMITS["memory_bytes"], oom.get("oom_kill", "?")
    per_connection = (peak - baseline) / CLIENTS / 1024
    print(
        f"\n{CLIENTS} slow downloads of {BLOB_MIB} MiB in {took:.0f} s: {len(failed)} failed; nginx memory "
        f"{baseline / mib:.0f} MiB before, peak {peak / mib:.0f} MiB of {limit / mib:.0f} MiB"
        f" ({per_connection:.0f} KiB per connection); OOM kills {kills}"
    )
    assert oom.get("oom_kill", "0") == "0", "the OOM killer ran inside nginx's limit"
    assert failed == [], (
        f"{len(failed)} of {CLIENTS} downloads failed, e.g. {failed[:3]} ({finished} finished)"
    )
    assert gateway.dead() == [], gateway.dead()
