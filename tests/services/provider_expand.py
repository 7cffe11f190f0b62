"""What pulumi-docker sends the Engine API for a `docker.Service`: a port of the provider's expand functions.

kreuzwerker/terraform-provider-docker v4, internal/provider/resource_docker_service_structures.go
(`createServiceSpec` and the functions it calls, named at each step below), with the schema's defaults
(resource_docker_service.go) filled in where an argument is absent, as Terraform does before expanding.
Input: `components.service_args.service_args(...)` (the provider's argument names, pulumi's snake_case);
output: the Engine API's ServiceSpec JSON (https://docs.docker.com/reference/api/engine/version/v1.51/).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}

# Schema defaults (resource_docker_service.go) for arguments our stacks leave out.
UPDATE_DEFAULTS = {
    "parallelism": 1,
    "delay": "0s",
    "failure_action": "pause",
    "monitor": "5s",
    "max_failure_ratio": "0.0",
    "order": "stop-first",
}
FILE_DEFAULTS = {"file_uid": "0", "file_gid": "0", "file_mode": 0o444}
PORT_DEFAULTS = {"protocol": "tcp", "publish_mode": "ingress"}


def parse_duration(text: str) -> int:
    """time.ParseDuration, as the provider calls it on every duration argument (errors ignored: "" -> 0)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return 0
    return round(sum(float(n) * _UNITS[u] for n, u in parts))


def _file(ref: Mapping[str, Any]) -> dict[str, Any]:
    ref = {**FILE_DEFAULTS, **ref}
    return {
        "Name": ref["file_name"],
        "UID": ref["file_uid"],
        "GID": ref["file_gid"],
        "Mode": ref["file_mode"],
    }


def container_spec(c: Mapping[str, Any]) -> dict[str, Any]:
    """createContainerSpec."""
    health = c.get("healthcheck") or {}
    return {
        "Image": c["image"],
        "Command": list(c.get("commands") or []),
        "Args": list(c.get("args") or []),
        # mapTypeMapValsToStringSlice
        "Env": [f"{k}={v}" for k, v in (c.get("env") or {}).items()],
        "Mounts": [
            {"Type": m["type"], "Target": m["target"], "Source": m.get("source", ""), "ReadOnly": False}
            for m in c.get("mounts") or []
        ],
        # Always set: an absent stop_grace_period is sent as 0 (parsed "").
        "StopGracePeriod": parse_duration(c.get("stop_grace_period") or ""),
        # Always set (&container.HealthConfig{}), durations parsed, schema default "0s".
        "Healthcheck": {
            "Test": list(health.get("tests") or []),
            "Interval": parse_duration(health.get("interval", "0s")),
            "Timeout": parse_duration(health.get("timeout", "0s")),
            "StartPeriod": parse_duration(health.get("start_period", "0s")),
            "Retries": health.get("retries", 0),
        },
        "DNSConfig": {},  # always &swarm.DNSConfig{}
        "Isolation": "default",  # schema default
        "Secrets": [
            {"File": _file(s), "SecretID": s["secret_id"], "SecretName": s["secret_name"]}
            for s in c.get("secrets") or []
        ],
        "Configs": [
            {"File": _file(s), "ConfigID": s["config_id"], "ConfigName": s["config_name"]}
            for s in c.get("configs") or []
        ],
        # Only when set (`if value, ok := rawContainerSpec["sysctl"]`), values as strings.
        **({"Sysctls": {k: str(v) for k, v in c["sysctl"].items()}} if c.get("sysctl") else {}),
    }


def _update(u: Mapping[str, Any]) -> dict[str, Any]:
    """createUpdateOrRollbackConfig."""
    u = {**UPDATE_DEFAULTS, **u}
    return {
        "Parallelism": u["parallelism"],
        "Delay": parse_duration(u["delay"]),
        "FailureAction": u["failure_action"],
        "Monitor": parse_duration(u["monitor"]),
        "MaxFailureRatio": float(u["max_failure_ratio"]),
        "Order": u["order"],
    }


def service_spec(args: Mapping[str, Any]) -> dict[str, Any]:
    """createServiceSpec."""
    task = args["task_spec"]
    resources = task.get("resources") or {}
    placement = task.get("placement") or {}
    restart = task.get("restart_policy") or {}
    log_driver = task.get("log_driver")
    template: dict[str, Any] = {
        "ContainerSpec": container_spec(task["container_spec"]),
        # createResources
        "Resources": {
            "Limits": {
                "NanoCPUs": (resources.get("limits") or {}).get("nano_cpus", 0),
                "MemoryBytes": (resources.get("limits") or {}).get("memory_bytes", 0),
            },
            "Reservations": {
                "NanoCPUs": (resources.get("reservation") or {}).get("nano_cpus", 0),
                "MemoryBytes": (resources.get("reservation") or {}).get("memory_bytes", 0),
            },
        },
        # createRestartPolicy: every pointer set, empty durations parsed as 0.
        "RestartPolicy": {
            "Condition": restart.get("condition", ""),
            "Delay": parse_duration(restart.get("delay") or ""),
            "MaxAttempts": restart.get("max_attempts", 0),
            "Window": parse_duration(restart.get("window") or ""),
        },
        # createPlacement / stringSetToPlacementPrefs: each preference string verbatim as the descriptor.
        "Placement": {
            "Constraints": list(placement.get("constraints") or []),
            "Preferences": [{"Spread": {"SpreadDescriptor": p}} for p in placement.get("prefs") or []],
            "MaxReplicas": placement.get("max_replicas", 0),
            "Platforms": [
                {"Architecture": p["architecture"], "OS": p["os"]} for p in placement.get("platforms") or []
            ],
        },
        # createServiceAdvancedNetworks
        "Networks": [
            {"Target": n["id"], "Aliases": list(n.get("aliases") or []), "DriverOpts": {}}
            for n in task.get("networks_advanceds") or []
        ],
    }
    if log_driver:  # createLogDriver
        template["LogDriver"] = {"Name": log_driver["name"], "Options": dict(log_driver.get("options") or {})}
    endpoint = args.get("endpoint_spec") or {}
    return {
        "Name": args["name"],
        "Labels": {
            label["label"]: label["value"] for label in args.get("labels") or []
        },  # createServiceLabels
        "TaskTemplate": template,
        "Mode": {
            "Replicated": {"Replicas": args["mode"]["replicated"].get("replicas", 1)}
        },  # createServiceMode
        "UpdateConfig": _update(args["update_config"]) if args.get("update_config") else None,
        "RollbackConfig": _update(args["rollback_config"]) if args.get("rollback_config") else None,
        # portSetToServicePorts; endpoint mode is computed (the engine's "vip") when not set
        "EndpointSpec": {
            "Mode": endpoint.get("mode", "vip"),
            "Ports": [
                {
                    "Name": p.get("name", ""),
                    "Protocol": {**PORT_DEFAULTS, **p}["protocol"],
                    "TargetPort": p["target_port"],
                    "PublishedPort": p.get("published_port", 0),
                    "PublishMode": {**PORT_DEFAULTS, **p}["publish_mode"],
                }
                for p in endpoint.get("ports") or []
            ],
        },
    }
