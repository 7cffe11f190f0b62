"""Run a command in a container through the Docker Engine API (what `docker exec -i` does), stdlib only.

Maintenance (components/cli/maintenance.py) reaches the private store only this way: through the
same mutual-TLS Docker API the deployer uses, so it needs no port of its own, on the world or on the
overlay network. `exec_in` creates the exec, starts it over a hijacked connection (HTTP Upgrade: tcp),
writes `stdin` and reads the multiplexed stdout/stderr frames (8-byte header: stream, 0, 0, 0, size)
until the daemon closes the stream, then asks for the exit code.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

from components.engine import api as engine_api

STDOUT, STDERR = 1, 2
HEADER = struct.Struct(">BxxxL")
EXEC_TIMEOUT_SECONDS = 3600.0  # `registry garbage-collect` on a large store reads for a long time


class ExecError(RuntimeError):
    """The exec could not be started or its stream was cut."""


@dataclass(frozen=True)
class Done:
    exit_code: int
    stdout: bytes
    stderr: bytes


def demux(stream: bytes) -> tuple[bytes, bytes]:
    """stdout and stderr of a non-TTY exec stream."""
    out, err, at = bytearray(), bytearray(), 0
    while at + HEADER.size <= len(stream):
        kind, size = HEADER.unpack_from(stream, at)
        chunk = stream[at + HEADER.size : at + HEADER.size + size]
        if len(chunk) < size:
            raise ExecError(f"exec stream cut inside a frame ({len(chunk)} of {size} bytes)")
        (err if kind == STDERR else out).extend(chunk)
        at += HEADER.size + size
    if at != len(stream):
        raise ExecError(f"exec stream cut inside a frame header ({len(stream) - at} bytes left)")
    return bytes(out), bytes(err)


def _start(api: engine_api.DockerApi, exec_id: str, stdin: bytes | None, timeout: float) -> bytes:
    conn = api.connection()
    conn.timeout = timeout
    try:
        conn.connect()
        sock = conn.sock
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        request = (
            f"POST /v{api.version}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(request + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise ExecError(f"exec {exec_id}: the daemon closed the connection before answering")
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status + " " and " 200 " not in status + " ":
            raise ExecError(f"exec {exec_id}: {status} {rest[:300].decode(errors='replace')}")
        if stdin:
            sock.sendall(stdin)
        chunks = [rest]
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        conn.close()


def exec_in(
    api: engine_api.DockerApi,
    container: str,
    argv: list[str],
    stdin: bytes | None = None,
    timeout: float = EXEC_TIMEOUT_SECONDS,
) -> Done:
    """Runs `argv` in `container` (on the engine `api` talks to) and returns its exit code and output."""
    created = api.call(
        "POST",
        f"/containers/{container}/exec",
        {
            "AttachStdin": stdin is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": argv,
        },  # fmt: skip
        ok=(201,),
    )
    exec_id = str(created["Id"])
    out, err = demux(_start(api, exec_id, stdin, timeout))
    # The daemon may close the stream a moment before it records the exit code.
    deadline = time.monotonic() + 10
    while (state := api.call("GET", f"/exec/{exec_id}/json")).get("Running") and time.monotonic() < deadline:
        time.sleep(0.05)
    code = state.get("ExitCode")
    if code is None or state.get("Running"):
        raise ExecError(f"exec {exec_id} ({argv[0]}): the stream ended but the command still runs")
    return Done(int(code), out, err)
