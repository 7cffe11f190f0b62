"""The registry services as plain data: which Swarm configs/secrets exist and how each service runs.

No Pulumi import. `components/registry_services.py` turns these specs into pulumi-docker resources, and
`tests/services/` applies the very same specs to a real single-node swarm, so the test proves what the
component deploys. Everything here is a pure function of the gateway's rendered `Bundle` (only its shape:
service keys, commands, ports, file paths and secret flags; never a file's content, which may be a secret
that is unknown at preview) and of a `ServicePlan`.

Decisions made here, once:
- physical names `owncr-<stack>-<role>[-<sha256[:12]> of the content]` (Swarm configs and secrets are
  immutable, so a changed file gets a new object and rolls the service; an unchanged one keeps its name);
- every rendered file mounted at exactly `RenderedFile.path` (a Swarm secret target may be absolute);
- modes, update/rollback/restart policies, limits, health checks and log rotation of each service.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Literal, TypedDict

from components import physical_name
from components.plan import lb_health
from gateway.names import CACHE_KEY_PREFIX, NGINX_KEY, PRIVATE_KEY
from gateway.render.bundle import Bundle
from gateway.render.layout import STATE_DIR, blob_cache_dir

# Swarm rejects config/secret names over 64 characters and service names over 63
# (https://github.com/moby/swarmkit/blob/master/manager/controlapi/common.go).
OBJECT_NAME_MAX = 64
SERVICE_NAME_MAX = 63
HASH_LEN = 12
# Named volume (local driver, one per node, created by the first task) for nginx's blob copy.
BLOB_CACHE_VOLUME = "owncr-blob-cache"
NS = 1_000_000_000  # Engine API durations are nanoseconds

# Resource limits: nginx streams bodies (no buffering), a registry holds at most a few upload chunks
# per concurrent push in memory. Reservations keep the scheduler honest on small droplets.
NGINX_LIMITS: ResourcesSpec = {"memory_bytes": 256 << 20, "nano_cpus": 1 * NS}
REGISTRY_LIMITS: ResourcesSpec = {"memory_bytes": 1 << 30, "nano_cpus": 1 * NS}
RESERVATION: ResourcesSpec = {"memory_bytes": 64 << 20, "nano_cpus": NS // 10}
# Durations are written the way the docker provider reads them back (Go's time.Duration.String() with
# "0s"/"0m" tails trimmed: kreuzwerker/terraform-provider-docker, resource_docker_service_structures.go,
# shortDur): "120s" would come back as "2m" and every preview would update every service.
# How long a stopping task may finish its transfers before SIGKILL (see service_specs); nginx behind the
# load balancer drains first (lb_health.drain_seconds), which its grace period adds to this.
NGINX_TRANSFER_GRACE_SECONDS = 120
DRAIN_ENV = "OWNCR_DRAIN_SECONDS"  # read by gateway/render/drain.sh
# A stopping registry keeps serving until every nginx has re-resolved its name (nginx's resolver caches
# 5 s: gateway/render/templates/nginx.conf.j2), then drains for its http.draintimeout (30 s) and shuts down.
REGISTRY_DRAIN_SECONDS = 10
REGISTRY_STOP_GRACE = "55s"


class FileRef(TypedDict):
    object: str  # key of a SwarmFile (its role)
    target: str  # absolute path inside the container, exactly RenderedFile.path
    mode: int


class PortSpec(TypedDict):
    target: int
    published: int
    mode: Literal["host"]


class MountSpec(TypedDict):
    type: Literal["volume", "bind", "tmpfs"]
    source: str  # "" for tmpfs
    target: str


class ResourcesSpec(TypedDict):
    memory_bytes: int
    nano_cpus: int


class HealthSpec(TypedDict):
    test: list[str]
    interval: str
    timeout: str
    retries: int
    start_period: str


class UpdateSpec(TypedDict):
    parallelism: int
    delay: str
    order: Literal["start-first", "stop-first"]
    failure_action: Literal["rollback", "pause", "continue"]
    monitor: str
    max_failure_ratio: str


class ServiceSpec(TypedDict):
    key: str  # the Bundle key (gateway/names.py): "nginx", "private", "cache-<upstream id>"
    name: str  # physical Swarm service name
    alias: str  # DNS name on the overlay network, decided by the gateway (ServiceFiles.name)
    image: str
    command: list[str]  # replaces the image's entrypoint and cmd
    env: dict[str, str]
    mode: Literal["replicated"]
    endpoint_mode: Literal["dnsrr"]
    replicas: int
    max_replicas_per_node: int  # 0: no limit
    ports: list[PortSpec]
    configs: list[FileRef]
    secrets: list[FileRef]
    mounts: list[MountSpec]
    healthcheck: HealthSpec
    sysctls: dict[str, str]  # the task's own network namespace's kernel settings
    stop_grace_period: str
    limits: ResourcesSpec
    reservations: ResourcesSpec
    restart: dict[str, str | int]
    update: UpdateSpec
    rollback: UpdateSpec
    log_driver: str
    log_options: dict[str, str]


@dataclass(frozen=True)
class SwarmFile:
    """One rendered file as a Swarm object; `role` is its stable key, the name adds the content hash."""

    role: str
    service: str  # the Bundle key of the service that reads it
    path: str
    secret: bool


@dataclass(frozen=True, kw_only=True)
class Port:
    published: int
    target: int


@dataclass(frozen=True, kw_only=True)
class StorageMount:
    """Where filesystem storage lives on the node: a named Docker volume (local) or an NFS mount (bind)."""

    type: Literal["volume", "bind"]
    source: str  # volume name, or the node's NFS mount point
    target: str  # FilesystemStorage.root inside the registry containers


@dataclass(frozen=True, kw_only=True)
class ServicePlan:
    """Everything but the rendered files that decides how the services run. Plain values only."""

    stack: str
    nginx_image: str
    registry_image: str
    node_count: int  # nginx runs once on each node
    private_replicas: int
    nginx_ports: tuple[Port, ...]
    # The nginx listener expects a PROXY protocol header (behind the load balancer): the health check
    # must send one too, or nginx drops the request as a broken header.
    nginx_proxy_protocol: bool
    storage_mount: StorageMount | None = None
    log_max_size: str = "10m"
    log_max_file: int = 5

    def __post_init__(self) -> None:
        for image in (self.nginx_image, self.registry_image):
            if not is_pinned(image):
                raise ValueError(f"image {image!r} must be pinned by digest (name@sha256:<64 hex>)")
        if self.private_replicas < 1 or self.node_count < 1:
            raise ValueError("private_replicas and node_count must be at least 1")
        if not self.nginx_ports:
            raise ValueError("nginx needs at least one published port")


_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")


def is_pinned(image: str) -> bool:
    return bool(_DIGEST.match(image))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def content_hash(content: str, key: str = "") -> str:
    """SHA-256 of a file; with `key`, an HMAC: the name of a secret object must not let anyone who sees
    it (state, preview output) test guesses at its content, e.g. a password behind an htpasswd line."""
    if key:
        return hmac.new(key.encode(), content.encode(), hashlib.sha256).hexdigest()[:HASH_LEN]
    return hashlib.sha256(content.encode()).hexdigest()[:HASH_LEN]


def service_name(stack: str, key: str) -> str:
    name = physical_name(stack, key)
    if len(name) > SERVICE_NAME_MAX:
        raise ValueError(f"service name {name!r} is longer than {SERVICE_NAME_MAX} characters")
    return name


def object_labels(stack: str, f: SwarmFile) -> dict[str, str]:
    """Labels of a file's Swarm config or secret (what `object_name` also hashes)."""
    return {"owncr.stack": stack, "owncr.path": f.path}


