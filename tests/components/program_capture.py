"""One run of the program under mocks that also captures every resource's options and raw arguments
(through a stack transformation, which sees them before they reach the engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

Key = tuple[str, str]  # (type, logical name)


def plain(value: Any) -> Any:
    """A recorded input with every secret wrapper removed."""
    if is_rpc_secret(value):
        return plain(unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@dataclass
class Captured:
    inputs: dict[Key, dict[str, Any]] = field(default_factory=dict)  # what the engine received (plain)
    options: dict[Key, pulumi.ResourceOptions] = field(default_factory=dict)
    props: dict[Key, dict[str, Any]] = field(default_factory=dict)  # arguments, Outputs unresolved
    dependencies: dict[Key, set[Key]] = field(
        default_factory=dict
    )  # resources an argument's Outputs came from

    def keys(self, typ: str) -> list[Key]:
        return sorted(k for k in self.inputs if k[0] == typ)


def _outputs(value: Any) -> Iterator[pulumi.Output[Any]]:
    if isinstance(value, pulumi.Output):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _outputs(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _outputs(v)


def run_capturing(
    mock_session: Callable[[], AbstractContextManager[Any]],
    run_program: Callable[..., Any],
    stack: str,
    *,
    state: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
    overrides: dict[str, object] | None = None,
) -> Captured:
    """Run `stack`; `state(type, inputs)`, when given, is what the mocks answer each registration with
    (plus the usual computed outputs), i.e. the state a provider would write back."""
    captured = Captured()
    pending: list[tuple[Key, pulumi.Output[Any]]] = []
    with mock_session() as recording:
        if state is not None:
            echo = recording.new_resource

            def new_resource(args: Any) -> tuple[str | None, dict[str, Any]]:
                rid, outputs = echo(args)
                return rid, {**outputs, **state(args.typ, plain(dict(args.inputs)))}

            recording.new_resource = new_resource

        def capture(args: pulumi.ResourceTransformationArgs) -> None:
            key = (args.type_, args.name)
            captured.options[key] = args.opts
            captured.props[key] = dict(args.props)
            pending.extend((key, out) for out in _outputs(args.props))

        pulumi.runtime.register_stack_transformation(capture)

        async def settle(run: Any) -> None:
            for out in run.outputs.values():
                await out.future()
            for key, out in pending:
                for resource in await out.resources():
                    dep = (resource.pulumi_resource_type, resource.pulumi_resource_name)
                    captured.dependencies.setdefault(key, set()).add(dep)

        @pulumi.runtime.test
        def body():
            return settle(run_program(stack, overrides))

        _ = body()  # runs the program and waits for every registration
        for r in recording.resources:
            captured.inputs[(r.typ, r.name)] = plain(dict(r.inputs))
    return captured
