"""Form or repair owncr's Docker Swarm over the Docker Engine API with mutual TLS (stdlib only).

SwarmCluster runs this file from the deployer (a laptop or a CI runner) with one
`pulumi_command.local.Command`, as `python3 components/engine/bootstrap.py`; the real-dockerd test runs
exactly the same file. It imports nothing outside the standard library so that any `python3` >= 3.10 runs
it, whichever interpreter Pulumi's command provider finds on PATH.

Why the Docker API over mutual TLS (and not SSH, and not in-cluster):
- the deployer's IP is unknown in advance (CI runners), so port 2376 may have to be open to the world;
  mutual TLS makes that safe: dockerd accepts only clients with a certificate from our CA, and we accept
  only servers with a certificate from our CA for exactly the reserved IP we dial (no trust on first use,
  unlike a fresh droplet's SSH host key);
- each manager's reserved IP exists before its droplet, so its server certificate can name that IP and
  survives droplet replacement;
- the join token never touches a shell, a log or Pulumi state: it goes from one HTTPS response into the
  next request's body.

Inputs (environment, so no secret appears in the command line or the Pulumi `create` text):
  OWNCR_SWARM_NODES       JSON list, one object per manager in index order:
                          {"address": "<reserved IP the API is reached on>", "vpc_ip": "<VPC address>"}
  OWNCR_DOCKER_CA_PEM     our CA certificate (PEM)
  OWNCR_DOCKER_CERT_PEM   the deployer's client certificate (PEM)
  OWNCR_DOCKER_KEY_PEM    the deployer's client key (PEM)
  OWNCR_DOCKER_PORT       Docker API port, default 2376
  OWNCR_SWARM_API_TIMEOUT seconds to wait for every node's API (cloud-init installs Docker), default 900
  OWNCR_SWARM_SETTLE_TIMEOUT seconds to wait for joins and dead members to settle, default 120

What it does, idempotently (a second run changes nothing and says so):
1. waits (bounded, printing progress) until every node's Docker API answers;
2. finds the nodes whose swarm is already active; that may not be node 0, since node 0 may be the one
   that was just replaced; if none is, `POST /swarm/init` on node 0 advertising its VPC address;
3. takes the manager join token from an active manager and `POST /swarm/join`s every node not in the
   swarm, pointing it at the active managers' VPC addresses on 2377;
4. removes dead members: swarm nodes that are not one of the current nodes (their ID is no current
   node's NodeID) and are down or unreachable are demoted, then `DELETE /nodes/{id}?force=true`.
   A replaced droplet may come back with the same VPC IP, so members are matched by node ID, not by
   address. Current nodes and healthy unknown members are never touched;
5. waits until every current node is a reachable manager, and exits non-zero with a clear message
   if anything fails.

Docker Engine API reference: https://docs.docker.com/reference/api/engine/version/v1.41/
(SwarmInit, SwarmJoin, SwarmInspect, NodeList, NodeUpdate, NodeDelete, SystemInfo).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.engine.api import POLL_SECONDS, ApiError, DockerApi, EngineError, Log, Node, tls_context

if sys.version_info < (3, 10):  # noqa: UP036 (the deployer's python3 may be older than the project's)
    sys.exit(f"swarm-bootstrap: needs python3 >= 3.10 on the deployer, found {sys.version.split()[0]}")

SWARM_PORT = 2377
# TLS alerts (OpenSSL's reason names) with which a server refuses our client certificate. Which one
# depends on the engine's Go version: dockerd 20.10 sent bad_certificate, docker 28.5 sends unknown_ca.
CLIENT_CERTIFICATE_ALERTS = (
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_UNSUPPORTED_CERTIFICATE",
)


class BootstrapError(EngineError):
    """A bootstrap failure the operator has to look at; main() prints it and exits 1."""


class WaitTimeout(BootstrapError):
    """A bounded wait ran out."""


@dataclass(frozen=True)
class BootstrapConfig:
    nodes: tuple[Node, ...]
    ca_pem: str
    cert_pem: str
    key_pem: str
    port: int = 2376
    api_timeout: float = 900.0
    settle_timeout: float = 120.0

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> BootstrapConfig:
        def required(key: str) -> str:
            value = env.get(key, "")
            if not value.strip():
                raise BootstrapError(f"environment variable {key} is missing or empty")
            return value

        try:
            raw_nodes = json.loads(required("OWNCR_SWARM_NODES"))
            nodes = tuple(Node(address=str(n["address"]), vpc_ip=str(n["vpc_ip"])) for n in raw_nodes)
        except (ValueError, TypeError, KeyError) as err:
            raise BootstrapError(
                'OWNCR_SWARM_NODES must be a JSON list of {"address": ..., "vpc_ip": ...}: ' + str(err)
            ) from err
        if not nodes:
            raise BootstrapError("OWNCR_SWARM_NODES lists no node")
        try:
            return cls(
                nodes=nodes,
                ca_pem=required("OWNCR_DOCKER_CA_PEM"),
                cert_pem=required("OWNCR_DOCKER_CERT_PEM"),
                key_pem=required("OWNCR_DOCKER_KEY_PEM"),
                port=int(env.get("OWNCR_DOCKER_PORT", "2376")),
                api_timeout=float(env.get("OWNCR_SWARM_API_TIMEOUT", "900")),
                settle_timeout=float(env.get("OWNCR_SWARM_SETTLE_TIMEOUT", "120")),
            )
        except ValueError as err:
            raise BootstrapError(f"bad numeric setting: {err}") from err


def environment(
    *, nodes: Sequence[tuple[str, str]], ca_cert_pem: str, client_cert_pem: str, client_key_pem: str
) -> dict[str, str]:
    """The environment this module reads, from (address, vpc_ip) pairs and the PEMs (all secret)."""
    return {
        "OWNCR_SWARM_NODES": json.dumps([{"address": a, "vpc_ip": v} for a, v in nodes]),
        "OWNCR_DOCKER_CA_PEM": ca_cert_pem,
        "OWNCR_DOCKER_CERT_PEM": client_cert_pem,
        "OWNCR_DOCKER_KEY_PEM": client_key_pem,
    }


def swarm_state(info: Mapping[str, Any]) -> str:
    return str(info.get("Swarm", {}).get("LocalNodeState", ""))


def is_manager(info: Mapping[str, Any]) -> bool:
    return bool(info.get("Swarm", {}).get("ControlAvailable"))


def cluster_id(info: Mapping[str, Any]) -> str:
    return str((info.get("Swarm", {}).get("Cluster") or {}).get("ID", ""))


def node_id(info: Mapping[str, Any]) -> str:
    return str(info.get("Swarm", {}).get("NodeID", ""))


def is_dead(member: Mapping[str, Any]) -> bool:
    """A swarm member that cannot be serving: not ready, or a manager the others cannot reach."""
    state = (member.get("Status") or {}).get("State")
    reachability = (member.get("ManagerStatus") or {}).get("Reachability")
    return state != "ready" or reachability == "unreachable"


def wait_until(what: str, check: Callable[[], bool], timeout: float, log: Log) -> None:
    """Poll `check` until true; bounded by `timeout`, progress printed about every 15 seconds."""
    start = time.monotonic()
    last_report = start
    while not check():
        now = time.monotonic()
        if now - start > timeout:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        if now - last_report >= 15:
            log(f"still waiting for {what} ({now - start:.0f}s)")
            last_report = now
        time.sleep(POLL_SECONDS)


def wait_for_api(api: DockerApi, timeout: float, log: Log) -> None:
    last_error: list[str] = [""]

    def answers() -> bool:
        try:
            status, _ = api.raw("GET", "/_ping")
        except ssl.SSLCertVerificationError as err:
            # Never worth retrying: the server is not who our CA says it is.
            raise BootstrapError(f"{api.name}: server certificate rejected: {err}") from err
        except ssl.SSLError as err:
            if any(alert in (err.reason or "") for alert in CLIENT_CERTIFICATE_ALERTS):
                # The server's TLS alert says it does not accept our certificate: retrying cannot help.
                raise BootstrapError(f"{api.name}: client certificate rejected by the server: {err}") from err
            last_error[0] = str(err)
            return False
        except (OSError, http.client.HTTPException) as err:
            last_error[0] = str(err)
            return False
        return status == 200

    try:
        wait_until(f"the Docker API at {api.name}", answers, timeout, log)
    except WaitTimeout as err:
        raise BootstrapError(f"{err} (last error: {last_error[0] or 'none'})") from err
    log(f"{api.name}: Docker API up")


def join_address(node: Node) -> str:
    return f"{node.vpc_ip}:{SWARM_PORT}"


def form_swarm(apis: list[DockerApi], settle_timeout: float, log: Log) -> list[str]:
    """Steps 2 and 3: init if no node is in a swarm, then join every node that is not. Returns actions."""
    actions: list[str] = []
    infos = [api.info() for api in apis]
    for api, info in zip(apis, infos, strict=True):
        if swarm_state(info) == "pending":
            wait_until(
                f"{api.name} to leave the pending swarm state",
                lambda a=api: swarm_state(a.info()) != "pending",
                settle_timeout,
                log,
            )
    infos = [api.info() for api in apis]
    for api, info in zip(apis, infos, strict=True):
        state = swarm_state(info)
        if state not in ("inactive", "active"):
            raise BootstrapError(
                f"{api.name}: swarm state is {state!r}; fix this node by hand (locked/error)"
            )
        if state == "active" and not is_manager(info):
            raise BootstrapError(f"{api.name}: is a swarm worker, expected a manager")
    active = [i for i, info in enumerate(infos) if swarm_state(info) == "active"]
    clusters = {cluster_id(infos[i]) for i in active}
    if len(clusters) > 1:
        members = ", ".join(f"{apis[i].name}={cluster_id(infos[i])}" for i in active)
        raise BootstrapError(f"nodes belong to different swarms ({members}); refusing to merge them")
    if not active:
        first = apis[0]
        first.call(
            "POST",
            "/swarm/init",
            {"ListenAddr": f"0.0.0.0:{SWARM_PORT}", "AdvertiseAddr": join_address(first.node)},
        )
        actions.append(f"initialised a new swarm on {first.name}")
        log(actions[-1])
        active = [0]
    # The token is read here and only ever sent in the join body below; never logged.
    token = apis[active[0]].call("GET", "/swarm")["JoinTokens"]["Manager"]
    remotes = [join_address(apis[i].node) for i in active]
    for index, api in enumerate(apis):
        if index in active:
            continue
        body = {
            "ListenAddr": f"0.0.0.0:{SWARM_PORT}",
            "AdvertiseAddr": join_address(api.node),
            "RemoteAddrs": remotes,
            "JoinToken": token,
        }
        api.call("POST", "/swarm/join", body)
        wait_until(
            f"{api.name} to become an active manager",
            lambda a=api: is_manager(a.info()) and swarm_state(a.info()) == "active",
            settle_timeout,
            log,
        )
        actions.append(f"joined {api.name} as a manager via {', '.join(remotes)}")
        log(actions[-1])
    return actions


def member_label(member: Mapping[str, Any]) -> str:
    addr = (member.get("Status") or {}).get("Addr", "?")
    return f"{member.get('ID', '?')} ({addr})"


def demote(manager: DockerApi, member_id: str, timeout: float, log: Log) -> None:
    """Demote a manager; retried because the node's version moves while the swarm updates it."""

    def attempt() -> bool:
        member = manager.call("GET", f"/nodes/{member_id}")
        spec = dict(member["Spec"])
        if spec.get("Role") != "manager":
            return True
        spec["Role"] = "worker"
        try:
            manager.call("POST", f"/nodes/{member_id}/update?version={member['Version']['Index']}", spec)
        except ApiError as err:
            log(f"demoting {member_id} not accepted yet: {err}")
            return False
        return True

    wait_until(f"the demotion of {member_id}", attempt, timeout, log)


