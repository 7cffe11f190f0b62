"""What each committed stack deploys, held against a reviewed record: every resource's type, name,
parent, aliases and inputs. Every file the gateway renders is a Swarm config or secret of its own
(`<name>-<role>`, its bytes as input), so the record covers the production bundle file by file. A
change that alters none of these deploys nothing new; one that does shows, in the record's diff, which
resources and files a stack's next `pulumi up` would touch.

    OWNCR_SNAPSHOT_UPDATE=1 python -m pytest tests/components/test_snapshot.py   # rewrite the records

The records hold digests, not contents (secrets and whole files do not belong in a diff); the test's
failure names each resource and file that differs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

from tests.components.program_capture import Captured, run_capturing

RECORDS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("OWNCR_SNAPSHOT_UPDATE") == "1"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _key(resource: pulumi.Resource | None) -> str | None:
    if resource is None:
        return None
    return f"{resource.pulumi_resource_type}::{resource.pulumi_resource_name}"


def _alias(alias: object) -> str:
    if not isinstance(alias, pulumi.Alias):
        return str(alias)  # a URN
    parent = alias.parent if isinstance(alias.parent, pulumi.Resource) else None
    fields = {"name": alias.name, "type": alias.type_, "parent": _key(parent) or alias.parent}
    # Unset alias fields are `...` (inherit from the resource).
    return json.dumps({k: v for k, v in fields.items() if v not in (None, ...)}, sort_keys=True, default=str)


def _aliases(opts: pulumi.ResourceOptions) -> list[str]:
    return sorted(_alias(a) for a in (opts.aliases or []))


def snapshot(captured: Captured) -> dict[str, dict[str, Any]]:
    resources: dict[str, Any] = {}
    for (typ, name), inputs in sorted(captured.inputs.items()):
        opts = captured.options.get((typ, name)) or pulumi.ResourceOptions()
        resources[f"{typ}::{name}"] = {
            "parent": _key(opts.parent),
            "aliases": _aliases(opts),
            "inputs": _digest(inputs),
        }
    return {"resources": resources}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if key not in a:
                lines.append(f"{part}: added {key}")
            elif key not in b:
                lines.append(f"{part}: removed {key}")
            elif a[key] != b[key]:
                lines.append(f"{part}: changed {key}: {a[key]} -> {b[key]}")
    return lines


def test_stack_deploys_what_its_record_says(
    committed_stack: str, mock_session: Callable[..., Any], run_program: Callable[..., Any]
) -> None:
    captured = run_capturing(mock_session, run_program, committed_stack)
    got = snapshot(captured)
    record = RECORDS / f"{committed_stack}.json"
    if UPDATE:
        RECORDS.mkdir(exist_ok=True)
        record.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"{record} rewritten")
    want = json.loads(record.read_text(encoding="utf-8"))
    differences = _differences(want, got)
    assert not differences, (
        f"{committed_stack} deploys other resources or inputs than {record.name} records "
        "(rewrite it with OWNCR_SNAPSHOT_UPDATE=1 if the change is intended):\n" + "\n".join(differences)
    )
