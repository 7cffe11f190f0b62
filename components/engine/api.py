"""The Docker Engine API client owncr's stdlib programs share (bootstrap, rollout, maintenance, status).

Standard library only, like the programs that import it: the deployer's `python3` runs them with
`python3 -m components.engine.<program>` from the project directory, whichever interpreter Pulumi's
command provider finds on PATH. Mutual TLS to a manager's port 2376 (why: components/engine/bootstrap.py)
or the local engine's unix socket.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# The API version this module is tested with (docker 28.5, as on the nodes, speaks 1.51). Engines whose
# minimum is higher (newer releases raise it) are spoken to at their minimum, see negotiate_version;
# the fields used here (Swarm.*, JoinTokens, node Spec/Status/ManagerStatus) exist since API 1.24.
PREFERRED_API_VERSION = (1, 51)
POLL_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 30.0
GET_ATTEMPTS = 5

Log = Callable[[str], None]


class EngineError(Exception):
    """A failure the operator has to look at; each program's main() prints it and exits 1."""


class ApiError(EngineError):
    def __init__(self, node: str, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{node}: {method} {path} answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Node:
    address: str  # where the deployer reaches the Docker API (the reserved IP)
    vpc_ip: str  # what the swarm advertises and joins over


def tls_context(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """Client context: trust only our CA, check the server's name (its IP SAN), present our cert."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain only reads files: write them to a private directory that is gone right after.
    with tempfile.TemporaryDirectory(prefix="owncr-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, content in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
        context.load_cert_chain(cert_path, key_path)
    return context


def negotiate_version(version: Mapping[str, Any]) -> str:
    """Prefer the tested API version; otherwise the nearest one the daemon accepts."""

    def parse(text: str) -> tuple[int, int]:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)

    newest = parse(str(version.get("ApiVersion", "1.41")))
    oldest = parse(str(version.get("MinAPIVersion", "1.12")))
    chosen = max(oldest, min(newest, PREFERRED_API_VERSION))
    return f"{chosen[0]}.{chosen[1]}"


def leaderless(status: int, parsed: Any) -> bool:
    """An answer that means "ask again in a moment": the swarm is electing a leader. dockerd 20.10 said
    503; docker 28.5 says 500 "rpc error: ... The swarm does not have a leader"."""
    message = parsed.get("message", "") if isinstance(parsed, dict) else str(parsed or "")
    return status == 503 or (status == 500 and "does not have a leader" in message)


class DockerApi:
    """A tiny Docker Engine API client over HTTPS with client certificates."""

    def __init__(self, node: Node, port: int, context: ssl.SSLContext) -> None:
        self.node = node
        self.port = port
        self.context = context
        self.version: str | None = None

    @property
    def name(self) -> str:
        return f"{self.node.address}:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(
            self.node.address, self.port, context=self.context, timeout=REQUEST_TIMEOUT_SECONDS
        )

    def raw(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        conn = self.connection()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        text = data.decode("utf-8", "replace")
        try:
            parsed: Any = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = text
        return response.status, parsed

    def raw_retrying(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        """GETs are retried a few times on connection errors (dockerd may restart while cloud-init
        finishes) and while the swarm has no leader (e.g. right after the old leader's droplet was
        replaced, or a node has just joined); writes are not, they are not idempotent."""
        attempts = GET_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                status, parsed = self.raw(method, path, body)
            except ssl.SSLError:
                raise
            except (OSError, http.client.HTTPException):
                if attempt == attempts:
                    raise
            else:
                if not leaderless(status, parsed) or attempt == attempts:
                    return status, parsed
            time.sleep(POLL_SECONDS)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: object | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        if self.version is None:
            status, version = self.raw("GET", "/version")
            if status != 200 or not isinstance(version, dict):
                raise ApiError(self.name, "GET", "/version", status, str(version))
            self.version = negotiate_version(version)
        status, parsed = self.raw_retrying(method, f"/v{self.version}{path}", body)
        if status not in ok:
            message = parsed.get("message", parsed) if isinstance(parsed, dict) else parsed
            raise ApiError(self.name, method, path, status, str(message).strip())
        return parsed

    def info(self) -> dict[str, Any]:
        return self.call("GET", "/info")
