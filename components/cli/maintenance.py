"""Maintenance of a deployed stack: gateway/upkeep/maintenance.py's `run` (retention, then garbage collection
in a read-only window, its docstring has the safety argument; then the caches' eviction) against the
stack's Swarm, reached only through the Docker Engine API with the deployer's mutual-TLS client
certificate: no port of its own.
`.github/workflows/maintenance.yml` runs it weekly and on demand (`python -m components.cli.maintenance
--stack S [--dry-run]`); tests run it against a real swarm (tests/services/test_swarm_maintenance.py).

How `SwarmStore` gives `run` what the local data plane gives it:
- **The read-only window** is an update of the private service (every replica at once, start-first)
  that adds `registry_config.READ_ONLY_ENV` (Distribution reads it at start, as the local runner's
  read-only config); it has begun once every *running* task of the service runs that spec (a replaced
  task that still drains, writable, counts as running) and ends with the update that removes it, which
  restarts every replica with an empty descriptor cache. Each switch then puts the deployed update
  policy back, so the spec is again exactly what Pulumi deployed.
- **The maintenance registry**, writable while every client-facing replica is read-only, is a
  one-replica service cloned from the private service's task template (image, config, secrets,
  storage mounts) with no network: no overlay alias, so neither nginx nor anything else on the
  overlay network can reach it, and no published port. It runs on the node whose API this talks to;
  each API request goes through `docker exec` of busybox `nc` in its container (as in the official
  image), garbage collection is `registry garbage-collect` in the same container, on the same config.
- **Push times, manifest revisions and sizes** are read from the storage the registry uses: with
  filesystem storage (NFS, the local stack's volume) by busybox `find`/`stat` in that container, with
  S3 storage (R2) by listing the bucket with the keys of the private registry's own config, read from
  that container; they live in memory only.
- **The caches' eviction** (gateway/upkeep/eviction.py) reads and deletes the same way: that container
  mounts the whole storage (the private root, every cache's root, the gateway's last-pull records),
  and the bucket is one for all of them, so the private registry's keys reach the caches too.

Inputs: with `--stack S`, the secret stack output `maintenance` (read with the Pulumi CLI); else the
environment, as components/engine/rollout.py:
  OWNCR_DOCKER_HOST, OWNCR_DOCKER_CA_PEM, OWNCR_DOCKER_CERT_PEM, OWNCR_DOCKER_KEY_PEM
  OWNCR_MAINTENANCE  JSON {"private_service": NAME, "retention": [{namespace, keep, days, protect}],
                     "cache_policy": {"ttl_seconds": S, "budget_bytes": B or null}} (absent: 168h, none)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from components.engine import api as engine_api
from components.engine import bootstrap, container_exec, rollout
from components.plan import maintenance_access
from components.plan.swarm_specs import SERVICE_NAME_MAX
from gateway.render.registry_config import READ_ONLY_ENV
from gateway.upkeep import maintenance as m
from gateway.upkeep.eviction import CachePolicy
from gateway.upkeep.registry_api import RegistryApi, parse_response, raw_request
from gateway.upkeep.retention import RetentionRule
from gateway.upkeep.store_readers import reader_for

HELPER_LABEL = "owncr.maintenance-of"
ROLLED_BACK = ("rollback_started", "rollback_paused", "rollback_completed", "paused")  # UpdateStatus.State
HELPER_SUFFIX = "-maintenance"
DEFAULT_TIMEOUT = 900.0
Log = Callable[[str], None]


def helper_name(private_service: str) -> str:
    return private_service[: SERVICE_NAME_MAX - len(HELPER_SUFFIX)] + HELPER_SUFFIX


def filters(**values: list[str]) -> str:
    return "filters=" + urllib.parse.quote(json.dumps(values))


def helper_spec(private: Mapping[str, Any], node_id: str, *, read_only: bool) -> dict[str, Any]:
    """The maintenance registry's service spec: the private service's task, alone and unreachable."""
    name = private["Spec"]["Name"]
    task = json.loads(json.dumps(private["Spec"]["TaskTemplate"]))
    container = task["ContainerSpec"]
    command = list(container.get("Command") or []) + list(container.get("Args") or [])
    if "serve" not in command:
        raise m.MaintenanceError(f"{name}: its command {command} does not run `registry serve CONFIG`")
    # Without the drain wrapper: nothing routes to it, so it may stop at once.
    at = command.index("serve")
    container["Command"], container["Args"] = command[at - 1 : at + 2], []
    _set_mode(container, read_only)
    # No overlay network, hence no alias nginx or any other service resolves: Swarm gives the task the
    # node's default bridge (egress to R2 through NAT, nothing published).
    task.pop("Networks", None)
    task["Placement"] = {"Constraints": [f"node.id=={node_id}"]}
    task["RestartPolicy"] = {"Condition": "none"}
    return {
        "Name": helper_name(name),
        "Labels": {HELPER_LABEL: name},
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": 1}},
    }


def _set_mode(container: dict[str, Any], read_only: bool) -> None:
    """READ_ONLY_ENV added to (True) or removed from (False) a ContainerSpec's Env, nothing else."""
    env = [e for e in container.get("Env") or [] if e.split("=", 1)[0] not in READ_ONLY_ENV]
    container["Env"] = env + ([f"{k}={v}" for k, v in READ_ONLY_ENV.items()] if read_only else [])


