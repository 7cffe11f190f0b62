"""The arguments of one `docker.Service`, from a plain `swarm_specs.ServiceSpec`, as plain dicts.

A pure function of the spec and the ids of the objects it mounts, so the same arguments are what
`RegistryServices` hands pulumi-docker and what `tests/services/` applies to a real swarm through a port
of the provider's own expand functions (tests/services/provider_expand.py). Keys are the provider's
argument names (pulumi-docker's snake_case, e.g. `networks_advanceds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.plan.swarm_specs import MountSpec, ServiceSpec, UpdateSpec

# How long `pulumi up` waits for a service to converge (or roll back) before it reports a failure.
CONVERGE_TIMEOUT = "15m"  # a rolling update: per node up to nginx's stop grace (drain + transfers) + delay


class ServiceArgs(TypedDict):
    name: str
    task_spec: docker.ServiceTaskSpecArgsDict
    mode: docker.ServiceModeArgsDict
    endpoint_spec: docker.ServiceEndpointSpecArgsDict
    update_config: docker.ServiceUpdateConfigArgsDict
    rollback_config: docker.ServiceRollbackConfigArgsDict
    converge_config: docker.ServiceConvergeConfigArgsDict
    labels: list[docker.ServiceLabelArgsDict]


ObjectIds = Mapping[str, tuple[pulumi.Input[str], pulumi.Input[str]]]  # role -> (id, name)


def _update(u: UpdateSpec) -> docker.ServiceUpdateConfigArgsDict:
    return {
        "parallelism": u["parallelism"],
        "delay": u["delay"],
        "order": u["order"],
        "failure_action": u["failure_action"],
        "monitor": u["monitor"],
        "max_failure_ratio": u["max_failure_ratio"],
    }


def _mount(m: MountSpec) -> docker.ServiceTaskSpecContainerSpecMountArgsDict:
    mount: docker.ServiceTaskSpecContainerSpecMountArgsDict = {"type": m["type"], "target": m["target"]}
    if m["source"]:  # a tmpfs has none
        mount["source"] = m["source"]
    return mount


def service_args(spec: ServiceSpec, objects: ObjectIds, network_id: pulumi.Input[str]) -> ServiceArgs:
    health = spec["healthcheck"]
    container: docker.ServiceTaskSpecContainerSpecArgsDict = {
        "image": spec["image"],
        "commands": spec["command"],
        "configs": [
            {
                "config_id": objects[r["object"]][0],
                "config_name": objects[r["object"]][1],
                "file_name": r["target"],
                "file_mode": r["mode"],
            }
            for r in spec["configs"]
        ],
        "secrets": [
            {
                "secret_id": objects[r["object"]][0],
                "secret_name": objects[r["object"]][1],
                "file_name": r["target"],
                "file_mode": r["mode"],
            }
            for r in spec["secrets"]
        ],
        "mounts": [_mount(m) for m in spec["mounts"]],
        "stop_grace_period": spec["stop_grace_period"],
        "healthcheck": {
            "tests": health["test"],
            "interval": health["interval"],
            "timeout": health["timeout"],
            "retries": health["retries"],
            "start_period": health["start_period"],
        },
    }
    if spec["env"]:
        container["env"] = dict(spec["env"])
    if spec["sysctls"]:
        container["sysctl"] = dict(spec["sysctls"])
    restart = spec["restart"]
    placement: docker.ServiceTaskSpecPlacementArgsDict = {}
    if spec["max_replicas_per_node"]:
        placement["max_replicas"] = spec["max_replicas_per_node"]
    task: docker.ServiceTaskSpecArgsDict = {
        "container_spec": container,
        "networks_advanceds": [{"id": network_id, "aliases": [spec["alias"]]}],
        "resources": {
            "limits": {
                "memory_bytes": spec["limits"]["memory_bytes"],
                "nano_cpus": spec["limits"]["nano_cpus"],
            },
            "reservation": {
                "memory_bytes": spec["reservations"]["memory_bytes"],
                "nano_cpus": spec["reservations"]["nano_cpus"],
            },
        },
        "placement": placement,
        "restart_policy": {
            "condition": str(restart["condition"]),
            "delay": str(restart["delay"]),
            "max_attempts": int(restart["max_attempts"]),
            "window": str(restart["window"]),
        },
        "log_driver": {"name": spec["log_driver"], "options": dict(spec["log_options"])},
    }
    return {
        "name": spec["name"],
        "task_spec": task,
        "mode": {"replicated": {"replicas": spec["replicas"]}},
        "endpoint_spec": {
            "mode": spec["endpoint_mode"],
            "ports": [
                {"target_port": p["target"], "published_port": p["published"], "publish_mode": p["mode"]}
                for p in spec["ports"]
            ],
        },
        "update_config": _update(spec["update"]),
        "rollback_config": _update(spec["rollback"]),
        # Makes `pulumi up` wait until the tasks run (or Swarm rolled back) instead of returning at once.
        "converge_config": {"delay": "7s", "timeout": CONVERGE_TIMEOUT},
        "labels": [{"label": "owncr.role", "value": spec["key"]}],
    }