def remove_member(manager: DockerApi, member_id: str, timeout: float, log: Log) -> None:
    """Force-remove a demoted member; retried until the swarm has finished the demotion."""

    def attempt() -> bool:
        try:
            manager.call("DELETE", f"/nodes/{member_id}?force=true", ok=(200, 404))
        except ApiError as err:
            log(f"removing {member_id} not accepted yet: {err}")
            return False
        return True

    wait_until(f"the removal of {member_id}", attempt, timeout, log)


def remove_dead(apis: list[DockerApi], settle_timeout: float, log: Log) -> list[str]:
    """Step 4: remove members that are not one of the current nodes and are dead; returns actions."""
    actions: list[str] = []
    current_ids = {node_id(api.info()) for api in apis}
    manager = apis[0]
    members = manager.call("GET", "/nodes")
    for member in members:
        member_id = str(member["ID"])
        if member_id in current_ids:
            continue
        role = (member.get("Spec") or {}).get("Role")
        if not is_dead(member) and role == "manager":
            # A predecessor that is still shutting down: give the swarm time to notice it is gone.
            try:
                wait_until(
                    f"former manager {member_label(member)} to go down",
                    lambda m=member_id: is_dead(manager.call("GET", f"/nodes/{m}")),
                    settle_timeout,
                    log,
                )
            except WaitTimeout:
                log(f"leaving {member_label(member)} alone: not a current node, but still healthy")
                continue
        elif not is_dead(member):
            log(f"leaving worker {member_label(member)} alone: not a current node, but healthy")
            continue
        if role == "manager":
            demote(manager, member_id, settle_timeout, log)
        remove_member(manager, member_id, settle_timeout, log)
        actions.append(f"removed dead member {member_label(member)}")
        log(actions[-1])
    return actions


