"""Which nginx and Distribution binaries a local run starts, and which versions they are.

The one place this is decided. Defaults are the versions production runs, installed by
`scripts/install-tools` into `.tools/bin` (nginx 1.30 + njs 1.0 from Debian sid, Distribution v3.1.1
from its Go module); without them, Debian's packages (`nginx-light` + `libnginx-mod-http-js`,
`docker-registry`), which are older than production.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.local.ports import free_port
from gateway.render.layout import NJS_MODULE

TOOLS_BIN = Path(__file__).resolve().parents[2] / ".tools" / "bin"
TOOLS_SID = TOOLS_BIN.parent / "sid"  # the Debian sid root the nginx and docker wrappers run from
DEBIAN_NGINX = "/usr/sbin/nginx"
DEBIAN_REGISTRY = "/usr/bin/docker-registry"
INSTALL_HINT = (
    "run scripts/install-tools (the production versions) or apt-get install nginx-light docker-registry"
)


def _preferred(tool: str, fallback: str) -> str:
    installed = TOOLS_BIN / tool
    return str(installed) if os.access(installed, os.X_OK) else fallback


def default_nginx() -> str:
    return _preferred("nginx", DEBIAN_NGINX)


def default_registry() -> str:
    return _preferred("registry", DEBIAN_REGISTRY)


def default_dockerd() -> str:
    """The swarm tests' Docker daemon: sid's docker.io 28.5 (the nodes run docker-ce 28.5)."""
    return _preferred("dockerd", "dockerd")


def default_docker() -> str:
    return _preferred("docker", "docker")


class VersionError(RuntimeError):
    """A binary did not say which version it is."""


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as err:
        raise VersionError(f"{argv[0]}: {err}; {INSTALL_HINT}") from err
    return done.stdout + done.stderr


@functools.cache
def nginx_version(nginx_bin: str) -> str:
    """`1.30.6`, from `nginx -v`."""
    out = _output([nginx_bin, "-v"])
    if m := re.search(r"nginx/(\S+)", out):
        return m[1]
    raise VersionError(f"{nginx_bin} -v said: {out.strip()!r}")


@functools.cache
def distribution_version(registry_bin: str) -> str:
    """`v3.1.1` (or `v2.8.2+ds1` from Debian), from `registry --version`."""
    out = _output([registry_bin, "--version"])
    if m := re.search(r"\s(v?\d+\.\d+\.\d+)", out):
        return m[1] if m[1].startswith("v") else "v" + m[1]
    raise VersionError(f"{registry_bin} --version said: {out.strip()!r}")


# njs tells its version only to JavaScript (`njs.version`), so ask it: a throwaway nginx on a free
# loopback port loads the same module the gateway loads and answers one request with it.
_NJS_PROBE_JS = "function v(r) { return njs.version; }\nexport default { v };\n"
_NJS_PROBE_CONF = """daemon off;
load_module {module};
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{}}
http {{
    {engine}
    js_path {dir};
    js_import probe from probe.js;
    js_set $njs_version probe.v;
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 $njs_version; }}
    }}
}}
"""


@functools.cache
def njs_version(nginx_bin: str, js_engine: str | None = None, timeout: float = 10.0) -> str:
    """`1.0.2`: what `njs.version` says inside `nginx_bin` with the njs module (and engine) the
    gateway uses."""
    with tempfile.TemporaryDirectory(prefix="owncr-njs-probe-") as tmp:
        port = free_port()
        engine = f"js_engine {js_engine};" if js_engine else ""
        conf = _NJS_PROBE_CONF.format(module=NJS_MODULE, dir=tmp, engine=engine, port=port)
        Path(tmp, "probe.js").write_text(_NJS_PROBE_JS)
        Path(tmp, "nginx.conf").write_text(conf)
        # Errors before nginx.conf's error_log is read (a module that does not load) go to stderr.
        with Path(tmp, "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen(
                [nginx_bin, "-p", tmp, "-c", f"{tmp}/nginx.conf"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if answer := _get(port):
                    return answer
                time.sleep(0.05)
            logs = [Path(tmp, "stderr.log"), Path(tmp, "error.log")]
            detail = " ".join(p.read_text(errors="replace")[-500:].strip() for p in logs if p.exists())
            raise VersionError(f"{nginx_bin} with {NJS_MODULE} did not tell its njs version: {detail}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _get(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode().strip() if head.startswith(b"HTTP/1.1 200") else None


@dataclass(frozen=True)
class Versions:
    nginx: str
    njs: str
    distribution: str

    def __str__(self) -> str:
        return f"nginx={self.nginx} njs={self.njs} distribution={self.distribution}"


def versions(nginx_bin: str, registry_bin: str, js_engine: str | None = None) -> Versions:
    return Versions(
        nginx=nginx_version(nginx_bin),
        njs=njs_version(nginx_bin, js_engine),
        distribution=distribution_version(registry_bin),
    )
