"""Apply `components.swarm_specs` to a real swarm through the Engine API, the way pulumi-docker would.

`create_objects` creates one Swarm config or secret per rendered file under the component's physical
name; `engine_service_spec` translates a `ServiceSpec` into the Engine API's ServiceSpec JSON
(https://docs.docker.com/reference/api/engine/version/v1.41/#tag/Service/operation/ServiceCreate).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from typing import Any

from swarm_engine import Engine

from components import swarm_specs
from components.swarm_specs import NS, ServiceSpec, UpdateSpec
from gateway.render import Bundle

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS}


def duration_ns(text: str) -> int:
    """Go duration (what pulumi-docker takes) -> nanoseconds (what the Engine API takes)."""
    parts = re.findall(r"(\d+)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def create_objects(engine: Engine, stack: str, bundle: Bundle) -> dict[str, tuple[str, str]]:
    """role -> (id, name) of each rendered file as a Swarm config or secret; an object whose name
    (content hash) exists already is reused, as an unchanged Pulumi resource would be."""
    objects = {}
    for f in swarm_specs.swarm_files(bundle):
        content = next(r.content for r in bundle.services[f.service].files if r.path == f.path)
        name = swarm_specs.object_name(stack, f, content)
        kind = "secrets" if f.secret else "configs"
        body = {
            "Name": name,
            "Data": base64.b64encode(content.encode()).decode(),
            "Labels": swarm_specs.object_labels(stack, f),
        }
        existing = engine.get(f"/{kind}?filters=" + urllib.parse.quote(json.dumps({"name": [name]})))
        exact = [o["ID"] for o in existing if o["Spec"]["Name"] == name]
        objects[f.role] = (exact[0] if exact else engine.post(f"/{kind}/create", body)["ID"], name)
    return objects


def _update(u: UpdateSpec) -> dict[str, Any]:
    return {
        "Parallelism": u["parallelism"],
        "Delay": duration_ns(u["delay"]),
        "FailureAction": u["failure_action"],
        "Monitor": duration_ns(u["monitor"]),
        "MaxFailureRatio": float(u["max_failure_ratio"]),
        "Order": u["order"],
    }


def engine_service_spec(
    spec: ServiceSpec,
    objects: dict[str, tuple[str, str]],
    network_id: str,
    *,
    image: str,
    endpoint_mode: str = "vip",
) -> dict[str, Any]:
    """The Engine API body for `spec`; only the image (a local stand-in) and the endpoint mode may differ."""
    health = spec["healthcheck"]
    file_ref = {"UID": "0", "GID": "0"}
    container: dict[str, Any] = {
        "Image": image,
        "Command": spec["command"],
        "Env": [f"{k}={v}" for k, v in spec["env"].items()],
        "Configs": [
            {
                "File": {"Name": r["target"], **file_ref, "Mode": r["mode"]},
                "ConfigID": objects[r["object"]][0],
                "ConfigName": objects[r["object"]][1],
            }
            for r in spec["configs"]
        ],
        "Secrets": [
            {
                "File": {"Name": r["target"], **file_ref, "Mode": r["mode"]},
                "SecretID": objects[r["object"]][0],
                "SecretName": objects[r["object"]][1],
            }
            for r in spec["secrets"]
        ],
        "Mounts": [
            {"Type": m["type"], "Target": m["target"], **({"Source": m["source"]} if m["source"] else {})}
            for m in spec["mounts"]
        ],
        "StopGracePeriod": duration_ns(spec["stop_grace_period"]),
        "Healthcheck": {
            "Test": health["test"],
            "Interval": duration_ns(health["interval"]),
            "Timeout": duration_ns(health["timeout"]),
            "Retries": health["retries"],
            "StartPeriod": duration_ns(health["start_period"]),
        },
    }
    restart = spec["restart"]
    body: dict[str, Any] = {
        "Name": spec["name"],
        "Labels": {"owncr.role": spec["key"]},
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {
                    "NanoCPUs": spec["limits"]["nano_cpus"],
                    "MemoryBytes": spec["limits"]["memory_bytes"],
                },
                "Reservations": {
                    "NanoCPUs": spec["reservations"]["nano_cpus"],
                    "MemoryBytes": spec["reservations"]["memory_bytes"],
                },
            },
            "RestartPolicy": {
                "Condition": restart["condition"],
                "Delay": duration_ns(str(restart["delay"])),
                "MaxAttempts": restart["max_attempts"],
                "Window": duration_ns(str(restart["window"])),
            },
            "Placement": {
                "MaxReplicas": spec["max_replicas_per_node"],
                "Preferences": [
                    {"Spread": {"SpreadDescriptor": p.split("=", 1)[1]}} for p in spec["placement_prefs"]
                ],
            },
            "Networks": [{"Target": network_id, "Aliases": [spec["alias"]]}],
            "LogDriver": {"Name": spec["log_driver"], "Options": spec["log_options"]},
        },
        "Mode": {"Replicated": {"Replicas": spec["replicas"]}},
        "UpdateConfig": _update(spec["update"]),
        "RollbackConfig": _update(spec["rollback"]),
        "EndpointSpec": {
            "Mode": endpoint_mode,
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": p["target"],
                    "PublishedPort": p["published"],
                    "PublishMode": p["mode"],
                }
                for p in spec["ports"]
            ],
        },
    }
    return body
