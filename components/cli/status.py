"""What a deployed stack's mirror does, as `python -m gateway status` prints it for a local run: requests
per door, blobs and manifests asked vs fetched from each upstream, upstream errors, and storage used,
summed over every node's gateway.

Like maintenance (components/cli/maintenance.py), it reaches the stack only through the deployer's Docker
API: in a running gateway container on the node that API belongs to, `curl` reads every gateway task's
metrics server over the overlay network (each task's address there, from the task list); storage is read by
a read-only maintenance registry, started for the count and removed after.

Inputs: `--stack S` (the stack output `maintenance`, read with the Pulumi CLI), else the environment
OWNCR_DOCKER_HOST, OWNCR_DOCKER_{CA,CERT,KEY}_PEM and OWNCR_MAINTENANCE, as for maintenance.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from components.cli import maintenance
from components.engine import api as engine_api
from components.engine import container_exec, rollout
from components.plan import maintenance_access
from gateway.names import NGINX_KEY, PRIVATE_KEY
from gateway.render.layout import METRICS_PORT
from gateway.upkeep import maintenance as m
from gateway.upkeep import status

CURL_SECONDS = 10


def gateway_service(private_service: str) -> str:
    """The stack's gateway service (service_name in components/plan/swarm_specs.py: owncr-<stack>-<key>)."""
    return private_service.removesuffix(PRIVATE_KEY) + NGINX_KEY


def task_addresses(docker: engine_api.DockerApi, service: str) -> list[str]:
    """The overlay address of each running task of `service`."""
    query = maintenance.filters(service=[service], **{"desired-state": ["running"]})
    tasks = docker.call("GET", "/tasks?" + query)
    addresses = []
    for task in tasks:
        if task.get("Status", {}).get("State") != "running":
            continue
        for attachment in task.get("NetworksAttachments", []):
            if attachment.get("Network", {}).get("Spec", {}).get("Name") == "ingress":
                continue
            addresses += [a.split("/", 1)[0] for a in attachment.get("Addresses", [])]
    return sorted(addresses)


def local_container(docker: engine_api.DockerApi, service: str) -> str:
    """A running container of `service` on the node the Docker API belongs to."""
    query = maintenance.filters(label=[f"com.docker.swarm.service.name={service}"])
    found = docker.call("GET", "/containers/json?" + query)
    if not found:
        raise m.MaintenanceError(f"no running {service} container on the node the Docker API reaches")
    return str(found[0]["Id"])


def scrape_all(docker: engine_api.DockerApi, service: str) -> tuple[list[status.Sample], int, list[str]]:
    """Every node's gateway metrics, how many tasks were read, and those that could not be (with why)."""
    container = local_container(docker, service)
    samples: list[status.Sample] = []
    unread = []
    addresses = task_addresses(docker, service)
    for address in addresses:
        url = f"http://{address}:{METRICS_PORT}/metrics"
        argv = ["curl", "-fsS", "--max-time", str(CURL_SECONDS), url]
        done = container_exec.exec_in(docker, container, argv, timeout=CURL_SECONDS + 20)
        if done.exit_code != 0:
            unread.append(f"{address}: {done.stderr.decode(errors='replace').strip()[-200:]}")
            continue
        samples += status.parse(done.stdout.decode())
    return samples, len(addresses) - len(unread), unread


def report(env: Mapping[str, str], log: maintenance.Log) -> str:
    private = maintenance_access.settings_from(env)[0]
    docker = rollout.api_from(env)
    service = gateway_service(private)
    samples, read, unread = scrape_all(docker, service)
    with maintenance.SwarmStore(docker, private, (), dry_run=True, log=log) as store:
        storage = status.storage_used(store.private_bytes(), store.cache_bytes())
    lines = [f"{service}: the metrics of {read} gateway task(s), summed"]
    lines += [f"not read: {why}" for why in unread]
    return "\n".join(lines) + "\n\n" + status.report(status.Figures(samples), storage)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m components.cli.status", description="What a deployed stack's mirror does."
    )
    parser.add_argument("--stack", help="read the access from this stack's output (else the environment)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    def work(env: Mapping[str, str], log: maintenance.Log) -> None:
        print(report(env, log), end="")

    return maintenance.run_on_stack("status", parse_args(argv).stack, work, log_to=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
