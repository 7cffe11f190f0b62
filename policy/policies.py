"""CrossGuard policies that guard an owncr stack (importable; the pack itself is built in __main__.py).

Every policy reads engine wire names (camelCase) of the resource inputs, the same names the mocks see.
Type tokens were checked against the installed SDKs (`@pulumi.type_token(...)` in
pulumi_digitalocean 4.84, pulumi_cloudflare 6.23, pulumi_docker 5.2).

Stack config: `ResourceValidationArgs.get_config()` is the *policy pack's* config (per-policy settings
from `--policy-pack-config`), not the stack's, and the pulumi_policy 1.21 servicer keeps only the stack
TAGS of the engine's `ConfigureStack` request. What does reach a Python pack is the stack config as the
`PULUMI_CONFIG` environment variable of the analyzer process (the engine's `constructEnv` in
sdk/go/common/resource/plugin/analyzer_plugin.go), which the servicer loads into the Pulumi runtime
config before each Analyze call (`_configure_runtime_settings`). So the world-admin acknowledgement is
read with `pulumi.runtime.get_config("owncr:allowWorldAdminAccess")`; tests set it with
`pulumi.runtime.set_all_config`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pulumi.runtime
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PROJECT = "owncr"

FIREWALL = "digitalocean:index/firewall:Firewall"
LOAD_BALANCER = "digitalocean:index/loadBalancer:LoadBalancer"
DROPLET = "digitalocean:index/droplet:Droplet"
CLOUDFLARE_DNS_RECORDS = ("cloudflare:index/dnsRecord:DnsRecord", "cloudflare:index/record:Record")
CLOUDFLARE_TOKENS = ("cloudflare:index/apiToken:ApiToken", "cloudflare:index/accountToken:AccountToken")
DOCKER_SERVICE = "docker:index/service:Service"

# Ports whose exposure to the whole Internet needs the explicit acknowledgement in stack config.
ADMIN_PORTS = {22: "SSH", 2376: "the Docker Engine API (mutual TLS)"}
WORLD_ACK_KEY = "allowWorldAdminAccess"
# nginx's host port on the nodes (gateway/render/layout.py GATEWAY_PORT; the pack does not import the
# project):
# only the load balancer may reach it, never an address range (it trusts their PROXY protocol header).
GATEWAY_PORT = 8080
# The DO tag SwarmCluster puts on every manager droplet (STYLE.md: `role:<role>`).
MANAGER_TAG = "role:manager"
# Raft needs a majority: 1 (throwaway), 3 (survives one loss) or 5 (survives two); even sizes add no fault
# tolerance (https://docs.docker.com/engine/swarm/admin_guide/#add-manager-nodes-for-fault-tolerance).
QUORUM_SIZES = (1, 3, 5)
# https://developers.cloudflare.com/fundamentals/api/how-to/create-via-api/#resources
R2_BUCKET_KEY = re.compile(
    r"^com\.cloudflare\.edge\.r2\.bucket\.[0-9a-f]{32}_[a-z]+_[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
)
DIGEST_PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")
HTTPS_ENTRY_PROTOCOLS = ("https", "http2", "http3")


def stack_flag(key: str) -> bool:
    """A boolean `owncr:<key>` of the stack under analysis (the module docstring says where it comes from)."""
    value = pulumi.runtime.get_config(f"{PROJECT}:{key}")
    if value is None or value is False or value in ("false", "False"):
        return False
    if value is True or value in ("true", "True"):
        return True
    raise ValueError(f"stack config {PROJECT}:{key} must be true or false, got {value!r}")


def _ports(port_range: Any) -> tuple[int, int]:
    """The inclusive port interval of a DO firewall `portRange` ("22", "8000-9000", "1-65535", "all")."""
    if port_range in (None, "", "all", "0"):
        return 1, 65535
    low, _, high = str(port_range).partition("-")
    return int(low), int(high or low)


def _is_world(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _world_admin_openings(props: Mapping[str, Any]) -> Iterable[str]:
    for rule in props.get("inboundRules") or []:
        if rule.get("action", "allow") != "allow" or rule.get("protocol") != "tcp":
            continue
        low, high = _ports(rule.get("portRange"))
        world = [cidr for cidr in rule.get("sourceAddresses") or [] if _is_world(cidr)]
        for port, what in ADMIN_PORTS.items():
            if world and low <= port <= high:
                yield f"{what} (tcp/{port}) is open to {', '.join(world)}"


def _no_world_admin_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != FIREWALL:
        return
    openings = list(_world_admin_openings(args.props))
    if openings and not stack_flag(WORLD_ACK_KEY):
        for opening in openings:
            report(
                f"{opening}; set `{PROJECT}:{WORLD_ACK_KEY}: true` to acknowledge it, or narrow adminCidrs",
                None,
            )


def _gateway_only_from_the_load_balancer(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != FIREWALL:
        return
    for rule in args.props.get("inboundRules") or []:
        if rule.get("action", "allow") != "allow" or rule.get("protocol") != "tcp":
            continue
        low, high = _ports(rule.get("portRange"))
        sources = list(rule.get("sourceAddresses") or [])
        if sources and low <= GATEWAY_PORT <= high:
            report(
                f"nginx (tcp/{GATEWAY_PORT}) is open to {', '.join(sources)}; only the load balancer may "
                "reach it (sourceLoadBalancerUids): clients go through the load balancer's TLS",
                None,
            )


def _lb_https_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LOAD_BALANCER:
        return
    rules = args.props.get("forwardingRules") or []
    if not any(rule.get("entryProtocol") in HTTPS_ENTRY_PROTOCOLS for rule in rules):
        report("the load balancer has no HTTPS forwarding rule (entryProtocol https)", None)
    if args.props.get("redirectHttpToHttps") is not True:
        report("the load balancer must redirect HTTP to HTTPS (redirectHttpToHttps: true)", None)


def _dns_not_proxied(args: ResourceValidationArgs, report: ReportViolation) -> None:
    # Every Cloudflare record this program manages belongs to the registry (the NS delegation of its
    # domain): proxied records cap request bodies at 100 MB, which breaks `docker push`
    # (https://developers.cloudflare.com/workers/platform/limits/#request-limits).
    if args.resource_type not in CLOUDFLARE_DNS_RECORDS:
        return
    if args.props.get("proxied") not in (None, False):
        name = args.props.get("name")
        report(
            f"Cloudflare DNS record {name!r} ({args.props.get('type')}) must be DNS-only (proxied: false)",
            None,
        )


def _resource_keys(resources: Any) -> Iterable[str]:
    """Leaf keys of a token policy's `resources` (a JSON string; an account key may nest a map)."""
    tree = json.loads(resources) if isinstance(resources, str) else resources
    if not isinstance(tree, Mapping):
        raise ValueError(f"resources is not a JSON object: {resources!r}")
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _resource_keys(value)
        else:
            yield key


