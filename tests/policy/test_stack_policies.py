"""The stacks the program builds (under the control-plane mocks) pass every policy of the pack.

Each recorded registration (type, name, wire-name inputs) is turned into policy arguments with
pulumi_policy's own `deserialize_properties` (what the analyzer does to the engine's request, secrets
unwrapped). The policies run with the stack's config installed in the runtime, as the analyzer installs
PULUMI_CONFIG (`@pulumi.runtime.test` runs the program in a copied context, so it is set again here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pulumi.runtime
import pytest
from pulumi_policy.deserialize import deserialize_properties

from policy.policies import (
    CLOUDFLARE_DNS_RECORDS,
    CLOUDFLARE_TOKENS,
    DOCKER_SERVICE,
    DROPLET,
    FIREWALL,
    LOAD_BALANCER,
    PROJECT,
    WORLD_ACK_KEY,
)
from tests import ROOT
from tests.policy.policy_args import all_violations

COMMITTED_STACKS = sorted(
    p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml")
)
ENVIRONMENT_STACKS = ("dev", "prod")  # what CI previews and deploys
Resources = list[tuple[str, str, Mapping[str, Any]]]


def build(mocks: Any, run_program: Callable[..., Any], stack: str, **overrides: object) -> Resources:
    """Runs the program for `stack`; returns what the engine would hand the analyzer, config installed."""
    config: dict[str, str] = {}

    @pulumi.runtime.test
    def program() -> None:
        config.update(run_program(stack, overrides or None).config)

    program()
    pulumi.runtime.set_all_config(config)  # the mocks fixture resets it
    return [(r.typ, r.name, deserialize_properties(dict(r.inputs))) for r in mocks.resources]


def count(resources: Resources, *types: str) -> int:
    return sum(1 for typ, _, _ in resources if typ in types)


@pytest.mark.parametrize("stack", COMMITTED_STACKS)
def test_committed_stack_passes_every_policy(mocks: Any, run_program: Callable[..., Any], stack: str) -> None:
    resources = build(mocks, run_program, stack)
    assert count(resources, DOCKER_SERVICE) >= 3
    if stack in ENVIRONMENT_STACKS:
        # Every resource policy had something to judge, so an empty violation list means something.
        assert count(resources, FIREWALL) >= 1
        assert count(resources, LOAD_BALANCER) == 1
        assert count(resources, DROPLET) in (1, 3, 5)
        assert count(resources, *CLOUDFLARE_DNS_RECORDS) >= 1
    assert all_violations(resources) == []


def test_environment_stacks_are_committed() -> None:
    assert set(ENVIRONMENT_STACKS) <= set(COMMITTED_STACKS)


def test_stack_with_r2_storage_has_a_one_bucket_token(mocks: Any, run_program: Callable[..., Any]) -> None:
    resources = build(mocks, run_program, "dev", storage="r2")
    assert count(resources, *CLOUDFLARE_TOKENS) == 1
    assert all_violations(resources) == []


def test_world_open_admin_ports_pass_only_with_the_acknowledgement(
    mocks: Any, run_program: Callable[..., Any]
) -> None:
    """What a CI-deployed stack does (adminCidrs 0.0.0.0/0); the same props fail once the flag is off."""
    resources = build(mocks, run_program, "dev", adminCidrs=["0.0.0.0/0", "::/0"], allowWorldAdminAccess=True)
    assert all_violations(resources) == []
    pulumi.runtime.set_config(f"{PROJECT}:{WORLD_ACK_KEY}", "false")
    found = all_violations(resources)
    assert found and all(v.startswith("no-world-admin-access") for v in found)