def with_read_only(spec: Mapping[str, Any], read_only: bool) -> dict[str, Any]:
    """The private service's spec in that mode."""
    copy: dict[str, Any] = json.loads(json.dumps(spec))
    _set_mode(copy["TaskTemplate"]["ContainerSpec"], read_only)
    return copy


def is_read_only(spec: Mapping[str, Any]) -> bool:
    env = spec["TaskTemplate"]["ContainerSpec"].get("Env") or []
    return any(e.split("=", 1)[0] in READ_ONLY_ENV for e in env)


class SwarmStore(m.StorageFacts):
    """gateway.upkeep.maintenance.Store on a deployed stack (see the module docstring). Use as a context
    manager: entering starts the maintenance registry, leaving removes it."""

    def __init__(
        self,
        docker: engine_api.DockerApi,
        private_service: str,
        rules: tuple[RetentionRule, ...],
        *,
        dry_run: bool,
        log: Log,
        timeout: float = DEFAULT_TIMEOUT,
        cache_policy: CachePolicy | None = None,
    ) -> None:
        self.docker = docker
        self.private_service = private_service
        self.rules = rules
        self.cache_policy = cache_policy or CachePolicy()
        self.dry_run = dry_run
        self.log = log
        self.timeout = timeout
        self.container = ""
        self.helper_id = ""
        self.config: dict[str, Any] = {}
        self.registry_bin = self.config_path = ""
        self.api = RegistryApi("http://127.0.0.1:5000", transport=self._through_nc)

    # --- the maintenance registry --------------------------------------------------------------------

    def __enter__(self) -> SwarmStore:
        private = self.docker.call("GET", f"/services/{self.private_service}")
        self._remove_helpers()
        if is_read_only(private["Spec"]) and not self.dry_run:
            # A run that was cut off left the window open: this run's window closes it.
            self.log(f"{self.private_service} is still read-only from an earlier run; this run ends that")
        node_id = bootstrap.node_id(self.docker.info())
        spec = helper_spec(private, node_id, read_only=self.dry_run)
        self.helper_id = self.docker.call("POST", "/services/create", spec, ok=(201,))["ID"]
        self.log(f"maintenance registry {spec['Name']} starting (no network, no port)")
        try:
            self.container = self._wait_for_container()
            self.registry_bin, _, self.config_path = spec["TaskTemplate"]["ContainerSpec"]["Command"]
            self.config = yaml.safe_load(self.exec(["cat", self.config_path]).decode())
            port = str(self.config["http"]["addr"]).rsplit(":", 1)[-1]
            self.api = RegistryApi(f"http://127.0.0.1:{port}", transport=self._through_nc)
            self.reader = reader_for(self.config["storage"], self.exec)
            deadline = time.monotonic() + self.timeout
            while not self.api.answers():
                if time.monotonic() > deadline:
                    raise m.MaintenanceError(
                        f"the maintenance registry did not answer in {self.timeout:.0f}s"
                    )
                time.sleep(engine_api.POLL_SECONDS)
        except BaseException:
            self._remove_helpers()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove_helpers()

    def _remove_helpers(self) -> None:
        helpers = self.docker.call(
            "GET", "/services?" + filters(label=[f"{HELPER_LABEL}={self.private_service}"])
        )
        for helper in helpers:
            self.docker.call("DELETE", f"/services/{helper['ID']}", ok=(200, 404))

    def _wait_for_container(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            tasks = self.docker.call("GET", "/tasks?" + filters(service=[self.helper_id]))
            for task in tasks:
                state = task.get("Status", {})
                if state.get("State") == "running":
                    return str(state["ContainerStatus"]["ContainerID"])
                if state.get("State") in ("failed", "rejected", "complete", "shutdown"):
                    raise m.MaintenanceError(
                        f"the maintenance registry's task {state.get('State')}: {state.get('Err', '')}"
                    )
            time.sleep(engine_api.POLL_SECONDS)
        raise m.MaintenanceError(f"the maintenance registry did not start in {self.timeout:.0f}s")

    def exec(self, argv: list[str], stdin: bytes | None = None) -> bytes:
        done = container_exec.exec_in(self.docker, self.container, argv, stdin)
        if done.exit_code != 0:
            raise m.MaintenanceError(
                f"{' '.join(argv)} in the maintenance registry failed ({done.exit_code}): "
                f"{done.stderr[-500:].decode(errors='replace')}"
            )
        return done.stdout

    def _through_nc(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        request = raw_request(method, path, headers)
        done = container_exec.exec_in(
            self.docker, self.container, ["nc", "127.0.0.1", str(self.api.port)], request
        )
        if done.exit_code != 0 or not done.stdout:
            # Like a refused connection: the registry is not listening (yet), or hung up.
            raise OSError(f"nc to the maintenance registry: exit {done.exit_code} {done.stderr[-300:]!r}")
        return parse_response(done.stdout, method)

    @contextlib.contextmanager
    def writer(self) -> Iterator[RegistryApi]:
        yield self.api

    # --- the window and the collection ---------------------------------------------------------------

    def set_read_only(self, read_only: bool) -> None:
        mode = "read-only" if read_only else "writable"
        service = self.docker.call("GET", f"/services/{self.private_service}")
        deployed_update = service["Spec"].get("UpdateConfig")
        if is_read_only(service["Spec"]) != read_only:
            # Every replica at once (start-first, so the old ones serve until the new ones are
            # healthy): the window lasts one replica's restart, not one per replica plus the delays.
            body = with_read_only(service["Spec"], read_only)
            body["UpdateConfig"] = {**(deployed_update or {}), "Parallelism": 0, "Delay": 0}
            self._update(service, body)
        self.log(f"{self.private_service}: rolling to {mode}")
        started = last_report = time.monotonic()
        while detail := self._switching(read_only):
            now = time.monotonic()
            if now - started > self.timeout:
                raise m.MaintenanceError(
                    f"{self.private_service} not {mode} after {self.timeout:.0f}s: {detail}"
                )
            if now - last_report >= rollout.REPORT_SECONDS:
                self.log(f"{self.private_service}: {detail} ({now - started:.0f}s)")
                last_report = now
            time.sleep(engine_api.POLL_SECONDS)
        # The deployed update policy back (no task restarts: the task template is unchanged), so the
        # spec is again exactly what Pulumi deployed, up to the mode.
        service = self.docker.call("GET", f"/services/{self.private_service}")
        if service["Spec"].get("UpdateConfig") != deployed_update:
            restored = {k: v for k, v in service["Spec"].items() if k != "UpdateConfig"}
            self._update(service, restored | ({"UpdateConfig": deployed_update} if deployed_update else {}))
        self.log(f"{self.private_service}: every replica {mode} ({time.monotonic() - started:.1f}s)")

    def _update(self, service: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        version = service["Version"]["Index"]
        self.docker.call("POST", f"/services/{self.private_service}/update?version={version}", spec)

    def _switching(self, read_only: bool) -> str:
        """What the switch still waits for; "" once every running task runs the spec in that mode.
        Not Swarm's "completed", which comes only after the update's 30 s `monitor`: the mode is
        what matters, and a replaced task that still drains (serving, in the old mode) counts as
        running. An update Swarm rolled back restores the old mode: that fails the run."""
        service = self.docker.call("GET", f"/services/{self.private_service}")
        status = service.get("UpdateStatus") or {}
        state, message = status.get("State", ""), status.get("Message", "")
        held = is_read_only(service["Spec"]) == read_only and state not in ROLLED_BACK
        if not held:
            raise m.MaintenanceError(
                f"{self.private_service}: the switch did not hold (update {state}: {message})"
            )
        want = int(service["Spec"]["Mode"]["Replicated"]["Replicas"])
        tasks = self.docker.call("GET", "/tasks?" + filters(service=[self.private_service]))
        current = self.docker.call(
            "GET", "/tasks?" + filters(service=[self.private_service], **{"_up-to-date": ["true"]})
        )
        fresh = {t["ID"] for t in current if t["Status"]["State"] == "running"}
        stale = [t["ID"][:12] for t in tasks if t["Status"]["State"] == "running" and t["ID"] not in fresh]
        if stale or len(fresh) < want:
            return f"{len(fresh)}/{want} replicas switched, {len(stale)} of the old spec still running"
        return ""

    def collect_garbage(self, dry_run: bool) -> str:
        if not dry_run and (detail := self._switching(True)):
            raise m.MaintenanceError(f"{self.private_service}: the read-only window does not hold: {detail}")

        def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
            done = container_exec.exec_in(self.docker, self.container, argv)
            out, err = (b.decode(errors="replace") for b in (done.stdout, done.stderr))
            return subprocess.CompletedProcess(argv, done.exit_code, out, err)

        self.log("garbage-collect running in the maintenance registry (on R2: one request per object)")
        started = time.monotonic()
        output = m.garbage_collect(self.registry_bin, self.config_path, dry_run=dry_run, run=run)
        self.log(f"garbage-collect done in {time.monotonic() - started:.1f}s")
        return output


# --- entry point ---------------------------------------------------------------------------------------


def stack_output(stack: str, run: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """The stack output `maintenance`, read with the Pulumi CLI (kept in memory: it holds a key)."""
    argv = ["pulumi", "stack", "output", "--stack", stack, "--json", "--show-secrets", "maintenance"]
    try:
        done = run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise m.MaintenanceError(
            "the Pulumi CLI (pulumi) is not installed: maintenance reads the stack output"
        ) from None
    if done.returncode != 0:
        raise m.MaintenanceError(
            f"pulumi stack output --stack {stack} maintenance failed: {done.stderr.strip()[-500:]} "
            "(a stack deployed before maintenance existed has no such output: run `pulumi up` once)"
        )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.cli.maintenance",
        description="Retention, then garbage collection in a read-only window, then the caches' eviction, "
        "on a deployed stack.",
    )
    parser.add_argument("--stack", help="read the access from this stack's output (else the environment)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    args = parser.parse_args(argv)

    def work(env: Mapping[str, str], log: Log) -> None:
        service, rules, policy = maintenance_access.settings_from(env)
        docker = rollout.api_from(env)
        with SwarmStore(docker, service, rules, dry_run=args.dry_run, log=log, cache_policy=policy) as store:
            m.run(store, dry_run=args.dry_run)

    return run_on_stack("maintenance", args.stack, work, log_to=sys.stdout)


def run_on_stack(
    name: str, stack: str | None, work: Callable[[Mapping[str, str], Log], None], *, log_to: Any
) -> int:
    """A command on a deployed stack: its access from the stack output (`stack`) or the environment;
    `work` logs through the given function; a failure is one line on stderr and exit code 1."""

    def log(message: str) -> None:
        print(f"{name}: {message}", file=log_to, flush=True)

    try:
        work(maintenance_access.environment(stack_output(stack)) if stack else dict(os.environ), log)
    except (m.MaintenanceError, rollout.RolloutError, engine_api.EngineError, OSError) as err:
        print(f"{name}: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
