"""Real processes for the client tests: containerd and dockerd started with their own roots and sockets,
the gateway run through its command line, thin wrappers around the skopeo, ctr and docker command lines,
and the upstream stand-ins (`gateway.bench.PlainRegistry`, whose access log tells what the upstream was
asked).

Every process runs in its own session (so it and all its children can be found and stopped), writes to a
log file under the test's directory, and every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.bench.images import Image, Layer, build_image
from gateway.config import FilesystemStorage, GatewaySettings, S3Storage, Upstream, User
from gateway.local import procfs
from gateway.local.binaries import TOOLS_BIN, Versions, default_docker, default_dockerd
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_port
from gateway.local.runner import LocalGateway
from tests import ROOT
from tests.gateway.production_versions import assert_production, parse_ready

if TYPE_CHECKING:
    from tests.gateway.s3_server import S3Server

CLIENT_TIMEOUT = 180.0


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it; (pid, start) identifies it even if the pid is reused later."""

    pid: int
    ppid: int
    session: int
    start: int  # clock ticks after boot
    comm: str


def processes() -> list[Proc]:
    """Every live (non-zombie) process."""
    return [
        Proc(pid, int(fields[1]), int(fields[3]), int(fields[19]), comm)
        for pid, comm, fields in procfs.stats()
        if fields[0] != "Z"
    ]


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid`: what a process started with start_new_session left."""
    return [p.pid for p in processes() if p.session == sid]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def descendants(pid: int) -> list[Proc]:
    """Children, grandchildren, ... of `pid` (whatever session they put themselves in)."""
    everything = processes()
    found: list[Proc] = []
    parents = {pid}
    while True:
        new = [p for p in everything if p.ppid in parents and p not in found]
        if not new:
            return found
        found += new
        parents = {p.pid for p in new}


def still_alive(procs: list[Proc]) -> list[Proc]:
    live = set(processes())
    return [p for p in procs if p in live]


@dataclass
class Service:
    """A child process in its own session, output to `log`."""

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=None if self.env is None else {**os.environ, **self.env},
            )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, bounded wait, then SIGKILL of the whole session (children included)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        kill_session(proc)

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float) -> None:
        """Wait for `check`; if it never holds, stop the process and fail with the end of its log."""
        try:
            wait_until(self.name, check, timeout, interval)
        except TimeoutError as e:
            self.stop()
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise TimeoutError(f"{e}; log tail:\n{tail}") from None


def kill_session(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    for pid in session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# --- clients --------------------------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = CLIENT_TIMEOUT,
    cwd: Path | None = None,
):
    """Run a client to completion (bounded); the caller asserts on returncode and output."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        check=False,
    )


def installed(tool: str) -> str:
    """A client only scripts/install-tools provides, in .tools/bin (oras, crane, oci-conformance): no
    Debian package has the pinned version, so there is no fallback to look for."""
    path = TOOLS_BIN / tool
    assert os.access(path, os.X_OK), f"{path} is missing: run scripts/install-tools"
    return str(path)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def team_settings(storage: FilesystemStorage | S3Storage, upstream_url: str) -> GatewaySettings:
    """Settings for a gateway with one namespace (`team`) alice may push to and pull from, on `storage`:
    what the tests that pass settings through the Python API have in common."""
    return GatewaySettings(
        namespaces=("team",),
        users=(User("alice", USERS["alice"], pull=("team",), push=("team",)),),
        upstreams=(Upstream("docker.io", upstream_url),),
        storage=storage,
        http_secret=secrets.token_hex(16),
    )


class Oras:
    """oras over plain HTTP with a registry config file of its own (so no ambient login is used or
    written). It runs in `workdir`: oras refuses absolute file paths, names files as given."""

    def __init__(self, workdir: Path, name: str = "oras") -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "registry-config.json"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Flags after the subcommand (oras's own order); --plain-http and --registry-config are per command.
        argv = [installed("oras"), *args, "--plain-http", "--registry-config", str(self.config)]
        return run(argv, cwd=self.dir)

    def login(self, door: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
        return self("login", door, "--username", user, "--password", password)

    def write(self, name: str, content: bytes) -> str:
        (self.dir / name).write_bytes(content)
        return name


def pushed_digest(stdout: str) -> str:
    """The `Digest: sha256:...` line oras prints after a push, attach or pull."""
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("Digest: "))


class Skopeo:
    """skopeo over plain HTTP, with an auth file of its own so no ambient credentials leak in."""

    def __init__(self, workdir: Path) -> None:
        self.env = {"REGISTRY_AUTH_FILE": str(workdir / "skopeo-auth.json")}

    def copy(
        self, src: str, dest: str, *, src_creds: str | None = None, dest_creds: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # --preserve-digests: our layers are uncompressed and skopeo would otherwise gzip them (new digests,
        # and gzip of a 1 GiB random layer costs more CPU than the whole push).
        argv = ["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--retry-times", "0"]
        argv += ["--src-tls-verify=false", "--dest-tls-verify=false"]
        argv += (
            [f"--src-creds={src_creds}"]
            if src_creds
            else ["--src-no-creds"]
            if src.startswith("docker:")
            else []
        )
        argv += [f"--dest-creds={dest_creds}"] if dest_creds else []
        return run([*argv, src, dest], env=self.env)

    def pull(self, ref: str, dest: Path, *, creds: str | None = None) -> str:
        """Copy `ref` (host/name:tag) into a fresh OCI layout at `dest`; returns the manifest digest."""
        ok(self.copy(f"docker://{ref}", f"oci:{dest}:pulled", src_creds=creds))
        return layout_digest(dest, "pulled")

    def inspect_raw(self, ref: str, *, creds: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false", "--retry-times", "0"]
        argv += [f"--creds={creds}"] if creds else ["--no-creds"]
        return run([*argv, ref], env=self.env)


def write_hosts_toml(
    hosts_dir: Path, registry_host: str, endpoint: str, *, override_path: bool = False
) -> Path:
    """containerd's hosts.toml (https://github.com/containerd/containerd/blob/v1.6.20/docs/hosts.md) sending
    pulls of `registry_host` to `endpoint` (capabilities pull + resolve: tags resolved with HEAD). `server`,
    the fallback when the mirror fails, is a closed loopback port: a failure stays a failure, fast, and
    nothing ever leaves the machine."""
    lines = [
        f'server = "http://127.0.0.1:{free_port()}"',
        f'[host."{endpoint}"]',
        '  capabilities = ["pull", "resolve"]',
    ]
    lines += ["  override_path = true"] if override_path else []
    host_dir = hosts_dir / registry_host
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "hosts.toml").write_text("\n".join(lines) + "\n")
    return hosts_dir


def mirror_answered_404(ctr_stderr: str, mirror: str) -> bool:
    """Whether containerd's log says the hosts.toml mirror answered 404 (before falling back to `server`)."""
    return f'trying next host - response was http.StatusNotFound" host="{mirror}"' in ctr_stderr


class Containerd:
    """containerd with its own root, state and socket; the CRI plugin is not needed by ctr."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "containerd"
        self.dir.mkdir(parents=True)
        self.address = str(self.dir / "containerd.sock")
        config = "\n".join(
            [
                "version = 2",
                f'root = "{self.dir / "root"}"',
                f'state = "{self.dir / "state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{self.address}"',
                "[ttrpc]",
                f'  address = "{self.address}.ttrpc"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.dir / "opt"}"',
                "",
            ]
        )
        (self.dir / "config.toml").write_text(config)
        argv = ["containerd", "--config", str(self.dir / "config.toml")]
        self.service = Service("containerd", argv, self.dir / "containerd.log")

    def start(self) -> Containerd:
        self.service.start()
        self.service.wait_ready(lambda: self.ctr("version", timeout=10).returncode == 0, 30, 0.2)
        return self

    def stop(self) -> None:
        self.service.stop()

    def ctr(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", self.address, *args], timeout=timeout)

    # ctr 1.6 reads what it pushes from containerd's content store over gRPC; that stream has been seen
    # to break off (containerd/containerd#5734) with no request reaching the gateway failing. A push is
    # idempotent (blobs by digest, then the manifest), so that one error gets one more try; every other
    # answer, a refusal included, is returned as it is. The tests then pull what was pushed and check it.
    CONTENT_STREAM_BROKE = "rpc error: code = Internal desc = unexpected EOF"

    def push(self, creds: str, ref: str) -> subprocess.CompletedProcess[str]:
        argv = ("images", "push", "--plain-http", "--user", creds, ref)
        result = self.ctr(*argv)
        if result.returncode != 0 and self.CONTENT_STREAM_BROKE in result.stderr:
            log = self.service.log.read_text(errors="replace").splitlines()[-30:]
            print(f"ctr push {ref}: {result.stderr.strip()}; containerd log:", *log, sep="\n")
            result = self.ctr(*argv)
        return result

    def image_digest(self, ref: str, namespace: str = "default") -> str | None:
        listing = ok(self.ctr("-n", namespace, "images", "ls")).stdout.splitlines()
        for line in listing[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None


class Dockerd:
    """dockerd with its own data root, exec root, socket and daemon.json, no bridge and no iptables
    (pulls and pushes need no container networking). Its managed containerd lives under the exec root."""

    def __init__(self, workdir: Path, daemon_json: Mapping[str, object]) -> None:
        # exec-root holds unix sockets: keep the path short (108-byte sun_path limit).
        self.dir = workdir / "docker"
        self.dir.mkdir(parents=True)
        self.exec_root = Path(f"/run/owncr-test-{os.getpid()}-{free_port()}")
        self.socket = self.dir / "docker.sock"
        (self.dir / "daemon.json").write_text(json.dumps(daemon_json))
        argv = [
            default_dockerd(),
            "--config-file",
            str(self.dir / "daemon.json"),
            "--data-root",
            str(self.dir / "data"),
            "--exec-root",
            str(self.exec_root),
            "-H",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.dir / "docker.pid"),
            "--iptables=false",
            "--bridge=none",
        ]
        # Anything but loopback goes to a closed port: were the mirror to fail, the daemon's fallback to
        # Docker Hub fails at once instead of leaving the machine (CI has internet).
        nowhere = f"http://127.0.0.1:{free_port()}"
        proxy = {"HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "NO_PROXY": "127.0.0.1,localhost"}
        self.service = Service("dockerd", argv, self.dir / "dockerd.log", env=proxy)
        self.env = {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.dir / "client")}

    def start(self) -> Dockerd:
        self.service.start()
        self.service.wait_ready(lambda: self.docker("version", timeout=10).returncode == 0, 60, 0.5)
        return self

    def stop(self) -> None:
        self.service.stop(timeout=30)
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def docker(self, *args: str, timeout: float = CLIENT_TIMEOUT, stdin: str | None = None):
        return subprocess.run(
            [default_docker(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            input=stdin,
            check=False,
        )


# --- the gateway under test, through its command line ---------------------------------------------------


@dataclass(frozen=True)
class Doors:
    registry: str  # host:port of the registry door
    mirror: str  # host:port of the mirror door


class GatewayProcess:
    """`python -m gateway run ...` as a child process, exactly as a user runs it."""

    def __init__(
        self,
        workdir: Path,
        *,
        upstreams: Mapping[str, str],
        namespaces: Sequence[str],
        users: Mapping[str, str],
        private_replicas: int = 1,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = workdir / "gateway"
        self.registry_port, self.mirror_port = free_port(), free_port()
        argv = [sys.executable, "-m", "gateway", "run", "--data", str(self.data)]
        argv += ["--registry-port", str(self.registry_port), "--mirror-port", str(self.mirror_port)]
        for host, url in upstreams.items():
            argv += ["--upstream", url if host == "docker.io" else f"{host}={url}"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        for name, password in users.items():
            argv += ["--user", f"{name}:{password}"]
        argv += ["--private-replicas", str(private_replicas), *extra_args]
        self.argv = argv
        self.env = None if env is None else {**os.environ, **env}
        self.log = workdir / "gateway-run.log"
        self.stdout: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.doors = Doors(f"127.0.0.1:{self.registry_port}", f"127.0.0.1:{self.mirror_port}")
        self.versions: Versions | None = None
        self.metrics_url = ""  # from the ready line

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        """Start and wait for the one `ready ...` line (stdout is drained by a thread into self.stdout)."""
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                start_new_session=True,
                env=self.env,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(self.proc, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError(f"gateway not ready after {timeout:.0f}s:\n{self.log_tail()}") from None
            if line is None:
                code = self.proc.wait(10)
                self.proc = None
                raise RuntimeError(f"gateway exited ({code}) before ready:\n{self.log_tail()}")
            if line.startswith("ready "):
                urls, self.versions = parse_ready(line)
                self.metrics_url = urls.pop("metrics")
                assert urls == {
                    "registry": f"http://{self.doors.registry}",
                    "mirror": f"http://{self.doors.mirror}",
                }
                # Every client test runs the versions production runs, or fails here.
                assert_production(self.versions)
                return self

    def _drain(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout.append(line)
            lines.put(line)
        lines.put(None)

    def maintenance(self, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`python -m gateway maintenance --data DIR [extra]` against this data plane, as a user runs it."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", "maintenance", "--data", str(self.data), *extra],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
        )  # fmt: skip

    def children(self) -> list[Proc]:
        """The runner's processes (nginx master and workers, registries), wherever their session."""
        assert self.proc is not None, "not running"
        return descendants(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> tuple[int | None, list[Proc]]:
        """SIGTERM the runner only (it must stop its children itself); returns its exit code and those of
        its processes still alive afterwards (which are then killed)."""
        if self.proc is None:
            return None, []
        proc, self.proc = self.proc, None
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        leftover = still_alive(tree)
        for p in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        kill_session(proc)
        return code, leftover

    def access_log(self) -> list[dict[str, object]]:
        """nginx's access log (JSON lines: door, route, user, status, upstream status, ...)."""
        path = self.data / "state" / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def layout_digest(layout: Path, tag: str) -> str:
    """The manifest digest a client wrote into an OCI layout (e.g. `skopeo copy docker://... oci:DIR:TAG`)."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return entry["digest"]
    raise KeyError(f"{tag} not in {layout}")