def object_name(stack: str, f: SwarmFile, content: str, key: str = "") -> str:
    """`owncr-<stack>-<role>-<sha256[:12]>` (an HMAC with `key`, for secrets) of the content AND the
    labels: the provider replaces a config or secret whose labels change (ForceNew), and a replacement
    under the same name would be refused by Swarm. The role is shortened (never the hash) to fit
    Swarm's limit."""
    labels = json.dumps(object_labels(stack, f), sort_keys=True)
    digest = content_hash(labels + "\n" + content, key)
    role = f.role
    room = OBJECT_NAME_MAX - len(f"owncr-{stack}--{digest}")
    if room < 8:
        raise ValueError(f"stack name {stack!r} leaves no room for object names")
    return f"owncr-{stack}-{role[:room].rstrip('-')}-{digest}"


def swarm_files(bundle: Bundle) -> tuple[SwarmFile, ...]:
    """Every rendered file of every service, with a role unique across the bundle."""
    files: list[SwarmFile] = []
    seen: set[str] = set()
    for key in sorted(bundle.services):
        for f in bundle.services[key].files:
            if not f.path.startswith("/"):
                raise ValueError(f"{key}: rendered path {f.path!r} is not absolute")
            name = slug(f.path.rsplit("/", 1)[-1])
            base = name if name.startswith(key) else f"{key}-{name}"
            role, i = base, 2
            while role in seen:
                role, i = f"{base}-{i}", i + 1
            seen.add(role)
            files.append(SwarmFile(role=role, service=key, path=f.path, secret=f.secret))
    return tuple(files)


def shape(bundle: Bundle) -> tuple[object, ...]:
    """What must not differ between the placeholder render and the real one (see registry_services)."""
    return tuple(
        (key, s.name, s.command, s.port, tuple((f.path, f.secret) for f in s.files))
        for key, s in sorted(bundle.services.items())
    )


