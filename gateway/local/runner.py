"""Run the rendered data plane locally: nginx and every Distribution registry as child processes on
127.0.0.1, from exactly the files `render_local` produces.

`LocalGateway` is the Python API (a context manager, used by the tests); `python -m gateway run` is the
command-line front end (gateway/__main__.py).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from gateway.config import FilesystemStorage, GatewaySettings
from gateway.local import binaries
from gateway.local.ports import free_ports
from gateway.names import NGINX_KEY, cache_key, private_key
from gateway.render import registry_config
from gateway.render.bundle import Bundle, ServiceFiles, render_local
from gateway.render.layout import system_resolver


class GatewayError(RuntimeError):
    """A process of the local gateway is missing, failed to start or died."""


def check_binaries(nginx_bin: str, registry_bin: str) -> None:
    for flag, path in (("--nginx", nginx_bin), ("--registry", registry_bin)):
        if not (os.path.exists(path) or shutil.which(path)):
            raise GatewayError(f"{flag} {path}: not found; {binaries.INSTALL_HINT}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _status(port: int, path: str) -> int | None:
    """Status of GET 127.0.0.1:port/path (http.client: no proxy from the environment for loopback)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


class LocalGateway:
    """Starts the private registry replica(s), one cache per upstream and nginx; stops them all.

    Files go below `data_dir` (config, secrets, state, logs); storage is what `settings.storage` says.
    Every child runs in its own process group so that stopping it also stops anything it spawned.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        data_dir: str | os.PathLike[str],
        registry_port: int,
        mirror_port: int,
        metrics_port: int | None = None,
        nginx_bin: str | None = None,
        registry_bin: str | None = None,
        startup_timeout: float = 30.0,
        egress_resolver: str | None = None,
    ) -> None:
        self.settings = settings
        # The egress's DNS server (`host[:port]`); by default the machine's, when an upstream is a name.
        self.egress_resolver = egress_resolver
        self.data_dir = Path(data_dir).resolve()
        self.registry_port = registry_port
        self.mirror_port = mirror_port
        self.nginx_bin = nginx_bin or binaries.default_nginx()
        self.registry_bin = registry_bin or binaries.default_registry()
        self.versions: binaries.Versions | None = None
        self.startup_timeout = startup_timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.bundle: Bundle | None = None
        self.metrics_port = metrics_port  # None: a free port, picked at start

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def mirror_url(self) -> str:
        return f"http://127.0.0.1:{self.mirror_port}"

    @property
    def metrics_url(self) -> str:
        """nginx's metrics server (templates/metrics.conf.j2); known once started."""
        assert self.metrics_port is not None, "not started"
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def access_log(self) -> Path:
        return self.data_dir / "state" / "access.log"

    def log_path(self, key: str) -> Path:
        return self.data_dir / "logs" / f"{key}.log"

    def render(self) -> Bundle:
        upstreams = self.settings.upstreams
        registries = [*self.private_keys(), *(cache_key(u.id) for u in upstreams)]
        # The doors' (and a chosen metrics) port are not bound yet: the kernel could hand them out again.
        chosen = (
            self.registry_port,
            self.mirror_port,
            *(() if self.metrics_port is None else (self.metrics_port,)),
        )
        ports = iter(free_ports(2 + len(upstreams) + 2 * len(registries), avoid=chosen))
        auth, metrics = next(ports), next(ports)
        if self.metrics_port is None:
            self.metrics_port = metrics
        return render_local(
            self.settings,
            data_dir=str(self.data_dir),
            registry_port=self.registry_port,
            mirror_port=self.mirror_port,
            auth_port=auth,
            private_ports=tuple(next(ports) for _ in self.private_keys()),
            cache_ports={u.host: next(ports) for u in upstreams},
            egress_ports={u.host: next(ports) for u in upstreams},
            metrics_port=self.metrics_port,
            debug_ports={key: next(ports) for key in registries},
            egress_resolver=self.egress_resolver or system_resolver(self.settings.upstreams),
            # Run as root, nginx would switch its workers to `nobody`, which cannot read the 0600
            # secrets written below; a local run keeps the invoking user (production: `nginx`).
            nginx_user="root" if os.geteuid() == 0 else None,
            registry_bin=self.registry_bin,
            nginx_bin=self.nginx_bin,
        )

    def _write(self, bundle: Bundle) -> None:
        for sub in ("state", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        if isinstance(self.settings.storage, FilesystemStorage):
            Path(self.settings.storage.root).mkdir(parents=True, exist_ok=True)
        for f in bundle.files():
            path = Path(f.path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if f.secret else 0o755)
            path.write_text(f.content)
            path.chmod(0o600 if f.secret else 0o644)

    def _spawn(self, key: str, service: ServiceFiles) -> None:
        log = self.log_path(key).open("ab")
        try:
            self.processes[key] = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        finally:
            log.close()

    def _wait_healthy(self, key: str, port: int, path: str, deadline: float) -> None:
        proc = self.processes[key]
        while True:
            if proc.poll() is not None:
                raise GatewayError(
                    f"{key} exited with {proc.returncode}; log tail:\n{_tail(self.log_path(key))}"
                )
            if _status(port, path) == 200:
                return
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"{key} not healthy at 127.0.0.1:{port}{path} after {self.startup_timeout:.0f}s; "
                    f"log tail:\n"
                    f"{_tail(self.log_path(key))}"
                )
            time.sleep(0.05)

    def start(self) -> LocalGateway:
        check_binaries(self.nginx_bin, self.registry_bin)
        try:
            # Also proves nginx loads the njs module (and engine) the rendered nginx.conf names.
            self.versions = binaries.versions(self.nginx_bin, self.registry_bin, self.settings.js_engine)
        except binaries.VersionError as err:
            raise GatewayError(str(err)) from err
        bundle = self.bundle = self.render()
        self._write(bundle)
        deadline = time.monotonic() + self.startup_timeout
        try:
            # nginx first: a cache asks its upstream (through nginx's egress) for its login challenge as
            # it starts, and exits if nothing answers.
            self._spawn(NGINX_KEY, bundle.services[NGINX_KEY])
            if not self.settings.trusted_proxy_cidrs:
                self._wait_healthy("nginx", self.registry_port, "/healthz", deadline)
                self._wait_healthy("nginx", self.mirror_port, "/healthz", deadline)
            else:
                # Doors that expect a PROXY header drop a bare request: accepting connections is enough.
                self._wait_listening("nginx", deadline)
            registries = {k: s for k, s in bundle.services.items() if k != NGINX_KEY}
            for key, service in registries.items():
                self._spawn(key, service)
            for key, service in registries.items():
                self._wait_healthy(key, service.port, "/v2/", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, key: str, deadline: float) -> None:
        proc = self.processes[key]
        while not (_accepts(self.registry_port) and _accepts(self.mirror_port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise GatewayError(f"{key} did not start; log tail:\n{_tail(self.log_path(key))}")
            time.sleep(0.05)

    def private_keys(self) -> list[str]:
        return [private_key(i) for i in range(self.settings.private_replicas)]

    def set_private_read_only(self, read_only: bool) -> None:
        """Restart the private registries, one at a time, in (or out of) Distribution's read-only mode
        (gateway/upkeep/maintenance.py: the garbage collection's window). One at a time, so reads always find
        a running replica (nginx retries them) when there are two or more; returns once every replica
        answers in the new mode, with an empty in-memory blob descriptor cache."""
        assert self.bundle is not None, "not started"
        deadline = time.monotonic() + self.startup_timeout
        for key in self.private_keys():
            service = self.bundle.services[key]
            config = registry_config.private_config(
                self.settings, f"127.0.0.1:{service.port}", debug_addr=service.debug_addr, read_only=read_only
            )
            Path(service.files[0].path).write_text(registry_config.dump(config))
            proc = self.processes.pop(key)
            _stop_group(proc, timeout=40.0)  # Distribution drains in-flight requests for up to 30 s
            self._spawn(key, service)
            self._wait_healthy(key, service.port, "/v2/", deadline)

    def dead(self) -> list[str]:
        """Children that have exited (the CLI watches this)."""
        return [k for k, p in self.processes.items() if p.poll() is not None]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process group (nginx: fast shutdown), then SIGKILL whatever is left."""
        for proc in self.processes.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            _stop_group(proc, timeout=max(0.1, deadline - time.monotonic()), signalled=True)
        self.processes.clear()

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _stop_group(proc: subprocess.Popen[bytes], *, timeout: float, signalled: bool = False) -> None:
    """SIGTERM (unless already sent), wait, SIGKILL if need be; no process of the group survives."""
    if not signalled and proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=5)
    # The group may hold more than the leader (nginx workers): make sure none survive.
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
