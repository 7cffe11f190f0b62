"""HAProxy (Debian's) as the stand-in for DigitalOcean's load balancer in front of the three nodes.

Configured from the same numbers `components/edge.py` gives DigitalOcean (components/plan/lb_health.py):
- TCP mode, round robin, PROXY protocol v1 to the nodes (`send-proxy`), as `enable_proxy_protocol`;
- health check `GET /healthz` on the node's 8080 through PROXY protocol (`check-send-proxy`), HTTP/1.1
  (what DigitalOcean's checks speak), success 200-399, every INTERVAL_SECONDS, RESPONSE_TIMEOUT_SECONDS
  to answer, UNHEALTHY_THRESHOLD failures to mark a node down and HEALTHY_THRESHOLD passes to mark it up;
- a failed connection to a node is NOT retried on another node (`retries 0`, no `option redispatch`):
  DigitalOcean documents that it sends traffic only to nodes that pass their checks and removes failing
  ones from rotation (docs.digitalocean.com/products/networking/load-balancers/, "Health Check"), and
  documents no retry of a failed connection on another Droplet. Assuming none makes the node-loss
  window measured here an upper bound; a retrying balancer could only shorten it.
- the connect timeout to a node is RESPONSE_TIMEOUT_SECONDS (DigitalOcean's is not documented): a dead
  node (no RST, its link is down) costs a client that long before it sees the failure.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.plan import lb_health

HAPROXY = "haproxy"
LOG_TAG = "owncr-lb"


@dataclass(frozen=True)
class Route:
    """One connection as the load balancer logged it."""

    port: int  # the client's
    server: str  # the node it was sent to ("<NOSRV>": none)
    accepted: float  # epoch seconds
    state: str  # HAProxy's termination state ("--": normal; "sC": the node never answered the connect)


def config(listen: tuple[str, int], nodes: list[tuple[str, str]], port: int, stats_socket: Path) -> str:
    """haproxy.cfg: `nodes` are (name, address) pairs, `port` the nodes' gateway port."""
    interval = lb_health.INTERVAL_SECONDS
    timeout = lb_health.RESPONSE_TIMEOUT_SECONDS
    servers = "\n".join(f"    server {name} {address}:{port}" for name, address in nodes)
    down, up = lb_health.UNHEALTHY_THRESHOLD, lb_health.HEALTHY_THRESHOLD
    return f"""global
    log stdout format raw local0 info
    stats socket {stats_socket} mode 600 level admin
    maxconn 2000

defaults
    mode tcp
    log global
    # One line per connection (at its end): the client's port, the node it went to, the accept time.
    # The drill routes each of its requests by it (routes()): which node answered, or failed to.
    log-format "{LOG_TAG} %cp %s %Ts.%ms %ts"
    timeout connect {timeout}s
    timeout client 900s
    timeout server 900s
    timeout check {timeout}s
    retries 0

frontend doors
    bind {listen[0]}:{listen[1]}
    default_backend nodes

backend nodes
    balance roundrobin
    option log-health-checks
    option httpchk
    http-check send meth GET uri {lb_health.HEALTH_PATH} ver HTTP/1.1 hdr Host load-balancer
    http-check expect status 200-399
    default-server check send-proxy check-send-proxy inter {interval}s fall {down} rise {up}
{servers}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoadBalancer:
    directory: Path
    nodes: list[tuple[str, str]]
    node_port: int
    address: tuple[str, int] = ("127.0.0.1", 0)
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def start(self) -> None:
        binary = shutil.which(HAPROXY) or "/usr/sbin/haproxy"
        self.address = ("127.0.0.1", free_port())
        self.log = self.directory / "haproxy.log"
        cfg = self.directory / "haproxy.cfg"
        cfg.write_text(config(self.address, self.nodes, self.node_port, self.directory / "haproxy.sock"))
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config: {check.stdout}{check.stderr}")
        with self.log.open("ab") as out:
            # -db: foreground, no daemon; its own session so a Ctrl-C of the drill reaches only the drill.
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def routes(self) -> list[Route]:
        """Every connection logged so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) == 5 and fields[0] == LOG_TAG:
                found.append(Route(int(fields[1]), fields[2], float(fields[3]), fields[4]))
        return found

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's status (UP, DOWN, "UP 1/3", ...), read from its stats socket."""
        out = self._command("show stat")
        lines = [line.split(",") for line in out.splitlines() if line and not line.startswith("#")]
        return {cols[1]: cols[17] for cols in lines if cols[0] == "nodes" and cols[1] not in ("BACKEND",)}

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.directory / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def wait_states(self, wanted: dict[str, str], timeout: float) -> float:
        """Wait until every named server has the wanted status; returns the seconds it took."""
        start = time.monotonic()
        last: dict[str, str] = {}
        while time.monotonic() - start < timeout:
            with contextlib.suppress(OSError):
                last = self.states()
                if all(last.get(name) == state for name, state in wanted.items()):
                    return time.monotonic() - start
            time.sleep(0.5)
        raise TimeoutError(f"load balancer states {last}, wanted {wanted} within {timeout}s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
