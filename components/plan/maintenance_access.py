"""The stack output `maintenance`: what the maintenance and status tools (components/cli) need to reach a
deployed stack (the deployer's Docker API access, the private service's name, the retention rules, the
caches' eviction policy),
written by the program (`access`) and read back by the tools (`environment`, `settings_from`). One
secret output: it holds the deployer's client key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from components.plan.swarm_specs import service_name
from gateway.names import PRIVATE_KEY
from gateway.upkeep.eviction import CachePolicy
from gateway.upkeep.maintenance import MaintenanceError
from gateway.upkeep.retention import RetentionRule, from_record, record


def access(
    stack: str,
    rules: tuple[RetentionRule, ...],
    cache_ttl: str,
    cache_max_gib: int | None,
    host: object,
    ca_pem: object,
    cert_pem: object,
    key_pem: object,
) -> dict[str, object]:
    """`host` and the PEMs: strings, or the Pulumi Outputs they come from (None: a local socket)."""
    # The stack output `maintenance` (secret: the deployer's client key); `environment` reads it.
    return {
        "docker_host": host,
        "ca_pem": ca_pem,
        "cert_pem": cert_pem,
        "key_pem": key_pem,
        "private_service": service_name(stack, PRIVATE_KEY),
        "retention": [record(r) for r in rules],
        "cache_policy": CachePolicy.of(cache_ttl, cache_max_gib).record(),
    }


def environment(output: Mapping[str, Any]) -> dict[str, str]:
    """The environment `main` reads, from the stack output `maintenance`."""
    env = {"OWNCR_DOCKER_HOST": str(output["docker_host"])}
    for key in ("ca_pem", "cert_pem", "key_pem"):
        if output.get(key):
            env[f"OWNCR_DOCKER_{key.upper()}"] = str(output[key])
    # A stack deployed before eviction has no cache_policy: the tools then use the defaults.
    carried = {k: output[k] for k in ("private_service", "retention", "cache_policy") if k in output}
    env["OWNCR_MAINTENANCE"] = json.dumps(carried)
    return env


def settings_from(env: Mapping[str, str]) -> tuple[str, tuple[RetentionRule, ...], CachePolicy]:
    raw = env.get("OWNCR_MAINTENANCE", "")
    try:
        parsed = json.loads(raw)
        service = parsed["private_service"]
        rules = tuple(from_record(r) for r in parsed.get("retention", []))
        policy = CachePolicy.from_record(parsed.get("cache_policy"))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise MaintenanceError(
            f'OWNCR_MAINTENANCE: {err}; expected JSON {{"private_service": NAME, "retention": [...], '
            '"cache_policy": {"ttl_seconds": S, "budget_bytes": B}}} '
            "(the stack output `maintenance`: run with --stack STACK)"
        ) from err
    return str(service), rules, policy
