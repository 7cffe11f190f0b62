"""What each provider does to a value between create and read: the state a `pulumi up` leaves behind.

`preview` after `up` (the daily drift check, `--expect-no-changes --refresh`) compares the program's new
inputs with that state; any difference is a perpetual diff. Each rule below mirrors provider source:

- docker (kreuzwerker/terraform-provider-docker v4, internal/provider/):
  - resource_docker_service_structures.go `shortDur`: every service duration is read back as Go's
    `time.Duration.String()` with a "m0s"/"h0m" tail trimmed ("120s" -> "2m", "60s" -> "1m"), in
    flattenContainerSpec (stop_grace_period), flattenServiceHealthcheck (interval, timeout,
    start_period), flattenTaskRestartPolicy (delay, window) and flattenServiceUpdateOrRollbackConfig
    (delay, monitor); no DiffSuppressFunc on any of them (resource_docker_service.go);
  - flattenServiceUpdateOrRollbackConfig: `max_failure_ratio` as strconv.FormatFloat(r, 'f', 1, 64);
  - flattenTaskPlacement: `placement.platforms`, which the docker client fills in from the image's
    manifest on create (QueryRegistry), read back although the field is not computed.
- cloudflare (cloudflare/terraform-provider-cloudflare v5, internal/services/api_token/custom.go):
  `policies[].resources` is the API's JSON verbatim (compact, no normalisation), and
  `permission_groups` are put in canonical order, by id, when there is no prior order to keep.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration for what our stacks write ("45s", "1m30s", "0.5s"): nanoseconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if text == "0":
        return 0
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return round(sum(float(n) * _NS[u] for n, u in parts))


def go_duration_string(ns: int) -> str:
    """Go's time.Duration.String() (whole and fractional seconds, as service specs use)."""
    if ns == 0:
        return "0s"
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size:
                return f"{ns / size:g}{unit}"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = f"{rest / 10**9:.9f}".rstrip("0").rstrip(".")
    out = f"{seconds}s"
    if hours or minutes:
        out = f"{minutes}m{out}"
    if hours:
        out = f"{hours}h{out}"
    return out


def short_dur(text: str) -> str:
    """The provider's shortDur of a configured duration."""
    s = go_duration_string(parse_go_duration(text))
    if s.endswith("m0s"):
        s = s[:-2]
    if s.endswith("h0m"):
        s = s[:-2]
    return s


# Where the docker service carries durations (wire names, as the engine and the mocks see them).
SERVICE_DURATIONS = (
    ("taskSpec", "containerSpec", "stopGracePeriod"),
    ("taskSpec", "containerSpec", "healthcheck", "interval"),
    ("taskSpec", "containerSpec", "healthcheck", "timeout"),
    ("taskSpec", "containerSpec", "healthcheck", "startPeriod"),
    ("taskSpec", "restartPolicy", "delay"),
    ("taskSpec", "restartPolicy", "window"),
    ("updateConfig", "delay"),
    ("updateConfig", "monitor"),
    ("rollbackConfig", "delay"),
    ("rollbackConfig", "monitor"),
)
SERVICE_RATIOS = (("updateConfig", "maxFailureRatio"), ("rollbackConfig", "maxFailureRatio"))
# What the docker client writes into placement.platforms for an amd64 image (docker/cli
# service create with QueryRegistry: the platforms of the image's manifest list).
ENGINE_PLATFORMS = [{"architecture": "amd64", "os": "linux"}]


def _at(state: dict[str, Any], path: tuple[str, ...], change: Callable[[Any], Any]) -> None:
    node = state
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    if path[-1] in node and node[path[-1]] is not None:
        node[path[-1]] = change(node[path[-1]])


def _service(inputs: dict[str, Any]) -> dict[str, Any]:
    state = copy.deepcopy(inputs)
    for path in SERVICE_DURATIONS:
        _at(state, path, short_dur)
    for path in SERVICE_RATIOS:
        _at(state, path, lambda r: f"{float(r):.1f}")
    task = state.setdefault("taskSpec", {})
    placement = task.get("placement") or {}
    task["placement"] = {**placement, "platforms": ENGINE_PLATFORMS}
    return state


def _api_token(inputs: dict[str, Any]) -> dict[str, Any]:
    state = copy.deepcopy(inputs)
    for policy in state.get("policies") or []:
        if isinstance(policy.get("resources"), str):
            policy["resources"] = json.dumps(json.loads(policy["resources"]), separators=(",", ":"))
        groups = policy.get("permissionGroups")
        if isinstance(groups, list):
            policy["permissionGroups"] = sorted(groups, key=lambda g: str(g.get("id")))
    return state


RULES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "docker:index/service:Service": _service,
    "cloudflare:index/apiToken:ApiToken": _api_token,
    "cloudflare:index/accountToken:AccountToken": _api_token,
}


def read_back(typ: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The state the provider writes after creating a resource of `typ` from `inputs`."""
    rule = RULES.get(typ)
    return rule(inputs) if rule is not None else copy.deepcopy(inputs)


Path = tuple[str | int, ...]


def differences(state: Any, inputs: Any, path: Path = ()) -> list[Path]:
    """Paths where new inputs and the stored state disagree: changed values, and fields only one side
    has (a field the provider filled in and the program does not set is planned for removal)."""
    if isinstance(state, dict) and isinstance(inputs, dict):
        found: list[Path] = []
        for key in sorted(set(state) | set(inputs)):
            found += differences(state.get(key), inputs.get(key), (*path, key))
        return found
    if isinstance(state, list) and isinstance(inputs, list) and len(state) == len(inputs):
        return [
            p
            for i, (s, n) in enumerate(zip(state, inputs, strict=True))
            for p in differences(s, n, (*path, i))
        ]
    return [] if state == inputs else [path]


def dotted(path: Path) -> str:
    """`("taskSpec", "placement", "platforms", 0)` -> "taskSpec.placement.platforms[0]"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def ignored(path: Path, ignore_changes: list[str]) -> bool:
    text = dotted(path)
    return any(text == p or text.startswith(p + ".") or text.startswith(p + "[") for p in ignore_changes)
