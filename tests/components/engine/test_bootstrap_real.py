"""The Swarm bootstrap against three real dockerd (Debian's docker.io) in network namespaces.

It runs exactly what SwarmCluster's local.Command runs (`BOOTSTRAP_COMMAND` with the environment built
by `bootstrap.environment()`), over mutual TLS, and checks: three managers form advertising their VPC
addresses; a second run changes nothing; a replaced node (empty Docker state, also node 0, the one that
initialised the swarm) rejoins the same swarm, its dead predecessor is removed, the other members keep
their IDs and the quorum holds. Negative cases: a client certificate from another CA, a server
certificate that does not name the dialled address, and an unreachable node all fail with a clear
message and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.plan.cloud_init import daemon_config
from gateway.local.binaries import default_docker, default_dockerd
from tests.components.engine.swarm_pki import TestCa
from tests.components.engine.swarm_sandbox import Sandbox, SandboxNode, bootstrap, free_prefix

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts dockerd in network namespaces (root)"),
    pytest.mark.skipif(
        not all(
            shutil.which(tool)
            for tool in (default_dockerd(), default_docker(), "nsenter", "ip", "iptables", "python3")
        ),
        reason="needs dockerd, docker, nsenter, ip, iptables and python3",
    ),
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="owncr-swarm-"))
    ca = TestCa()
    box = Sandbox(
        root=root,
        ca=ca,
        client=ca.issue("deployer", server=False),
        tag=str(os.getpid() % 100000),
        prefix=free_prefix(),
    )
    try:
        box.setup(3)
        yield box
    finally:
        box.teardown()
        shutil.rmtree(root, ignore_errors=True)


def members(node: SandboxNode) -> dict[str, dict]:
    ids = node.docker("node", "ls", "-q").split()
    return {m["ID"]: m for m in json.loads(node.docker("node", "inspect", *ids))}


def assert_healthy_swarm(box: Sandbox) -> dict[str, str]:
    """Every node an active manager of one swarm, advertising its VPC address; returns vpc ip -> node id."""
    infos = [node.swarm_info() for node in box.nodes]
    assert {info["LocalNodeState"] for info in infos} == {"active"}
    assert all(info["ControlAvailable"] for info in infos)
    assert len({info["Cluster"]["ID"] for info in infos}) == 1
    listed = members(box.nodes[0])
    assert set(listed) == {info["NodeID"] for info in infos}, "a stale member is still listed"
    for node, info in zip(box.nodes, infos, strict=True):
        member = listed[info["NodeID"]]
        assert member["Spec"]["Role"] == "manager"
        assert member["Status"]["State"] == "ready"
        assert member["ManagerStatus"]["Reachability"] == "reachable"
        assert member["ManagerStatus"]["Addr"] == f"{node.vpc_ip}:2377"
    return {node.vpc_ip: info["NodeID"] for node, info in zip(box.nodes, infos, strict=True)}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The run succeeded; returns everything it printed (stdout and stderr)."""
    print(result.stdout, result.stderr)
    assert result.returncode == 0, f"bootstrap failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The run failed cleanly: exit 1, one FAILED line on stderr, no traceback; returns stderr."""
    print(result.stdout, result.stderr)
    assert result.returncode == 1
    assert "swarm-bootstrap: FAILED:" in result.stderr and "Traceback" not in result.stderr
    return result.stderr


