"""Three `dockerd` in their own network namespaces, joined by a bridge: stand-ins for the droplets.

Each namespace has two addresses on one veth: a "public" one (what the deployer dials, like a reserved
IP) and a "vpc" one (what the swarm advertises), both private 10.x addresses that exist only inside
this sandbox; the host reaches them through the bridge. Every dockerd runs with the daemon.json that
cloud-init renders (components/cloud_init.daemon_config: TLS on tcp://0.0.0.0:2376, log rotation), its
own data-root, exec-root and unix socket.

What swarm needs in a namespace (found out here):
- `nsenter --net=...`, not `ip netns exec`: the latter remounts /sys in a new mount namespace, which
  hides the cgroup mounts and dockerd dies with "Devices cgroup isn't mounted";
- nothing else: no iptables (`--iptables=false --bridge=none` is enough for managers; overlay data
  traffic is not exercised) and not even loopback (measured: the test passes with `lo` down; it is
  brought up anyway, as on a real host);
- if the host's FORWARD policy is DROP while br_netfilter is loaded (a dockerd with iptables on does
  that), bridged namespace-to-namespace traffic is filtered, so the sandbox inserts an ACCEPT rule for
  its own bridge and removes it in teardown.
Teardown kills only the processes this sandbox started (by pid, plus any leftover whose command line
names the sandbox directory, e.g. a managed containerd), deletes namespaces, veths and the bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.engine.bootstrap import environment as bootstrap_environment
from components.plan.cloud_init import DOCKER_API_PORT, daemon_config, tls_paths
from components.swarm_cluster import BOOTSTRAP_COMMAND
from gateway.local.binaries import default_docker, default_dockerd
from tests import ROOT
from tests.components.engine.swarm_pki import KeyPair, TestCa

RUN_TIMEOUT = 150
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


def free_prefix() -> str:
    """A 10.x /16 no route on this machine touches (the sandbox must not shadow real networks)."""
    routes = run("ip", "-4", "route", "show", "table", "all").stdout
    taken = [ipaddress.ip_network(word, strict=False) for word in routes.split() if word[0].isdigit()]
    for second in range(200, 250):
        candidate = ipaddress.ip_network(f"10.{second}.0.0/16")
        if not any(candidate.overlaps(net) for net in taken):
            return f"10.{second}"
    raise RuntimeError("no free 10.x/16 for the swarm sandbox")


@dataclass
class SandboxNode:
    index: int
    netns: str
    public_ip: str
    vpc_ip: str
    directory: Path
    server: KeyPair
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.directory}/docker.sock"

    def docker(self, *args: str) -> str:
        return run(default_docker(), "-H", self.socket, *args).stdout

    def swarm_info(self) -> dict:
        return json.loads(self.docker("info", "--format", "{{json .Swarm}}"))


@dataclass
class Sandbox:
    root: Path
    ca: TestCa
    client: KeyPair
    tag: str
    prefix: str
    nodes: list[SandboxNode] = field(default_factory=list)
    forward_rule: tuple[str, ...] = ()

    @property
    def bridge(self) -> str:
        return f"owsb{self.tag}"

    def setup(self, count: int) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.prefix}.1.1/24", "dev", self.bridge)
        run("ip", "addr", "add", f"{self.prefix}.2.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        self.forward_rule = ("FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
        run("iptables", "-I", *self.forward_rule)
        for index in range(count):
            netns = f"owncr-sb{self.tag}-{index}"
            veth = f"owsb{self.tag}v{index}"
            public_ip, vpc_ip = f"{self.prefix}.1.{10 + index}", f"{self.prefix}.2.{10 + index}"
            run("ip", "netns", "add", netns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            for address in (public_ip, vpc_ip):
                run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", netns, "link", "set", "eth0", "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")
            directory = self.root / f"node{index}"
            server = self.ca.issue(
                f"manager-{index}", server=True, ips=(public_ip, "127.0.0.1"), dns=(netns,)
            )
            node = SandboxNode(index, netns, public_ip, vpc_ip, directory, server)
            self.nodes.append(node)
            self.start(node)
        for node in self.nodes:
            self.wait_started(node)

    def start(self, node: SandboxNode) -> None:
        tls_dir = node.directory / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        paths = tls_paths(str(tls_dir))
        Path(paths["tlscacert"]).write_text(self.ca.cert_pem)
        Path(paths["tlscert"]).write_text(node.server.cert_pem)
        Path(paths["tlskey"]).write_text(node.server.key_pem)
        os.chmod(paths["tlskey"], 0o600)
        config = daemon_config(tls_dir=str(tls_dir), hosts=(node.socket, f"tcp://0.0.0.0:{DOCKER_API_PORT}"))
        (node.directory / "daemon.json").write_text(json.dumps(config))
        log = (node.directory / "dockerd.log").open("ab")
        node.process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{node.netns}",
                default_dockerd(),
                f"--config-file={node.directory / 'daemon.json'}",
                f"--data-root={node.directory / 'data'}",
                f"--exec-root={node.directory / 'exec'}",
                f"--pidfile={node.directory / 'dockerd.pid'}",
                "--iptables=false",
                "--bridge=none",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_started(self, node: SandboxNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert node.process is not None
            if node.process.poll() is not None:
                raise RuntimeError(f"dockerd {node.index} exited: {self.log_tail(node)}")
            if run(default_docker(), "-H", node.socket, "version", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd {node.index} did not start in {START_TIMEOUT}s: {self.log_tail(node)}")

    def log_tail(self, node: SandboxNode) -> str:
        path = node.directory / "dockerd.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, node: SandboxNode) -> None:
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGTERM)
        try:
            node.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=STOP_TIMEOUT)
        node.process = None
        self.kill_leftovers(str(node.directory))

    def replace(self, node: SandboxNode) -> None:
        """What a droplet replacement looks like to the swarm: same addresses, empty Docker state."""
        self.stop(node)
        for sub in ("data", "exec"):
            shutil.rmtree(node.directory / sub, ignore_errors=True)
        self.start(node)
        self.wait_started(node)

    def kill_leftovers(self, marker: str) -> None:
        """Processes whose command line names our directory (a managed containerd): ours, by pid."""
        for _ in range(50):
            pids = []
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if marker in cmdline:
                    pids.append(int(proc.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def teardown(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.stop(node)
        self.kill_leftovers(str(self.root))
        for node in self.nodes:
            run("ip", "netns", "del", node.netns, check=False)
            run("ip", "link", "del", f"owsb{self.tag}v{node.index}", check=False)
        run("ip", "link", "del", self.bridge, check=False)
        if self.forward_rule:
            run("iptables", "-D", *self.forward_rule, check=False)


def bootstrap(
    box: Sandbox,
    *,
    ca_pem: str | None = None,
    client: KeyPair | None = None,
    nodes: list[tuple[str, str]] | None = None,
    api_timeout: int = 60,
    settle_timeout: int = 60,
) -> subprocess.CompletedProcess[str]:
    client = client or box.client
    env = bootstrap_environment(
        nodes=nodes or [(n.public_ip, n.vpc_ip) for n in box.nodes],
        ca_cert_pem=ca_pem or box.ca.cert_pem,
        client_cert_pem=client.cert_pem,
        client_key_pem=client.key_pem,
    )
    env |= {"OWNCR_SWARM_API_TIMEOUT": str(api_timeout), "OWNCR_SWARM_SETTLE_TIMEOUT": str(settle_timeout)}
    return subprocess.run(
        shlex.split(BOOTSTRAP_COMMAND),
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
