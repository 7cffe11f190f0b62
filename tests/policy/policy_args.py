"""Builds pulumi_policy arguments the way the analyzer does, and runs one policy of the owncr pack offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy.policies import POLICIES


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )


def _urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:test::owncr::{resource_type}::{name}"


def resource_args(resource_type: str, props: Mapping[str, Any], name: str = "r") -> ResourceValidationArgs:
    return ResourceValidationArgs(resource_type, props, _urn(resource_type, name), name, _options(), None)


def stack_args(resources: Sequence[tuple[str, str, Mapping[str, Any]]]) -> StackValidationArgs:
    """`resources`: (type, name, wire-name props) triples."""
    return StackValidationArgs(
        [
            PolicyResource(typ, props, _urn(typ, name), name, _options(), None, None, [], {})
            for typ, name, props in resources
        ]
    )


def policy_named(name: str) -> Policy:
    return next(p for p in POLICIES if p.name == name)


def violations(policy: Policy, args: ResourceValidationArgs | StackValidationArgs) -> list[str]:
    """The messages `policy` reports for `args` (our validators are synchronous)."""
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    match policy, args:
        case ResourceValidationPolicy(), ResourceValidationArgs():
            result = policy.validate(args, report)
        case StackValidationPolicy(), StackValidationArgs():
            result = policy.validate(args, report)
        case _:
            raise TypeError(f"{policy.name} does not validate {type(args).__name__}")
    assert result is None
    return found


def all_violations(resources: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[str]:
    """All violations over one stack, as `pulumi preview --policy-pack` runs them."""
    found: list[str] = []
    for policy in POLICIES:
        if isinstance(policy, StackValidationPolicy):
            found += [f"{policy.name}: {m}" for m in violations(policy, stack_args(resources))]
            continue
        for typ, name, props in resources:
            found += [
                f"{policy.name} {name}: {m}" for m in violations(policy, resource_args(typ, props, name))
            ]
    return found
