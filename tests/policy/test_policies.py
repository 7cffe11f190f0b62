"""Each owncr policy, called offline with constructed arguments: one passing and one failing case at least."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi.runtime
import pytest
from pulumi_policy import EnforcementLevel

from policy.policies import (
    CLOUDFLARE_DNS_RECORDS,
    CLOUDFLARE_TOKENS,
    DOCKER_SERVICE,
    DROPLET,
    FIREWALL,
    LOAD_BALANCER,
    POLICIES,
    stack_flag,
)
from tests.policy.policy_args import policy_named, resource_args, stack_args, violations

ACCOUNT = "0123456789abcdef0123456789abcdef"
BUCKET_KEY = f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_default_owncr-dev"
DIGEST = "sha256:" + "ab" * 32


StackConfig = Callable[[dict[str, str]], None]


@pytest.fixture
def analyzer_config() -> Iterator[StackConfig]:
    """Sets the stack config the analyzer would load from PULUMI_CONFIG (empty at first); reset afterwards."""
    pulumi.runtime.set_all_config({})
    try:
        yield pulumi.runtime.set_all_config
    finally:
        pulumi.runtime.set_all_config({})


def firewall(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"name": "owncr-dev-nodes", "tags": ["owncr"], "inboundRules": list(rules)}


def tcp(port_range: str, *sources: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": "tcp", "portRange": port_range, "sourceAddresses": list(sources), **extra}


def check(policy: str, resource_type: str, props: dict[str, Any]) -> list[str]:
    return violations(policy_named(policy), resource_args(resource_type, props))


# --- no-world-admin-access -------------------------------------------------------------------------


@pytest.mark.usefixtures("analyzer_config")
def test_admin_ports_from_admin_cidrs_pass() -> None:
    props = firewall(
        tcp("22", "203.0.113.0/24"),
        tcp("2376", "203.0.113.7/32", "2001:db8::/32"),
        {"protocol": "udp", "portRange": "1-65535", "sourceAddresses": ["0.0.0.0/0"]},
    )
    assert check("no-world-admin-access", FIREWALL, props) == []


# --- gateway-only-from-load-balancer ------------------------------------------------------------------


def test_nginx_port_from_the_load_balancer_passes() -> None:
    props = firewall({"protocol": "tcp", "portRange": "8080", "sourceLoadBalancerUids": ["lb-uuid"]})
    assert check("gateway-only-from-load-balancer", FIREWALL, props) == []


@pytest.mark.parametrize(
    "rule",
    [tcp("8080", "0.0.0.0/0", "::/0"), tcp("8000-9000", "10.0.0.0/8"), tcp("all", "203.0.113.7/32")],
    ids=["world", "range-covering-8080", "all-ports"],
)
def test_nginx_port_open_to_addresses_fails(rule: dict[str, Any]) -> None:
    found = check("gateway-only-from-load-balancer", FIREWALL, firewall(rule))
    assert len(found) == 1 and "nginx (tcp/8080) is open to" in found[0], found


@pytest.mark.usefixtures("analyzer_config")
@pytest.mark.parametrize(
    ("rule", "opened"),
    [
        (tcp("22", "0.0.0.0/0"), ["SSH"]),
        (tcp("2376", "::/0"), ["Docker"]),
        (tcp("1-65535", "10.0.0.0/16", "::0/0"), ["SSH", "Docker"]),
        (tcp("all", "0.0.0.0/0"), ["SSH", "Docker"]),
    ],
)
def test_admin_ports_open_to_world_fail(rule: dict[str, Any], opened: list[str]) -> None:
    found = check("no-world-admin-access", FIREWALL, firewall(rule))
    assert len(found) == len(opened)
    for message, what in zip(found, opened, strict=True):
        assert what in message and "allowWorldAdminAccess" in message


@pytest.mark.usefixtures("analyzer_config")
def test_deny_rule_to_world_is_no_opening() -> None:
    assert check("no-world-admin-access", FIREWALL, firewall(tcp("22", "0.0.0.0/0", action="deny"))) == []


def test_world_admin_access_acknowledged_in_stack_config(analyzer_config: StackConfig) -> None:
    props = firewall(tcp("22", "0.0.0.0/0"), tcp("2376", "0.0.0.0/0", "::/0"))
    analyzer_config({"owncr:allowWorldAdminAccess": "false"})
    assert len(check("no-world-admin-access", FIREWALL, props)) == 2
    analyzer_config({"owncr:allowWorldAdminAccess": "true"})
    assert check("no-world-admin-access", FIREWALL, props) == []


def test_stack_flag_rejects_garbage(analyzer_config: StackConfig) -> None:
    assert stack_flag("allowWorldAdminAccess") is False
    analyzer_config({"owncr:allowWorldAdminAccess": "yes please"})
    with pytest.raises(ValueError, match="allowWorldAdminAccess"):
        stack_flag("allowWorldAdminAccess")


# --- lb-https-redirect ------------------------------------------------------------------------------

HTTPS_RULE = {"entryPort": 443, "entryProtocol": "https", "targetPort": 8080, "targetProtocol": "http"}
HTTP_RULE = {"entryPort": 80, "entryProtocol": "http", "targetPort": 8080, "targetProtocol": "http"}


def test_lb_https_with_redirect_passes() -> None:
    props = {"forwardingRules": [HTTPS_RULE, HTTP_RULE], "redirectHttpToHttps": True}
    assert check("lb-https-redirect", LOAD_BALANCER, props) == []


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"forwardingRules": [HTTP_RULE], "redirectHttpToHttps": True}, ["HTTPS forwarding rule"]),
        ({"forwardingRules": [HTTPS_RULE]}, ["redirect"]),
        ({"forwardingRules": [HTTPS_RULE], "redirectHttpToHttps": False}, ["redirect"]),
        ({}, ["HTTPS forwarding rule", "redirect"]),
    ],
)
def test_lb_without_https_or_redirect_fails(props: dict[str, Any], expected: list[str]) -> None:
    found = check("lb-https-redirect", LOAD_BALANCER, props)
    assert len(found) == len(expected)
    assert all(e in m for m, e in zip(found, expected, strict=True))


# --- registry-dns-not-proxied -----------------------------------------------------------------------


@pytest.mark.parametrize("typ", CLOUDFLARE_DNS_RECORDS)
@pytest.mark.parametrize("proxied", [{}, {"proxied": False}])
def test_dns_only_record_passes(typ: str, proxied: dict[str, Any]) -> None:
    props = {
        "zoneId": "z",
        "name": "cr",
        "type": "NS",
        "content": "ns1.digitalocean.com",
        "ttl": 1,
        **proxied,
    }
    assert check("registry-dns-not-proxied", typ, props) == []


@pytest.mark.parametrize("typ", CLOUDFLARE_DNS_RECORDS)
def test_proxied_record_fails(typ: str) -> None:
    props = {"zoneId": "z", "name": "cr", "type": "A", "content": "192.0.2.1", "ttl": 1, "proxied": True}
    [message] = check("registry-dns-not-proxied", typ, props)
    assert "'cr'" in message and "proxied: false" in message


def test_dns_policy_ignores_digitalocean_records() -> None:
    props = {"domain": "cr.example.com", "type": "A", "name": "@", "value": "192.0.2.1", "proxied": True}
    assert check("registry-dns-not-proxied", "digitalocean:index/dnsRecord:DnsRecord", props) == []


# --- r2-token-one-bucket ----------------------------------------------------------------------------


def token(*resources: Any) -> dict[str, Any]:
    return {
        "name": "owncr-dev-r2",
        "policies": [
            {"effect": "allow", "permissionGroups": [{"id": "g"}], "resources": json.dumps(r)}
            for r in resources
        ],
    }


@pytest.mark.parametrize("typ", CLOUDFLARE_TOKENS)
def test_token_scoped_to_one_bucket_passes(typ: str) -> None:
    props = token({BUCKET_KEY: "*"}, {BUCKET_KEY: "*"})  # read and write groups on the same bucket
    assert check("r2-token-one-bucket", typ, props) == []


@pytest.mark.parametrize("typ", CLOUDFLARE_TOKENS)
@pytest.mark.parametrize(
    "resources",
    [
        {"com.cloudflare.edge.r2.bucket.*": "*"},
        {f"com.cloudflare.api.account.{ACCOUNT}": "*"},
        {f"com.cloudflare.api.account.{ACCOUNT}": {"com.cloudflare.edge.r2.bucket.*": "*"}},
        {f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_default_*": "*"},
        {BUCKET_KEY: "*", f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_default_other": "*"},
    ],
)
def test_token_wider_than_one_bucket_fails(typ: str, resources: dict[str, Any]) -> None:
    assert check("r2-token-one-bucket", typ, token(resources))


def test_token_naming_two_buckets_across_policies_fails() -> None:
    other = f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_eu_other"
    [message] = check("r2-token-one-bucket", CLOUDFLARE_TOKENS[0], token({BUCKET_KEY: "*"}, {other: "*"}))
    assert "exactly one bucket" in message and "names 2" in message


def test_token_with_malformed_resources_fails() -> None:
    props = {
        "policies": [{"effect": "allow", "permissionGroups": [], "resources": '["not", "an", "object"]'}]
    }
    assert len(check("r2-token-one-bucket", CLOUDFLARE_TOKENS[1], props)) == 2


# --- droplet-vpc-monitoring -------------------------------------------------------------------------


def test_droplet_in_vpc_with_monitoring_passes() -> None:
    props = {"image": "ubuntu-24-04-x64", "size": "s-2vcpu-4gb", "vpcUuid": "vpc-1", "monitoring": True}
    assert check("droplet-vpc-monitoring", DROPLET, props) == []


@pytest.mark.parametrize(
    ("props", "count"),
    [
        ({"vpcUuid": "vpc-1"}, 1),
        ({"vpcUuid": "vpc-1", "monitoring": False}, 1),
        ({"monitoring": True}, 1),
        ({}, 2),
    ],
)
def test_droplet_outside_vpc_or_unmonitored_fails(props: dict[str, Any], count: int) -> None:
    assert len(check("droplet-vpc-monitoring", DROPLET, {"image": "i", "size": "s", **props})) == count


# --- service-image-digest ---------------------------------------------------------------------------


def service(image: str) -> dict[str, Any]:
    return {"name": "owncr-nginx", "taskSpec": {"containerSpec": {"image": image}}, "mode": {"global": True}}


@pytest.mark.parametrize("image", [f"nginx:1.27@{DIGEST}", f"registry@{DIGEST}", f"ghcr.io/a/b:3.0@{DIGEST}"])
def test_service_pinned_by_digest_passes(image: str) -> None:
    assert check("service-image-digest", DOCKER_SERVICE, service(image)) == []


@pytest.mark.parametrize(
    "image",
    ["nginx:1.27", "nginx:latest", "nginx@sha256:abc", f"nginx@{DIGEST.upper()}", f"nginx@{DIGEST}0", ""],
)
def test_service_not_pinned_fails(image: str) -> None:
    [message] = check("service-image-digest", DOCKER_SERVICE, service(image))
    assert "pinned by digest" in message


# --- swarm-manager-quorum ---------------------------------------------------------------------------


def droplets(count: int, tags: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (DROPLET, f"manager-{i}", {"tags": tags, "vpcUuid": "v", "monitoring": True}) for i in range(count)
    ]


MANAGER_TAGS = ["owncr", "env:dev", "role:manager"]


@pytest.mark.parametrize("count", [1, 3, 5])
def test_quorum_sizes_pass(count: int) -> None:
    assert violations(policy_named("swarm-manager-quorum"), stack_args(droplets(count, MANAGER_TAGS))) == []


def test_stack_without_droplets_is_not_checked() -> None:
    resources = [(DOCKER_SERVICE, "nginx", service(f"nginx@{DIGEST}"))]
    assert violations(policy_named("swarm-manager-quorum"), stack_args(resources)) == []


@pytest.mark.parametrize("count", [2, 4, 6])
def test_even_manager_counts_fail(count: int) -> None:
    [message] = violations(policy_named("swarm-manager-quorum"), stack_args(droplets(count, MANAGER_TAGS)))
    assert f"{count} droplets tagged 'role:manager'" in message


def test_untagged_droplets_are_no_managers() -> None:
    resources = droplets(3, ["owncr", "env:dev"])
    assert violations(policy_named("swarm-manager-quorum"), stack_args(resources))
    resources += droplets(1, MANAGER_TAGS)  # one manager plus three workers: quorum 1 is fine
    assert violations(policy_named("swarm-manager-quorum"), stack_args(resources)) == []


def test_every_policy_is_mandatory_and_has_a_test() -> None:
    names = {p.name for p in POLICIES}
    assert len(names) == len(POLICIES) == 8
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in POLICIES)
    source = Path(__file__).read_text(encoding="utf-8")
    assert all(f'"{name}"' in source for name in names)
