"""The local runner: `python -m gateway run` prints its ready line and stops every child on SIGTERM and
SIGINT; missing binaries and failed starts give clear errors and leave no process behind; reads
survive a dead private replica."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local import binaries, procfs
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_ports
from gateway.local.runner import GatewayError, LocalGateway
from tests import ROOT
from tests.gateway.production_versions import assert_production, parse_ready
from tests.gateway.routing_fixtures import HTTP_SECRET, TinyImage, request

ALICE = ("alice", "alice-password")


def cli(data: Path, reg_port: int, mir_port: int, *args: str) -> list[str]:
    """`python -m gateway run` with the required arguments and `args` after them."""
    return [sys.executable, "-m", "gateway", "run", "--data", str(data), "--registry-port", str(reg_port),
            "--mirror-port", str(mir_port), *args]  # fmt: skip


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (every child's arguments name its data dir)."""
    found = []
    for pid, _, fields in procfs.stats():
        if pid != os.getpid() and fields[0] != "Z":
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if text in raw.replace(b"\0", b" ").decode(errors="replace"):
                found.append(pid)
    return found


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainRegistry]:
    registry = PlainRegistry(tmp_path_factory.mktemp("runner"), "upstream").start()
    try:
        yield registry
    finally:
        registry.stop()


def settings_for(tmp_path: Path, upstream: PlainRegistry, replicas: int = 1) -> GatewaySettings:
    return GatewaySettings(
        namespaces=("acme",),
        users=(User(ALICE[0], ALICE[1], push=("acme",)),),
        upstreams=(Upstream("docker.io", upstream.url),),
        storage=FilesystemStorage(str(tmp_path / "storage")),
        http_secret=HTTP_SECRET,
        private_replicas=replicas,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_ready_and_stops_everything(
    tmp_path: Path, upstream: PlainRegistry, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    reg_port, mir_port = free_ports(2)
    users = ("--user", "alice:alice-password", "--user", "bob:bob-password")
    argv = cli(data, reg_port, mir_port, "--upstream", upstream.url, "--upstream", f"ghcr.io={upstream.url}",
               "--namespace", "acme", "--namespace", "team", *users, "--private-replicas", "2")  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the runner's own startup timeout bounds this read
        urls, versions = parse_ready(line)
        metrics = urls.pop("metrics")
        assert urls == {"registry": f"http://127.0.0.1:{reg_port}", "mirror": f"http://127.0.0.1:{mir_port}"}
        assert_production(versions)  # the runner's defaults are the versions production runs
        # nginx, 2 private replicas, 2 caches, all children of this run.
        assert len(processes_mentioning(str(data))) >= 5
        assert request(f"http://127.0.0.1:{reg_port}/v2/", auth=("bob", "bob-password")).status == 200
        assert request(f"http://127.0.0.1:{mir_port}/v2/").status == 200
        assert request(f"{metrics}/metrics").status == 200  # on its own port, free when the doors' are
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert processes_mentioning(str(data)) == []


def test_cli_rejects_invalid_settings(tmp_path: Path) -> None:
    argv = cli(
        tmp_path,
        1,
        2,
        "--upstream",
        "http://127.0.0.1:9",
        "--namespace",
        "Bad",
        "--user",
        "alice:alice-password",
    )
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "namespace 'Bad'" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(("attr", "flag"), [("nginx_bin", "--nginx"), ("registry_bin", "--registry")])
def test_missing_binaries_name_the_flag_and_the_install_command(
    tmp_path: Path, upstream: PlainRegistry, attr: str, flag: str
) -> None:
    missing = f"/nonexistent/{attr}"
    gateway = LocalGateway(
        settings_for(tmp_path, upstream),
        data_dir=tmp_path / "data",
        registry_port=1,
        mirror_port=2,
        nginx_bin=missing if attr == "nginx_bin" else None,
        registry_bin=missing if attr == "registry_bin" else None,
    )
    with pytest.raises(
        GatewayError, match=f"^{flag} /nonexistent/{attr}: not found; run scripts/install-tools"
    ):
        gateway.start()
    assert gateway.processes == {}


def test_an_nginx_without_the_njs_module_is_refused_before_anything_starts(
    tmp_path: Path, upstream: PlainRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binaries, "NJS_MODULE", "/nonexistent/ngx_http_js_module.so")
    binaries.njs_version.cache_clear()
    gateway = LocalGateway(
        settings_for(tmp_path, upstream), data_dir=tmp_path / "data", registry_port=1, mirror_port=2
    )
    try:
        with pytest.raises(
            GatewayError, match=r"did not tell its njs version.*/nonexistent/ngx_http_js_module"
        ):
            gateway.start()
    finally:
        binaries.njs_version.cache_clear()
    assert gateway.processes == {}


def test_failed_start_names_the_process_and_stops_the_others(tmp_path: Path, upstream: PlainRegistry) -> None:
    reg_port, mir_port = free_ports(2)
    data = tmp_path / "data"
    with socket.create_server(("127.0.0.1", reg_port)):  # the registry door's port is taken
        gateway = LocalGateway(
            settings_for(tmp_path, upstream),
            data_dir=data,
            registry_port=reg_port,
            mirror_port=mir_port,
            startup_timeout=15,
        )
        with pytest.raises(GatewayError, match=r"(?s)nginx exited.*Address already in use"):
            gateway.start()
    assert processes_mentioning(str(data)) == []


def test_reads_survive_a_dead_private_replica(tmp_path: Path, upstream: PlainRegistry) -> None:
    reg_port, mir_port = free_ports(2)
    image = TinyImage.make("replicated")
    settings = settings_for(tmp_path, upstream, replicas=2)
    with LocalGateway(
        settings, data_dir=tmp_path / "data", registry_port=reg_port, mirror_port=mir_port
    ) as gw:
        image.push(gw.registry_url, "acme/app", "1", auth=ALICE)
        victim = gw.processes["private-2"]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        started = time.monotonic()
        statuses = [
            request(
                f"{gw.registry_url}/v2/acme/app/manifests/1",
                auth=ALICE,
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            ).status
            for _ in range(10)
        ]
        assert statuses == [200] * 10
        assert time.monotonic() - started < 10
        assert gw.dead() == ["private-2"]
