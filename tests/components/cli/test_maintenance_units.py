"""Cluster maintenance's plain functions (components/cli/maintenance.py, container_exec.py, the registry
API's byte transport and the filesystem reader): the maintenance registry's spec, the read-only switch,
settings and stack-output errors, exec stream framing. tests/services/test_swarm_maintenance.py runs the
whole on a real swarm; tests/gateway/upkeep/test_maintenance_s3.py the S3 reader on a real bucket."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from components.cli import maintenance
from components.cli.maintenance import HELPER_LABEL, helper_spec, is_read_only, with_read_only
from components.engine import container_exec
from components.plan import maintenance_access
from gateway.config import DEFAULT_CACHE_TTL
from gateway.render.registry_config import READ_ONLY_ENV
from gateway.upkeep.eviction import CachePolicy
from gateway.upkeep.maintenance import MaintenanceError
from gateway.upkeep.registry_api import parse_response, raw_request
from gateway.upkeep.retention import RetentionRule
from gateway.upkeep.store_readers import FilesReader

CONFIG = "/srv/owncr/secrets/private.yml"


def private_service(name: str = "owncr-dev-private") -> dict[str, Any]:
    """The parts of the Engine API's service object maintenance reads and copies."""
    return {
        "ID": "svc",
        "Version": {"Index": 7},
        "Spec": {
            "Name": name,
            "Labels": {"owncr.stack": "dev"},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "registry:3.1.1@sha256:" + "1" * 64,
                    "Command": ["sh", "/srv/owncr/config/drain.sh", "-", "TERM", "registry", "serve", CONFIG],
                    "Env": ["OWNCR_DRAIN_SECONDS=10"],
                    "Secrets": [{"SecretName": "owncr-dev-private-config-abc", "File": {"Name": CONFIG}}],
                },
                "Networks": [{"Target": "net", "Aliases": ["private"]}],
                "Placement": {},
                "RestartPolicy": {"Condition": "any"},
                "Resources": {"Limits": {"MemoryBytes": 1 << 30}},
            },
            "Mode": {"Replicated": {"Replicas": 2}},
            "EndpointSpec": {"Mode": "dnsrr"},
        },
    }


def test_the_maintenance_registry_is_the_private_task_alone_on_this_node_and_unreachable() -> None:
    private = private_service()
    spec = helper_spec(private, "node-1", read_only=False)
    task, original = spec["TaskTemplate"], private["Spec"]["TaskTemplate"]
    assert spec["Name"] == "owncr-dev-private-maintenance"
    assert spec["Labels"] == {HELPER_LABEL: "owncr-dev-private"}
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}} and "EndpointSpec" not in spec
    # Same image, config, secrets and limits; no overlay network (no alias nginx resolves), no port.
    assert "Networks" not in task
    container = task["ContainerSpec"]
    assert container["Image"] == original["ContainerSpec"]["Image"]
    assert container["Secrets"] == original["ContainerSpec"]["Secrets"]
    assert task["Resources"] == original["Resources"]
    assert container["Command"] == ["registry", "serve", CONFIG]  # no drain wrapper: nothing routes to it
    assert task["Placement"] == {"Constraints": ["node.id==node-1"]}  # where `docker exec` reaches it
    assert container["Env"] == ["OWNCR_DRAIN_SECONDS=10"]
    # The private service itself is untouched.
    assert private == private_service()
    # A dry run reads through a read-only one.
    dry = helper_spec(private, "node-1", read_only=True)["TaskTemplate"]["ContainerSpec"]["Env"]
    assert set(dry) == {"OWNCR_DRAIN_SECONDS=10", *(f"{k}={v}" for k, v in READ_ONLY_ENV.items())}


def test_helper_name_fits_swarms_limit() -> None:
    long = "owncr-" + "x" * 50 + "-private"
    name = helper_spec(private_service(long), "n", read_only=False)["Name"]
    assert len(name) <= 63 and name.endswith("-maintenance")


def test_a_private_service_without_registry_serve_is_refused() -> None:
    private = private_service()
    private["Spec"]["TaskTemplate"]["ContainerSpec"]["Command"] = ["nginx", "-g", "daemon off;"]
    with pytest.raises(MaintenanceError, match="does not run `registry serve CONFIG`"):
        helper_spec(private, "n", read_only=False)


