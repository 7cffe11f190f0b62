"""A plain Distribution registry on a loopback port (`PlainRegistry`), its access log read back as
requests, and a proxy that delays every request (`DelayProxy`, a distant upstream): the upstream
stand-ins and direct baselines of the benchmarks and the data-plane tests."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.local import binaries
from gateway.local.ports import free_port

CHUNK = 1 << 20


class StartError(RuntimeError):
    """A process did not start answering in time."""


ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


def spawn_until_ready(
    argv: list[str], log: Path, ready: Callable[[], bool], timeout: float, what: str
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output appended to `log`, and wait until `ready()`; on failure
    stop it and raise with the end of its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise StartError(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return proc


class PlainRegistry:
    """A plain Distribution registry on a loopback port, in its own session, with its access log in a
    file: the Docker Hub (or ghcr.io) stand-in, and the direct registry the gateway is compared with.
    Also used by the client tests (tests/gateway), which count what the upstream was asked."""

    def __init__(
        self, workdir: Path, name: str, binary: str | None = None, remote_url: str | None = None
    ) -> None:
        """`remote_url`: a pull-through cache of that registry instead (Distribution's `proxy`)."""
        self.binary = binary or binaries.default_registry()
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.log = self.dir / "access.log"
        config = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }
        if remote_url is not None:
            config["proxy"] = {"remoteurl": remote_url}
        self.config = self.dir / "config.yml"
        self.config.write_text(yaml.safe_dump(config))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> PlainRegistry:
        argv = [self.binary, "serve", str(self.config)]
        self._proc = spawn_until_ready(argv, self.log, self._answers, timeout, f"registry {self.host}")
        return self

    def _answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/v2/")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def requests(self) -> list[Request]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = ACCESS_LINE.search(line)
            if m:
                found.append(Request(m["method"], m["path"], int(m["status"])))
        return found

    def requests_for(self, repository: str, since: int = 0) -> list[Request]:
        """Requests naming `repository` or a repository below it (e.g. "acme" matches acme/app)."""
        prefix = f"/v2/{repository}"
        return [r for r in self.requests()[since:] if r.path == prefix or r.path.startswith(prefix + "/")]


class DelayProxy:
    """A TCP proxy that holds every chunk a client sends for `delay` seconds before passing it on: each
    request to the upstream stand-in then costs one far-away round trip, as Docker Hub would."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.port = free_port()
        self._target = ("127.0.0.1", target_port)
        self._delay = delay
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=30)
            threading.Thread(target=self._pump, args=(client, upstream, self._delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(CHUNK):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


# --- the run ----------------------------------------------------------------------------------------------
