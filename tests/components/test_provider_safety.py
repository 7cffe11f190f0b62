"""What the providers would do to a deployment beyond its inputs: replacements that collide, deletes
that reach other stacks, waits that time out, and environment variables that redirect the docker provider.
Each test names the provider behaviour it guards against (sources in tests/components/readback.py's docstring
and at each option in components/)."""

from __future__ import annotations

import pytest

import settings
from tests.components.program_capture import Captured, run_capturing

TAG = "digitalocean:index/tag:Tag"
ALERT = "digitalocean:index/monitorAlert:MonitorAlert"
CERTIFICATE = "digitalocean:index/certificate:Certificate"
BUCKET = "cloudflare:index/r2Bucket:R2Bucket"
SERVICE = "docker:index/service:Service"
NETWORK = "docker:index/network:Network"

_RUNS: dict[str, Captured] = {}


@pytest.fixture
def captured(mock_session, run_program):
    def run(stack: str) -> Captured:
        if stack not in _RUNS:
            _RUNS[stack] = run_capturing(mock_session, run_program, stack)
        return _RUNS[stack]

    return run


def test_only_the_stacks_own_tag_is_ever_deleted(captured) -> None:
    # (The mocks run every stack file as the stack "test".)
    run = captured("prod")
    tags = {run.inputs[k]["name"]: run.options[k] for k in run.keys(TAG)}
    assert set(tags) == {"owncr", "env:test", "role:manager", "owncr-test-node"}
    assert {name for name, opts in tags.items() if not opts.retain_on_delete} == {"owncr-test-node"}


def test_alerts_wait_for_the_tag_they_select(captured) -> None:
    run = captured("prod")
    (selector,) = [k for k in run.keys(TAG) if run.inputs[k]["name"] == "owncr-test-node"]
    alerts = run.keys(ALERT)
    assert alerts
    for alert in alerts:
        assert run.inputs[alert]["tags"] == ["owncr-test-node"]
        assert selector in run.dependencies.get(alert, set()), alert


def test_the_certificate_may_take_longer_than_the_providers_ten_minutes(captured) -> None:
    run = captured("prod")
    (cert,) = run.keys(CERTIFICATE)
    timeouts = run.options[cert].custom_timeouts
    assert timeouts is not None and timeouts.create is not None
    minutes = int(timeouts.create.removesuffix("m"))
    assert minutes >= 30


def test_a_jurisdiction_change_is_a_refused_replacement_not_a_broken_update(captured) -> None:
    run = captured("prod")
    (bucket,) = run.keys(BUCKET)
    opts = run.options[bucket]
    assert "jurisdiction" in (opts.replace_on_changes or [])
    assert opts.protect is True  # the replacement stops at `protect`, with Pulumi's own message


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_swarm_objects_whose_replacement_would_collide_go_first(captured, stack: str) -> None:
    run = captured(stack)
    services = run.keys(SERVICE)
    assert services
    for key in [*services, *run.keys(NETWORK)]:
        assert run.options[key].delete_before_replace is True, key
    for key in services:
        assert run.options[key].ignore_changes == ["taskSpec.placement.platforms"], key


@pytest.mark.parametrize("name", settings.DOCKER_PROVIDER_ENV)
def test_docker_variables_that_redirect_the_provider_are_refused(name: str) -> None:
    with pytest.raises(settings.DeployerEnvironmentError, match=rf"^{name} set .* `env -u {name} pulumi up`"):
        settings.check_deployer_environment({name: "x", "DOCKER_HOST": "tcp://elsewhere:2376"})


def test_harmless_docker_variables_pass() -> None:
    settings.check_deployer_environment({"DOCKER_HOST": "tcp://elsewhere:2376", "DOCKER_CONTEXT": ""})


def test_the_program_checks_the_environment_first(load_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", "/home/me/.docker/machine")
    with pytest.raises(settings.DeployerEnvironmentError, match="DOCKER_CERT_PATH"):
        load_settings("dev")


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_placement_preferences_are_ones_swarm_honours(captured, stack: str) -> None:
    """The provider passes each preference string verbatim as the spread descriptor, and swarmkit only
    spreads over node.labels.* / engine.labels.* (manager/scheduler/nodeset.go): "spread=node.id" or
    "node.id" would be accepted and silently ignored."""
    run = captured(stack)
    for key in run.keys(SERVICE):
        prefs = (run.inputs[key]["taskSpec"].get("placement") or {}).get("prefs") or []
        assert all(p.startswith(("node.labels.", "engine.labels.")) for p in prefs), (key, prefs)
