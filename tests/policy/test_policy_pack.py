"""The pack as the engine starts it: `python -u policy` (policy/__main__.py) serving the analyzer over gRPC.

Each test starts the real entry point in its own process group on a loopback port, talks to it the way
the engine does, and kills the group afterwards.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy.policies import FIREWALL, POLICIES
from tests import ROOT

START_TIMEOUT_S = 30
WORLD_SSH = {"inboundRules": [{"protocol": "tcp", "portRange": "22", "sourceAddresses": ["0.0.0.0/0"]}]}

Start = Callable[[dict[str, str]], analyzer_pb2_grpc.AnalyzerStub]


def _read_port(process: subprocess.Popen[bytes]) -> int:
    """The pack prints its port on the first stdout line; bounded wait."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            assert line, f"policy pack exited with {process.wait(timeout=5)}"
            return int(line)
    raise TimeoutError(f"policy pack printed no port within {START_TIMEOUT_S}s")


@pytest.fixture
def start_pack() -> Iterator[Start]:
    processes: list[subprocess.Popen[bytes]] = []
    channels: list[grpc.Channel] = []

    def start(extra_env: dict[str, str]) -> analyzer_pb2_grpc.AnalyzerStub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")} | extra_env
        process = subprocess.Popen(
            [sys.executable, "-u", "policy"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        processes.append(process)
        channel = grpc.insecure_channel(f"127.0.0.1:{_read_port(process)}")
        channels.append(channel)
        return analyzer_pb2_grpc.AnalyzerStub(channel)

    try:
        yield start
    finally:
        for channel in channels:
            channel.close()
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            assert process.stdout is not None
            process.stdout.close()


def _analyze(stub: analyzer_pb2_grpc.AnalyzerStub, typ: str, props: dict[str, Any]) -> list[Any]:
    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(
        type=typ, properties=properties, urn=f"urn:pulumi:dev::owncr::{typ}::fw"
    )
    return list(stub.Analyze(request, timeout=30).diagnostics)


def test_entry_point_serves_every_policy_as_mandatory(start_pack: Start) -> None:
    info = start_pack({}).GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    assert info.name == "owncr"
    assert sorted(p.name for p in info.policies) == sorted(p.name for p in POLICIES)
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def test_pack_process_reads_the_stack_config_from_pulumi_config(start_pack: Start) -> None:
    """The engine starts a Python pack with the stack config in PULUMI_CONFIG (constructEnv)."""
    plain = start_pack({"PULUMI_CONFIG": json.dumps({"owncr:region": "fra1"})})
    [diagnostic] = _analyze(plain, FIREWALL, WORLD_SSH)
    assert diagnostic.policyName == "no-world-admin-access"
    acknowledged = start_pack({"PULUMI_CONFIG": json.dumps({"owncr:allowWorldAdminAccess": "true"})})
    assert _analyze(acknowledged, FIREWALL, WORLD_SSH) == []
