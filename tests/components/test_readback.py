"""The drift check's promise: a `preview` right after `up` shows no change, for every committed stack.

Run 1 is the `up`: the mocks answer each registration with the state the provider would write back
(readback.py, cited to the providers' source). Run 2 is the next `preview`: the same program again. For
every resource and every field, run 2's inputs must equal run 1's state, except fields the program
tells Pulumi to ignore (`ignore_changes`, captured from each resource's options).
"""

from __future__ import annotations

import pytest

from tests.components import readback
from tests.components.program_capture import run_capturing


def perpetual_diffs(mock_session, run_program, stack: str) -> dict[str, list[str]]:
    up = run_capturing(mock_session, run_program, stack, state=readback.read_back)
    preview = run_capturing(mock_session, run_program, stack)
    assert set(up.inputs) == set(preview.inputs), "the second run registered other resources"
    found = {}
    for key, new in preview.inputs.items():
        state = readback.read_back(key[0], up.inputs[key])
        ignore = list(up.options[key].ignore_changes or [])
        paths = [
            readback.dotted(p) for p in readback.differences(state, new) if not readback.ignored(p, ignore)
        ]
        if paths:
            found[f"{key[0]} {key[1]}"] = paths
    return found


def test_preview_after_up_shows_no_change(committed_stack: str, mock_session, run_program) -> None:
    assert perpetual_diffs(mock_session, run_program, committed_stack) == {}


# ---- the model itself: each rule changes what the provider changes, and catches the old inputs --------


@pytest.mark.parametrize(
    ("written", "read"),
    [("120s", "2m"), ("60s", "1m"), ("45s", "45s"), ("90s", "1m30s"), ("1h", "1h"), ("3600s", "1h"),
     ("1h30m", "1h30m"), ("0s", "0s"), ("0", "0s"), ("500ms", "500ms"), ("2m", "2m")],
)  # fmt: skip
def test_durations_read_back_as_the_provider_formats_them(written: str, read: str) -> None:
    assert readback.short_dur(written) == read


SERVICE_BEFORE_THE_FIXES = {
    "taskSpec": {
        "containerSpec": {"stopGracePeriod": "120s"},
        "restartPolicy": {"delay": "5s", "window": "60s"},
    },
    "updateConfig": {"delay": "5s", "monitor": "30s", "maxFailureRatio": "0"},
}


def test_the_model_finds_the_diffs_the_old_service_inputs_had() -> None:
    state = readback.read_back("docker:index/service:Service", SERVICE_BEFORE_THE_FIXES)
    paths = {readback.dotted(p) for p in readback.differences(state, SERVICE_BEFORE_THE_FIXES)}
    assert paths == {
        "taskSpec.containerSpec.stopGracePeriod",
        "taskSpec.restartPolicy.window",
        "updateConfig.maxFailureRatio",
        "taskSpec.placement",  # platforms, filled in by the engine
    }
    ignored = [p for p in readback.differences(state, SERVICE_BEFORE_THE_FIXES)
               if readback.ignored(p, ["taskSpec.placement.platforms"])]  # fmt: skip
    assert ignored == []  # the whole placement block is new here: ignoring platforms is not enough


def test_the_model_finds_the_diffs_the_old_token_inputs_had() -> None:
    token = {
        "policies": [
            {
                "effect": "allow",
                "resources": '{"com.cloudflare.edge.r2.bucket.acct_default_b": "*"}',
                "permissionGroups": [{"id": "6a01"}, {"id": "2efd"}],
            }
        ]
    }
    state = readback.read_back("cloudflare:index/apiToken:ApiToken", token)
    assert {readback.dotted(p) for p in readback.differences(state, token)} == {
        "policies[0].resources",
        "policies[0].permissionGroups[0].id",
        "policies[0].permissionGroups[1].id",
    }