def test_forms_is_idempotent_and_repairs_replaced_nodes(sandbox: Sandbox) -> None:
    assert {n.swarm_info()["LocalNodeState"] for n in sandbox.nodes} == {"inactive"}

    out = ok(bootstrap(sandbox))
    assert "initialised a new swarm" in out and out.count("joined") == 2
    ids = assert_healthy_swarm(sandbox)
    cluster = sandbox.nodes[0].swarm_info()["Cluster"]["ID"]
    secret = sandbox.nodes[0].docker("swarm", "join-token", "-q", "manager").strip()
    assert secret.startswith("SWMTKN-") and secret not in out

    again = ok(bootstrap(sandbox))
    assert "no changes" in again and "joined" not in again and "removed" not in again
    assert assert_healthy_swarm(sandbox) == ids

    for victim in (sandbox.nodes[2], sandbox.nodes[0]):
        old_id = ids[victim.vpc_ip]
        sandbox.replace(victim)
        assert victim.swarm_info()["LocalNodeState"] == "inactive"
        out = ok(bootstrap(sandbox))
        assert "initialised" not in out, "a replaced node must join the existing swarm, not start one"
        assert f"removed dead member {old_id}" in out
        new_ids = assert_healthy_swarm(sandbox)
        assert new_ids[victim.vpc_ip] != old_id
        untouched = {ip: i for ip, i in ids.items() if ip != victim.vpc_ip}
        assert {ip: new_ids[ip] for ip in untouched} == untouched
        assert sandbox.nodes[0].swarm_info()["Cluster"]["ID"] == cluster
        ids = new_ids

    assert "no changes" in ok(bootstrap(sandbox))


def test_leaves_a_healthy_member_that_is_not_listed_alone(sandbox: Sandbox) -> None:
    ok(bootstrap(sandbox))  # a no-op after the test above; forms the swarm when run alone
    before = assert_healthy_swarm(sandbox)
    listed = [(n.public_ip, n.vpc_ip) for n in sandbox.nodes[:2]]
    out = ok(bootstrap(sandbox, nodes=listed, settle_timeout=4))
    assert "leaving" in out and sandbox.nodes[2].vpc_ip in out and "removed" not in out
    assert assert_healthy_swarm(sandbox) == before


def test_rejects_a_client_certificate_from_another_ca(sandbox: Sandbox) -> None:
    stranger = TestCa("someone else's CA").issue("intruder", server=False)
    error = failed(bootstrap(sandbox, client=stranger, api_timeout=6))
    assert "client certificate rejected" in error


def test_rejects_a_server_certificate_for_another_address(sandbox: Sandbox) -> None:
    # Dial node 0 by its VPC address: its certificate names only the public one (no TOFU, no fallback).
    nodes = [(n.vpc_ip if n.index == 0 else n.public_ip, n.vpc_ip) for n in sandbox.nodes]
    error = failed(bootstrap(sandbox, nodes=nodes, api_timeout=6))
    assert "server certificate rejected" in error and sandbox.nodes[0].vpc_ip in error


def test_rejects_a_server_signed_by_another_ca(sandbox: Sandbox) -> None:
    error = failed(bootstrap(sandbox, ca_pem=TestCa("other").cert_pem, api_timeout=6))
    assert "server certificate rejected" in error


def test_gives_up_on_an_unreachable_node_within_its_bound(sandbox: Sandbox) -> None:
    nodes = [(n.public_ip, n.vpc_ip) for n in sandbox.nodes] + [(f"{sandbox.prefix}.1.99", "10.0.0.99")]
    error = failed(bootstrap(sandbox, nodes=nodes, api_timeout=5))
    assert "timed out after 5s waiting for the Docker API" in error


def test_dockerd_refuses_dash_h_next_to_hosts_in_daemon_json(tmp_path: Path) -> None:
    """Why cloud-init ships the systemd drop-in: the stock `dockerd -H fd://` would not start."""
    config = daemon_config(tls_dir=str(tmp_path), hosts=(f"unix://{tmp_path}/a.sock",))
    (tmp_path / "daemon.json").write_text(json.dumps(config))
    result = subprocess.run(
        [
            "dockerd",
            f"--config-file={tmp_path / 'daemon.json'}",
            f"--data-root={tmp_path / 'data'}",
            f"--exec-root={tmp_path / 'exec'}",
            f"--pidfile={tmp_path / 'pid'}",
            f"-H=unix://{tmp_path}/b.sock",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "both as a flag and in the configuration file" in result.stderr and "hosts" in result.stderr
