"""components/engine/rollout.py's decisions on Engine API answers (the real swarm runs it in
tests/services/test_swarm_services.py)."""

from __future__ import annotations

import pytest

from components.engine import rollout
from components.engine.rollout import RolloutError, api_from, service_state

SPEC = {"Mode": {"Replicated": {"Replicas": 2}}}


def service(status: dict[str, str] | None) -> dict[str, object]:
    out: dict[str, object] = {"Spec": SPEC}
    if status is not None:
        out["UpdateStatus"] = status
    return out


@pytest.mark.parametrize(
    ("status", "running", "state"),
    [
        (None, 2, "done"),  # created, never updated: all replicas run the current spec
        (None, 1, "waiting"),
        ({"State": "updating", "Message": "update in progress"}, 2, "waiting"),
        ({"State": "completed", "CompletedAt": "2026-11-29T10:00:40Z"}, 2, "done"),
        # The previous update's "completed", before Swarm started this one: no task of the new spec yet.
        ({"State": "completed", "CompletedAt": "2026-11-29T09:00:00Z"}, 0, "waiting"),
        ({"State": "rollback_started", "Message": "update rolled back due to failure"}, 2, "waiting"),
        ({"State": "rollback_completed", "Message": "rollback completed"}, 2, "failed"),
        ({"State": "paused", "Message": "update paused due to failure"}, 2, "failed"),
        ({"State": "rollback_paused", "Message": "x"}, 2, "failed"),
    ],
)
def test_service_states(status: dict[str, str] | None, running: int, state: str) -> None:
    assert service_state(service(status), running)[0] == state


def test_a_rollback_names_swarms_message() -> None:
    status = {"State": "rollback_completed", "Message": "rollback completed: task exited with 1"}
    assert service_state(service(status), 2) == (
        "failed",
        "Swarm rolled the update back: rollback completed: task exited with 1",
    )


class Scripted:
    def __init__(self, answers: list[tuple[dict[str, object], int]]) -> None:
        self.answers = answers
        self.calls = 0

    def call(self, method: str, path: str) -> object:
        svc, running = self.answers[min(self.calls // 2, len(self.answers) - 1)]
        self.calls += 1
        if path.startswith("/services/"):
            return svc
        return [{"Status": {"State": "running"}}] * running


def test_waits_through_an_update_then_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.engine_api, "POLL_SECONDS", 0.0)
    api = Scripted(
        [
            (service({"State": "updating", "Message": "m"}), 2),
            (service({"State": "updating", "Message": "m"}), 2),
            (service({"State": "completed", "CompletedAt": "2026-11-29T10:01:00Z"}), 2),
        ]
    )
    logged: list[str] = []
    rollout.wait_for_rollout(api, ["owncr-x-nginx"], 10, logged.append)  # type: ignore[arg-type]
    assert api.calls == 6
    assert logged == ["owncr-x-nginx: rolled out (2/2 tasks of the current spec running)"]


def test_gives_up_at_the_timeout_naming_what_it_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.engine_api, "POLL_SECONDS", 0.01)
    api = Scripted([(service({"State": "updating", "Message": "update in progress"}), 2)])
    with pytest.raises(RolloutError, match=r"timed out after 0s waiting for owncr-x-nginx \(updating"):
        rollout.wait_for_rollout(api, ["owncr-x-nginx"], 0.05, lambda _: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OWNCR_DOCKER_HOST": "ssh://root@x"}, "tcp://HOST:PORT or unix://PATH"),
        ({"OWNCR_DOCKER_HOST": "tcp://203.0.113.7:2376"}, "OWNCR_DOCKER_CA_PEM, OWNCR_DOCKER_CERT_PEM"),
    ],
)
def test_bad_connection_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(RolloutError, match=message):
        api_from(env)


def test_a_unix_socket_needs_no_certificates() -> None:
    assert (
        api_from({"OWNCR_DOCKER_HOST": "unix:///var/run/docker.sock"}).name == "unix:///var/run/docker.sock"
    )
