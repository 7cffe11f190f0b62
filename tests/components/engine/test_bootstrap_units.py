"""The bootstrap's parts that need no daemon: input parsing, API version choice, the dead-member rule,
and which requests are retried (a scripted transport stands in for the network)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from components.engine import api, bootstrap
from components.engine.api import ApiError, DockerApi, Node, negotiate_version
from components.engine.bootstrap import BootstrapConfig, BootstrapError, environment, is_dead

PEMS = {"ca_cert_pem": "CA", "client_cert_pem": "CERT", "client_key_pem": "KEY"}


def test_environment_round_trips_through_the_parser() -> None:
    env = environment(nodes=[("198.51.100.7", "10.20.0.2"), ("198.51.100.8", "10.20.0.3")], **PEMS)
    config = BootstrapConfig.from_environ(env)
    assert [(n.address, n.vpc_ip) for n in config.nodes] == [
        ("198.51.100.7", "10.20.0.2"),
        ("198.51.100.8", "10.20.0.3"),
    ]
    assert (config.ca_pem, config.cert_pem, config.key_pem) == ("CA", "CERT", "KEY")
    assert (config.port, config.api_timeout, config.settle_timeout) == (2376, 900.0, 120.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OWNCR_SWARM_NODES": "[]"}, "lists no node"),
        ({"OWNCR_SWARM_NODES": '[{"address": "1.2.3.4"}]'}, "JSON list"),
        ({"OWNCR_SWARM_NODES": "not json"}, "JSON list"),
        ({"OWNCR_DOCKER_KEY_PEM": ""}, "OWNCR_DOCKER_KEY_PEM is missing"),
        ({"OWNCR_SWARM_API_TIMEOUT": "soon"}, "bad numeric setting"),
    ],
)
def test_bad_input_is_a_clear_error(change: dict[str, str], message: str) -> None:
    env = environment(nodes=[("198.51.100.7", "10.20.0.2")], **PEMS) | change
    with pytest.raises(BootstrapError, match=message):
        BootstrapConfig.from_environ(env)


@pytest.mark.parametrize(
    ("server", "chosen"),
    [
        ({"ApiVersion": "1.51", "MinAPIVersion": "1.24"}, "1.51"),  # docker 28.5, as on the nodes
        ({"ApiVersion": "1.53", "MinAPIVersion": "1.44"}, "1.51"),  # newer engine, still accepts ours
        ({"ApiVersion": "1.55", "MinAPIVersion": "1.52"}, "1.52"),  # raised minimum: use it
        ({"ApiVersion": "1.41", "MinAPIVersion": "1.12"}, "1.41"),  # older engine (20.10): its newest
    ],
)
def test_api_version_negotiation(server: dict[str, str], chosen: str) -> None:
    assert negotiate_version(server) == chosen


@pytest.mark.parametrize(
    ("member", "dead"),
    [
        ({"Status": {"State": "ready"}, "ManagerStatus": {"Reachability": "reachable"}}, False),
        ({"Status": {"State": "ready"}}, False),  # a healthy worker
        ({"Status": {"State": "down"}, "ManagerStatus": {"Reachability": "unreachable"}}, True),
        ({"Status": {"State": "unknown"}, "ManagerStatus": {"Reachability": "unreachable"}}, True),
        ({"Status": {"State": "ready"}, "ManagerStatus": {"Reachability": "unreachable"}}, True),
        ({"Status": {"State": "down"}}, True),
    ],
)
def test_dead_member_rule(member: dict, dead: bool) -> None:
    assert is_dead(member) is dead


class ScriptedApi(DockerApi):
    """DockerApi whose transport answers from a script instead of the network."""

    def __init__(self, answers: list[object]) -> None:
        super().__init__(Node(address="198.51.100.7", vpc_ip="10.20.0.2"), 2376, ssl.create_default_context())
        self.version = "1.41"
        self.answers = answers
        self.sent: list[str] = []

    def raw(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        self.sent.append(f"{method} {path}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, tuple)
        return answer


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (api, bootstrap):  # the client's retries and the bootstrap's waits
        monkeypatch.setattr(module, "POLL_SECONDS", 0.0)


def test_gets_ride_out_a_leader_election_and_a_dropped_connection() -> None:
    api = ScriptedApi([(503, {"message": "no leader"}), ConnectionResetError(), (200, [{"ID": "n1"}])])
    assert api.call("GET", "/nodes") == [{"ID": "n1"}]
    assert len(api.sent) == 3


def test_gets_ride_out_docker_28s_leaderless_500_but_not_other_500s() -> None:
    leaderless = (500, {"message": "rpc error: code = Unknown desc = The swarm does not have a leader. ..."})
    api = ScriptedApi([leaderless, (200, {"ID": "s"})])
    assert api.call("GET", "/swarm") == {"ID": "s"}
    failing = ScriptedApi([(500, {"message": "something else broke"}), (200, {"ID": "s"})])
    with pytest.raises(ApiError, match="answered 500: something else broke"):
        failing.call("GET", "/swarm")
    assert len(failing.sent) == 1


def test_gets_give_up_after_bounded_attempts_with_the_daemons_message() -> None:
    leaderless = ScriptedApi([(503, {"message": "The swarm does not have a leader"})] * api.GET_ATTEMPTS)
    with pytest.raises(ApiError, match="answered 503: The swarm does not have a leader"):
        leaderless.call("GET", "/nodes")


def test_writes_are_never_retried() -> None:
    api = ScriptedApi([(503, {"message": "busy"}), (200, None)])
    with pytest.raises(ApiError, match="POST /swarm/join answered 503"):
        api.call("POST", "/swarm/join", {"JoinToken": "t"})
    assert api.sent == ["POST /v1.41/swarm/join"]