def test_read_only_switch_changes_the_env_only_and_switches_back_to_the_same_spec() -> None:
    spec = private_service()["Spec"]
    read_only = with_read_only(spec, True)
    assert is_read_only(read_only) and not is_read_only(spec)
    env = read_only["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env[0] == "OWNCR_DRAIN_SECONDS=10" and len(env) == 1 + len(READ_ONLY_ENV)
    assert with_read_only(read_only, True) == read_only  # idempotent
    assert with_read_only(read_only, False) == spec  # what Pulumi deployed, byte for byte
    unchanged = {k: v for k, v in read_only.items() if k != "TaskTemplate"}
    assert unchanged == {k: v for k, v in spec.items() if k != "TaskTemplate"}


def test_read_only_env_is_what_distribution_reads_as_the_readonly_object() -> None:
    # `..._READONLY_ENABLED=true` makes Distribution 3.1.1 panic; the object spelling works
    # (tests/services/test_swarm_maintenance.py sees pushes refused with it).
    assert json.loads(READ_ONLY_ENV["REGISTRY_STORAGE_MAINTENANCE_READONLY"]) == {"enabled": True}
    headers = json.loads(READ_ONLY_ENV["REGISTRY_HTTP_HEADERS"])
    assert headers == {"X-Content-Type-Options": ["nosniff"], "X-Owncr-Read-Only": ["true"]}


def test_stack_output_round_trips_to_the_environment_main_reads() -> None:
    rules = (RetentionRule("acme", keep=3, protect=("v*",)), RetentionRule("ops", days=7))
    policy = CachePolicy.of("72h", 50)
    output = maintenance_access.access("dev", rules, "72h", 50, "tcp://203.0.113.5:2376", "CA", "CERT", "KEY")
    output = json.loads(json.dumps(output))  # as `pulumi stack output --json` gives it back
    env = maintenance_access.environment(output)
    assert env["OWNCR_DOCKER_HOST"] == "tcp://203.0.113.5:2376" and env["OWNCR_DOCKER_KEY_PEM"] == "KEY"
    assert maintenance_access.settings_from(env) == ("owncr-dev-private", rules, policy)
    assert policy == CachePolicy(72 * 3600, 50 * 1024**3)
    unbounded = CachePolicy.of("168h", None)
    local = maintenance_access.environment(
        maintenance_access.access("local", (), "168h", None, "unix:///var/run/docker.sock", None, None, None)
    )
    assert set(local) == {"OWNCR_DOCKER_HOST", "OWNCR_MAINTENANCE"}
    assert maintenance_access.settings_from(local)[2] == unbounded


def test_a_stack_output_from_before_eviction_gets_the_default_policy() -> None:
    older = {
        "docker_host": "unix:///var/run/docker.sock",
        "private_service": "owncr-local-private",
        "retention": [],
    }
    _, _, policy = maintenance_access.settings_from(maintenance_access.environment(older))
    assert policy == CachePolicy() == CachePolicy.of(DEFAULT_CACHE_TTL, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "OWNCR_MAINTENANCE: .*expected JSON"),
        ('{"retention": []}', "OWNCR_MAINTENANCE: 'private_service'"),
        ('{"private_service": "s", "retention": [{"namespace": "a", "keep": -1}]}', r"retention.a.keep = -1"),
        (
            '{"private_service": "s", "retention": [{"namespace": "a", "protect": ["v*"]}]}',
            "retention.a: set keep",
        ),
        ('{"private_service": "s", "cache_policy": {"budget_bytes": 1}}', "OWNCR_MAINTENANCE: 'ttl_seconds'"),
        ('{"private_service": "s", "cache_policy": {"ttl_seconds": 0}}', "ttl_seconds 0 must be at least 1"),
    ],
)
def test_bad_settings_are_refused_naming_what_to_fix(raw: str, message: str) -> None:
    with pytest.raises(MaintenanceError, match=message):
        maintenance_access.settings_from({"OWNCR_MAINTENANCE": raw})