def go_duration(seconds: int) -> str:
    """Seconds as Go's time.Duration.String() writes them, "0s"/"0m" tails trimmed as the provider reads
    them back (see above): 155 -> "2m35s", 120 -> "2m", 45 -> "45s"."""
    minutes, rest = divmod(seconds, 60)
    return (f"{minutes}m" if minutes else "") + (f"{rest}s" if rest or not minutes else "")


def _drain_seconds(plan: ServicePlan) -> int:
    # Behind the load balancer (PROXY protocol) a stopping nginx answers 503 on /healthz until the load
    # balancer has taken it out; without one (the local stack) it quits at once.
    return lb_health.drain_seconds() if plan.nginx_proxy_protocol else 0


def _update_delay(plan: ServicePlan, is_nginx: bool) -> str:
    # Between two nginx tasks, wait until the load balancer sends the new one traffic again
    # (HEALTHY_THRESHOLD passed checks) before the next node drains: two nodes are never out at once.
    if is_nginx and plan.nginx_proxy_protocol:
        return go_duration(lb_health.rejoin_seconds())
    return "5s"


def _update(
    order: Literal["start-first", "stop-first"], failure_action: Literal["rollback", "pause"], delay: str
) -> UpdateSpec:
    # One task at a time; `monitor` is how long a new task must stay up (and healthy) before Swarm calls
    # the update a success and moves on. A failure rolls the service back to the previous spec.
    return {
        "parallelism": 1,
        "delay": delay,
        "order": order,
        "failure_action": failure_action,
        "monitor": "30s",
        # Read back with one decimal (strconv.FormatFloat(r, 'f', 1, 64), same file): "0" would diff.
        "max_failure_ratio": "0.0",
    }


def _health(url: str, tool: list[str]) -> HealthSpec:
    return {
        "test": ["CMD", *tool, url],
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
        "start_period": "10s",
    }


def _nginx_health(plan: ServicePlan, port: int) -> HealthSpec:
    # The official nginx image ships curl ("Bring in curl and ca-certificates", mainline/alpine/Dockerfile
    # in https://github.com/nginx/docker-nginx; not in the -slim variants, which also lack njs).
    proxy = ["--haproxy-protocol"] if plan.nginx_proxy_protocol else []
    return _health(f"http://127.0.0.1:{port}/healthz", ["curl", "-fsS", *proxy, "-o", "/dev/null"])


def _registry_health(port: int) -> HealthSpec:
    # `/` is Distribution's liveness answer (200 without touching storage): a storage hiccup must not
    # make Swarm kill every registry at once. The official image is Alpine: busybox wget.
    return _health(f"http://127.0.0.1:{port}/", ["wget", "-q", "-O", "/dev/null"])


def _mounts(plan: ServicePlan, is_nginx: bool) -> list[MountSpec]:
    m = plan.storage_mount
    # Filesystem storage (NFS, or the single node's volume) is mounted where the registries have it, in
    # nginx too: the store (gateway/render/njs/store.js) keeps the nodes' locks below it.
    storage: list[MountSpec] = [{"type": m.type, "source": m.source, "target": m.target}] if m else []
    if is_nginx:
        # nginx's pid, temp paths and login cache live in the gateway's state dir, which the image
        # lacks: a tmpfs per task (nothing there outlives the task). Its copy of upstream blobs
        # (templates/proxy.conf.j2, up to blob_cache_mib) would count against the task's memory there:
        # a volume on the node's disk instead, which the next task on that node reuses.
        return [
            {"type": "tmpfs", "source": "", "target": STATE_DIR},
            {"type": "volume", "source": BLOB_CACHE_VOLUME, "target": blob_cache_dir(STATE_DIR)},
            *storage,
        ]
    return storage


def _registry_replicas(key: str, plan: ServicePlan) -> int:
    if key == PRIVATE_KEY:
        return plan.private_replicas
    # A cache per node, all on one storage root: losing the node that runs one leaves the others, and
    # each nginx asks another when one fails (templates/routes.conf.j2). Distribution's expiry
    # scheduler is off in them (registry_config.cache_config): maintenance evicts by last pull.
    return plan.node_count


# A cache reaches the egress by nginx's service name, which lists every node's nginx until Swarm has
# noticed a lost node: a connect to the dead one gets no answer, and Go's dialer (Distribution has no
# timeout of its own) gives it a share of 30 s, 10 s with three nodes, on every new connection (the
# egress keeps none open: a pooled one to a dead node would hang a cache's request for good). With one
# SYN retry the kernel gives up after 3 s (1 + 2) and the dialer tries the next address: a cache on a
# live node answers well within the door's bound (cache_answer_seconds). Overlay peers answer a SYN
# within a millisecond; a storage connection the cache opens is retried by its S3 client the same way.
CACHE_SYSCTLS = {"net.ipv4.tcp_syn_retries": "1"}