# --- what the fixtures hand to tests ---------------------------------------------------------------------


class Images:
    """Test images, each built once per session in its own OCI layout."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._built: dict[str, Image] = {}

    def get(
        self, key: str, layers: Sequence[Layer], *, tag: str = "1.0", label: str = "", arch: str = "amd64"
    ) -> Image:
        if key not in self._built:
            self._built[key] = build_image(self._root / key, layers, tag=tag, label=label or key, arch=arch)
        return self._built[key]


def _stopped_cleanly(gateway: GatewayProcess) -> None:
    if gateway.proc is None:
        return  # the test stopped it (and checked how)
    code, leftover = gateway.stop()
    assert leftover == [], f"the runner left {leftover} running after SIGTERM"
    assert code == 0, f"the runner exited {code} (None: still running 30s) on SIGTERM:\n{gateway.log_tail()}"


# Users of the CLI-run gateway: the runner gives each --user push and pull in every --namespace.
USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}


class Launcher:
    """Starts real processes under one directory and stops them all, last started first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stops: list[Callable[[], object]] = []
        self.skopeo = Skopeo(workdir)

    def on_close(self, stop: Callable[[], object]) -> None:
        """Have `stop` run with everything else the launcher started (last started, first stopped)."""
        self._stops.append(stop)

    def distribution(self, name: str) -> PlainRegistry:
        registry = PlainRegistry(self.workdir, name)
        self._stops.append(registry.stop)
        return registry.start()

    def gateway(
        self,
        upstreams: Mapping[str, str],
        namespaces: Sequence[str] = ("team", "acme"),
        users: Mapping[str, str] | None = None,
        private_replicas: int = 1,
        name: str = "gw",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        gateway = GatewayProcess(
            self.workdir / name,
            upstreams=upstreams,
            namespaces=namespaces,
            users=users if users is not None else USERS,
            private_replicas=private_replicas,
            extra_args=extra_args,
            env=env,
        )
        self._stops.append(lambda: _stopped_cleanly(gateway))
        return gateway.start()

    def s3_server(self) -> S3Server:
        """moto's S3 server with one bucket, presigned URLs checked (s3_server.py)."""
        from tests.gateway.s3_server import S3Server  # moto and boto3 load only for the tests that use them

        server = S3Server()
        self._stops.append(server.stop)
        return server.start()

    def seed(self, registry: PlainRegistry, image: Image, name: str) -> None:
        """Put `image` straight into an upstream stand-in as `name` (repository:tag)."""
        ok(self.skopeo.copy(image.ref, f"docker://{registry.host}/{name}"))

    def local_gateway(
        self, settings: GatewaySettings, name: str = "gw-api", *, nginx_bin: str | None = None
    ) -> LocalGateway:
        """The gateway through its Python API (settings the command line cannot express)."""
        gateway = LocalGateway(
            settings,
            data_dir=self.workdir / name,
            registry_port=free_port(),
            mirror_port=free_port(),
            nginx_bin=nginx_bin,
        )
        self._stops.append(gateway.stop)
        return gateway.start()

    def containerd(self) -> Containerd:
        containerd = Containerd(self.workdir)
        self._stops.append(containerd.stop)
        return containerd.start()

    def dockerd(self, daemon_json: Mapping[str, object]) -> Dockerd:
        dockerd = Dockerd(self.workdir, daemon_json)
        self._stops.append(dockerd.stop)
        return dockerd.start()

    def close(self) -> None:
        """Stop everything; a failure to stop one thing does not leave the others running."""
        errors: list[BaseException] = []
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the rest is stopped
                errors.append(e)
        if errors:
            raise errors[0]