def _r2_token_one_bucket(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in CLOUDFLARE_TOKENS:
        return
    buckets: set[str] = set()
    for policy in args.props.get("policies") or []:
        try:
            keys = list(_resource_keys(policy.get("resources")))
        except ValueError as err:
            report(f"token policy resources are not a JSON object: {err}", None)
            continue
        for key in keys:
            if "*" in key or not R2_BUCKET_KEY.match(key):
                report(
                    f"token resource {key!r} names no single R2 bucket",
                    None,
                )
            else:
                buckets.add(key)
    if len(buckets) != 1:
        report(f"the R2 token must name exactly one bucket, it names {len(buckets)}: {sorted(buckets)}", None)


def _droplet_in_vpc_monitored(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != DROPLET:
        return
    if not args.props.get("vpcUuid"):
        report("the droplet must sit in the owncr VPC (vpcUuid)", None)
    if args.props.get("monitoring") is not True:
        report("the droplet must run the DigitalOcean monitoring agent (monitoring: true)", None)


def _service_image_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != DOCKER_SERVICE:
        return
    image = ((args.props.get("taskSpec") or {}).get("containerSpec") or {}).get("image") or ""
    if not DIGEST_PINNED.search(image):
        report(f"service image {image!r} is not pinned by digest (<name>@sha256:<64 hex>)", None)


def _manager_quorum(args: StackValidationArgs, report: ReportViolation) -> None:
    droplets = [r for r in args.resources if r.resource_type == DROPLET]
    if not droplets:
        return  # the local platform deploys no droplets
    managers = [d for d in droplets if MANAGER_TAG in (d.props.get("tags") or [])]
    if len(managers) not in QUORUM_SIZES:
        report(
            f"{len(managers)} droplets tagged {MANAGER_TAG!r}; Raft quorum needs one of {QUORUM_SIZES}",
            None,
        )


def _resource_policy(
    name: str, description: str, validate: Callable[[ResourceValidationArgs, ReportViolation], None]
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES: list[Policy] = [
    _resource_policy(
        "no-world-admin-access",
        f"SSH (22) and the Docker API (2376) are not open to the world unless {PROJECT}:{WORLD_ACK_KEY}.",
        _no_world_admin_access,
    ),
    _resource_policy(
        "gateway-only-from-load-balancer",
        f"nginx's port {GATEWAY_PORT} on the nodes is reachable from the load balancer only.",
        _gateway_only_from_the_load_balancer,
    ),
    _resource_policy(
        "lb-https-redirect",
        "The load balancer serves HTTPS and redirects HTTP to HTTPS.",
        _lb_https_only,
    ),
    _resource_policy(
        "registry-dns-not-proxied",
        "Cloudflare DNS records of the registry are DNS-only (the proxy caps request bodies at 100 MB).",
        _dns_not_proxied,
    ),
    _resource_policy(
        "r2-token-one-bucket",
        "The Cloudflare token for R2 is scoped to exactly one bucket, no wildcard.",
        _r2_token_one_bucket,
    ),
    _resource_policy(
        "droplet-vpc-monitoring",
        "Droplets sit in the VPC and run the monitoring agent.",
        _droplet_in_vpc_monitored,
    ),
    _resource_policy(
        "service-image-digest",
        "Every Swarm service image is pinned by digest.",
        _service_image_pinned,
    ),
    StackValidationPolicy(
        name="swarm-manager-quorum",
        description=f"The number of droplets tagged {MANAGER_TAG} is one of {QUORUM_SIZES} (Raft quorum).",
        validate=_manager_quorum,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