def _order(key: str) -> Literal["start-first", "stop-first"]:
    # nginx publishes a host-mode port: a second task on the same node cannot bind it, so start-first
    # would never start the new task; stop it first (the other nodes' nginx keep serving behind the LB).
    # Registries publish nothing, so the new task starts (and turns healthy) before the old one stops
    # (caches share their root anyway: one per node).
    return "stop-first" if key == NGINX_KEY else "start-first"


def service_specs(bundle: Bundle, plan: ServicePlan) -> list[ServiceSpec]:
    """The Swarm service of each Bundle entry, with every rendered file mounted at its path."""
    files = swarm_files(bundle)
    specs: list[ServiceSpec] = []
    for key in sorted(bundle.services):
        sf = bundle.services[key]
        refs = [f for f in files if f.service == key]
        is_nginx = key == NGINX_KEY
        if not is_nginx and key != PRIVATE_KEY and not key.startswith(CACHE_KEY_PREFIX):
            raise ValueError(f"unknown service key {key!r} in the gateway bundle")
        order = _order(key)
        spec: ServiceSpec = {
            "key": key,
            "name": service_name(plan.stack, key),
            "alias": sf.name,
            "image": plan.nginx_image if is_nginx else plan.registry_image,
            "command": list(sf.command),
            "env": {DRAIN_ENV: str(_drain_seconds(plan) if is_nginx else REGISTRY_DRAIN_SECONDS)},
            # nginx: one task per node, as `global` would, but as replicas (node_count, at most one per
            # node): pulumi-docker's converge_config can only wait for replicated services, a global one
            # fails with "no replica count" (kreuzwerker/terraform-provider-docker,
            # internal/provider/resource_docker_service_funcs.go, replicatedConsoleLogUpdater).
            "mode": "replicated",
            # Every service by DNS round robin (its name resolves to each task's own address), never
            # Swarm's virtual IP: that is what scripts/ha-drill proves (this kernel, like many, has no
            # IPVS), nginx re-resolves the registries' names every 5 s and asks another replica when
            # one fails, and a lost task leaves the answer as Swarm notices. SwarmKit accepts DNS round
            # robin with host-mode published ports (controlapi validateEndpointSpec refuses ingress only).
            "endpoint_mode": "dnsrr",
            "replicas": plan.node_count if is_nginx else _registry_replicas(key, plan),
            "max_replicas_per_node": 1 if is_nginx else 0,
            "ports": [
                {"target": p.target, "published": p.published, "mode": "host"} for p in plan.nginx_ports
            ]
            if is_nginx
            else [],
            "configs": [{"object": f.role, "target": f.path, "mode": 0o444} for f in refs if not f.secret],
            # Registries read their secrets as root: owner-only. nginx's workers (not root) read htpasswd on
            # every request (auth_basic_user_file), so its secrets must be world-readable; they live on
            # the task's own tmpfs, which no other container sees.
            "secrets": [
                {"object": f.role, "target": f.path, "mode": 0o444 if is_nginx else 0o400}
                for f in refs
                if f.secret
            ],
            "mounts": _mounts(plan, is_nginx),
            "healthcheck": _nginx_health(plan, sf.port) if is_nginx else _registry_health(sf.port),
            "sysctls": dict(CACHE_SYSCTLS) if key.startswith(CACHE_KEY_PREFIX) else {},
            # Swarm's default 10 s would SIGKILL multi-GB pushes and pulls on every rolling update: nginx
            # drains from the load balancer, then finishes its transfers on SIGQUIT (drain.sh); a
            # registry serves until nginx stopped calling it, then drains for `draintimeout`
            # (gateway/render/registry_config.py) before it exits.
            "stop_grace_period": go_duration(_drain_seconds(plan) + NGINX_TRANSFER_GRACE_SECONDS)
            if is_nginx
            else REGISTRY_STOP_GRACE,
            "limits": NGINX_LIMITS if is_nginx else REGISTRY_LIMITS,
            "reservations": RESERVATION,
            # No placement preference: Swarm's scheduler already puts a service's next task on the node
            # running the fewest of its tasks, so replicas spread over the managers and one droplet loss
            # leaves the others serving. (A spread preference takes only node.labels.* / engine.labels.*;
            # "node.id" or "spread=node.id" is ignored: moby/swarmkit manager/scheduler/nodeset.go, tree.)
            "restart": {"condition": "any", "delay": "5s", "max_attempts": 0, "window": "1m"},
            "update": _update(order, "rollback", _update_delay(plan, is_nginx)),
            "rollback": _update(order, "pause", _update_delay(plan, is_nginx)),
            "log_driver": "json-file",
            "log_options": {"max-size": plan.log_max_size, "max-file": str(plan.log_max_file)},
        }
        specs.append(spec)
    return specs