def wait_for_quorum(apis: list[DockerApi], settle_timeout: float, log: Log) -> None:
    """Step 5: every current node is a ready, reachable manager."""
    current_ids = {node_id(api.info()) for api in apis}

    def all_reachable() -> bool:
        members = {str(m["ID"]): m for m in apis[0].call("GET", "/nodes")}
        return all(
            (members.get(i, {}).get("ManagerStatus") or {}).get("Reachability") == "reachable"
            and not is_dead(members[i])
            for i in current_ids
        )

    wait_until("every node to be a ready, reachable manager", all_reachable, settle_timeout, log)


def run(config: BootstrapConfig, log: Log) -> list[str]:
    """Form or repair the swarm; returns what was changed (empty when nothing was)."""
    context = tls_context(config.ca_pem, config.cert_pem, config.key_pem)
    apis = [DockerApi(node, config.port, context) for node in config.nodes]
    deadline = time.monotonic() + config.api_timeout
    for api in apis:
        wait_for_api(api, max(0.0, deadline - time.monotonic()), log)
    actions = form_swarm(apis, config.settle_timeout, log)
    actions += remove_dead(apis, config.settle_timeout, log)
    wait_for_quorum(apis, config.settle_timeout, log)
    info = apis[0].info()
    log(
        f"swarm {cluster_id(info)}: {len(apis)} manager(s) ready and reachable; "
        + (f"{len(actions)} change(s)" if actions else "no changes")
    )
    return actions


def main() -> int:
    def log(message: str) -> None:
        print(f"swarm-bootstrap: {message}", flush=True)

    try:
        run(BootstrapConfig.from_environ(os.environ), log)
    except EngineError as err:
        print(f"swarm-bootstrap: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except (KeyError, TypeError, ValueError, OSError, http.client.HTTPException) as err:
        print(f"swarm-bootstrap: FAILED: unexpected {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