def test_stack_output_errors_say_what_to_do() -> None:
    def failing(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            argv, 255, "", "error: current stack does not have output 'maintenance'"
        )

    with pytest.raises(MaintenanceError, match="run `pulumi up` once"):
        maintenance.stack_output("dev", run=failing)

    def missing(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(MaintenanceError, match="Pulumi CLI"):
        maintenance.stack_output("dev", run=missing)


def test_main_fails_with_the_reason_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.pop("OWNCR_MAINTENANCE", None)
    assert maintenance.main([]) == 1
    assert capsys.readouterr().err.startswith("maintenance: FAILED: OWNCR_MAINTENANCE")


# --- docker exec framing, the HTTP bytes carried through it ----------------------------------------------


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_exec_stream_is_split_into_stdout_and_stderr() -> None:
    stream = frame(1, b"out1 ") + frame(2, b"err") + frame(1, b"out2") + frame(1, b"")
    assert container_exec.demux(stream) == (b"out1 out2", b"err")


@pytest.mark.parametrize("cut", [3, 10, 14])
def test_a_cut_exec_stream_is_an_error_not_short_output(cut: int) -> None:
    stream = frame(1, b"0123456789")
    with pytest.raises(container_exec.ExecError, match="cut"):
        container_exec.demux(stream[:cut])


def test_http_through_a_pipe_request_and_chunked_answer() -> None:
    request = raw_request("DELETE", "/v2/acme/app/manifests/sha256:ab", {"Accept": "x"})
    assert request == (
        b"DELETE /v2/acme/app/manifests/sha256:ab HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Accept: x\r\n\r\n"
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'Link: </v2/_catalog?n=1&last=a>; rel="next"\r\n\r\n'
        b'5\r\n{"a":\r\n3\r\n[]}\r\n0\r\n\r\n'
    )
    status, headers, body = parse_response(answer, "GET")
    assert status == 200 and headers["link"].startswith("</v2/_catalog") and body == b'{"a":[]}'
    assert parse_response(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", "DELETE")[0] == 202


# --- the filesystem reader, with this machine's find and stat ------------------------------------------


def _touch(path: Path, size: int, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


def test_files_reader_reads_push_times_revisions_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "storage" / "private"
    repo = root / "docker/registry/v2/repositories/acme/app/_manifests"
    _touch(repo / "tags/v1/current/link", 71, 1_700_000_000)
    _touch(repo / "tags/v1/index/sha256/aa/link", 71, 1_600_000_000)  # history, not the tag's time
    _touch(repo / "tags/latest/current/link", 71, 1_700_000_100)
    _touch(repo / "revisions/sha256/aa/link", 71, 1)
    _touch(repo / "revisions/sha256/bb/link", 71, 1)
    (repo / "revisions/sha256/cc").mkdir()  # no link: not a revision
    _touch(root / "docker/registry/v2/blobs/sha256/aa/aa/data", 1000, 1)
    _touch(tmp_path / "storage/cache/docker.io/docker/registry/v2/blobs/x/data", 300, 1)

    def run(argv: list[str]) -> bytes:
        return subprocess.run(argv, capture_output=True, check=True).stdout

    reader = FilesReader(str(root), run)
    assert reader.tag_times("acme/app") == {
        "v1": datetime.fromtimestamp(1_700_000_000, UTC),
        "latest": datetime.fromtimestamp(1_700_000_100, UTC),
    }
    assert reader.revisions("acme/app") == {"sha256:aa", "sha256:bb"}
    assert reader.revisions("acme/none") == set() and reader.tag_times("acme/none") == {}
    assert reader.private_bytes() == 5 * 71 + 1000
    assert reader.cache_bytes() == {"docker.io": 300}


# --- when the window has begun ---------------------------------------------------------------------------


class FakeDocker:
    """The Engine API answers `_switching` reads: the service and its tasks (all, and up-to-date)."""

    def __init__(self, spec: dict[str, Any], tasks: list[tuple[str, str, bool]], update: str = "") -> None:
        self.service = {
            "Spec": spec,
            "Version": {"Index": 9},
            "UpdateStatus": {"State": update, "Message": "m"},
        }
        self.tasks = tasks  # (id, state, up to date)

    def call(self, method: str, path: str, body: object = None, ok: tuple[int, ...] = (200,)) -> Any:
        assert method == "GET"
        if path.startswith("/services/"):
            return self.service
        fresh = "_up-to-date" in urllib.parse.unquote(path)
        return [{"ID": i, "Status": {"State": st}} for i, st, cur in self.tasks if cur or not fresh]


def switching(docker: FakeDocker, read_only: bool) -> str:
    store = maintenance.SwarmStore(docker, "owncr-dev-private", (), dry_run=False, log=print)  # type: ignore[arg-type]
    return store._switching(read_only)


def test_the_window_begins_only_when_no_writable_task_runs_any_more() -> None:
    read_only = with_read_only(private_service()["Spec"], True)
    # Both replicas of the read-only spec run, but a replaced writable one still drains (running).
    draining = FakeDocker(
        read_only, [("a", "running", True), ("b", "running", True), ("old", "running", False)]
    )
    assert "1 of the old spec still running" in switching(draining, True)
    starting = FakeDocker(
        read_only, [("a", "running", True), ("b", "starting", True), ("old", "running", False)]
    )
    assert "1/2 replicas switched" in switching(starting, True)
    done = FakeDocker(read_only, [("a", "running", True), ("b", "running", True), ("old", "shutdown", False)])
    assert switching(done, True) == ""
    # The other way round, the same rule.
    assert "still running" in switching(FakeDocker(private_service()["Spec"], draining.tasks), False)


@pytest.mark.parametrize("update", ["rollback_started", "rollback_completed", "paused"])
def test_a_switch_swarm_rolled_back_or_paused_fails_the_run(update: str) -> None:
    read_only = with_read_only(private_service()["Spec"], True)
    with pytest.raises(MaintenanceError, match=f"the switch did not hold \\(update {update}"):
        switching(FakeDocker(read_only, [("a", "running", True)], update), True)


def test_a_spec_changed_under_the_run_fails_it() -> None:
    # Someone (a `pulumi up`) replaced the read-only spec with a writable one: no GC on it.
    writable = private_service()["Spec"]
    with pytest.raises(MaintenanceError, match="the switch did not hold"):
        switching(FakeDocker(writable, [("a", "running", True), ("b", "running", True)]), True)
