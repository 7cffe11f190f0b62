"""Wait until Swarm has finished rolling out owncr's services (stdlib only, run from the deployer).

Why: pulumi-docker's `converge_config` returns as soon as every slot has *a* running task, old or new,
and never waits for `update_config.monitor` (kreuzwerker/terraform-provider-docker,
resource_docker_service_funcs.go: the update refresh counts running tasks per slot without looking at
their version). `pulumi up` would then go on to delete the replaced Swarm configs and secrets while Swarm
is still rolling, and a later automatic rollback would point at deleted objects. RegistryServices runs
this file (one `command.local.Command` after the services, re-run whenever a service changes) so that
`up` finishes only when the rollout has: Pulumi deletes replaced resources after every other step of
the deployment, so the old objects outlive the rollout.

Done, per service: as many running tasks *of the current spec* as replicas (the Engine API's task
filter `_up-to-date`, the one `docker service update` itself watches), and no update in progress: no
`UpdateStatus`, or "completed" (Swarm sets it only once the last task passed its `monitor` period). A
rollback or a paused update fails with Swarm's message; so does the timeout.

Inputs (environment):
  OWNCR_DOCKER_HOST       tcp://<manager>:2376 (mutual TLS, the PEMs below) or unix:///var/run/docker.sock
  OWNCR_DOCKER_CA_PEM, OWNCR_DOCKER_CERT_PEM, OWNCR_DOCKER_KEY_PEM   for tcp:// only
  OWNCR_SERVICES          JSON list of service names
  OWNCR_ROLLOUT_TIMEOUT   seconds, default 900
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from components.engine import api as engine_api

DEFAULT_TIMEOUT = 900.0
REPORT_SECONDS = 15.0


class RolloutError(Exception):
    """A rollout that failed or did not finish; main() prints it and exits 1."""


class UnixConnection(http.client.HTTPConnection):
    """HTTP to a Docker engine's unix socket."""

    def __init__(self, path: str, timeout: float = engine_api.REQUEST_TIMEOUT_SECONDS) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class SocketApi(engine_api.DockerApi):
    """The same client over the local engine's unix socket (the `local` stack)."""

    def __init__(self, path: str) -> None:
        super().__init__(engine_api.Node(address=path, vpc_ip=""), 0, None)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return f"unix://{self.node.address}"

    def connection(self) -> http.client.HTTPConnection:
        return UnixConnection(self.node.address)


def api_from(env: Mapping[str, str]) -> engine_api.DockerApi:
    host = env.get("OWNCR_DOCKER_HOST", "")
    if host.startswith("unix://"):
        return SocketApi(host.removeprefix("unix://"))
    parsed = urllib.parse.urlsplit(host)
    if parsed.scheme != "tcp" or not parsed.hostname:
        raise RolloutError(f"OWNCR_DOCKER_HOST must be tcp://HOST:PORT or unix://PATH, got {host!r}")
    missing = [
        k for k in ("OWNCR_DOCKER_CA_PEM", "OWNCR_DOCKER_CERT_PEM", "OWNCR_DOCKER_KEY_PEM") if not env.get(k)
    ]
    if missing:
        raise RolloutError(f"{', '.join(missing)} missing for {host}")
    context = engine_api.tls_context(
        env["OWNCR_DOCKER_CA_PEM"], env["OWNCR_DOCKER_CERT_PEM"], env["OWNCR_DOCKER_KEY_PEM"]
    )
    return engine_api.DockerApi(
        engine_api.Node(address=parsed.hostname, vpc_ip=""), parsed.port or 2376, context
    )


def service_state(service: Mapping[str, Any], current: int) -> tuple[str, str]:
    """("done" | "waiting" | "failed", what to say) for one service and its count of running tasks of
    the current spec."""
    status = service.get("UpdateStatus") or {}
    state, message = status.get("State", ""), status.get("Message", "")
    if state in ("", "completed"):
        # A "completed" may still be the previous update's, before Swarm started this one: the count
        # of up-to-date tasks tells.
        mode = service.get("Spec", {}).get("Mode", {})
        want = int(mode.get("Replicated", {}).get("Replicas", 1))
        done = current >= want
        return ("done" if done else "waiting", f"{current}/{want} tasks of the current spec running")
    if state in ("updating", "rollback_started"):
        return "waiting", f"{state}: {message}"
    if state == "rollback_completed":
        return "failed", f"Swarm rolled the update back: {message}"
    return "failed", f"update {state}: {message}"


def running_tasks(api: engine_api.DockerApi, name: str) -> int:
    """Running tasks of the service's current spec version."""
    filters = json.dumps({"service": [name], "desired-state": ["running"], "_up-to-date": ["true"]})
    tasks = api.call("GET", "/tasks?filters=" + urllib.parse.quote(filters))
    return sum(1 for t in tasks if t.get("Status", {}).get("State") == "running")


def wait_for_rollout(
    api: engine_api.DockerApi, names: list[str], timeout: float, log: engine_api.Log
) -> None:
    start = last_report = time.monotonic()
    pending = list(names)
    while True:
        waiting: dict[str, str] = {}
        for name in pending:
            state, detail = service_state(api.call("GET", f"/services/{name}"), running_tasks(api, name))
            if state == "failed":
                raise RolloutError(f"{name}: {detail}")
            if state == "waiting":
                waiting[name] = detail
            else:
                log(f"{name}: rolled out ({detail})")
        pending = list(waiting)
        if not pending:
            return
        now = time.monotonic()
        described = ", ".join(f"{n} ({d})" for n, d in waiting.items())
        if now - start > timeout:
            raise RolloutError(f"timed out after {timeout:.0f}s waiting for {described}")
        if now - last_report >= REPORT_SECONDS:
            log(f"waiting for {described} ({now - start:.0f}s)")
            last_report = now
        time.sleep(engine_api.POLL_SECONDS)


def main() -> int:
    def log(message: str) -> None:
        print(f"swarm-rollout: {message}", flush=True)

    try:
        names = json.loads(os.environ.get("OWNCR_SERVICES", ""))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("not a list of names")
        timeout = float(os.environ.get("OWNCR_ROLLOUT_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError as err:
        print(f"swarm-rollout: FAILED: OWNCR_SERVICES / OWNCR_ROLLOUT_TIMEOUT: {err}", file=sys.stderr)
        return 1
    try:
        wait_for_rollout(api_from(os.environ), names, timeout, log)
    except (RolloutError, engine_api.EngineError, OSError, http.client.HTTPException) as err:
        print(f"swarm-rollout: FAILED: {err}", file=sys.stderr)
        return 1
    log(f"every service rolled out: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
