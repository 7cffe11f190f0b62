"""The drill's three-node cluster: production's services on three dockerd in network namespaces.

- nodes: tests/components/engine/swarm_sandbox.py (three dockerd, each in its own network namespace,
  joined by a bridge), formed into a swarm of three managers by the product's own bootstrap
  (components/engine/bootstrap.py);
- services: exactly what RegistryServices deploys for a cloud stack (gateway_wiring.cloud_build and
  cloud_plan: host-mode 8080 with PROXY protocol, filesystem storage bind-mounted from one host
  directory on every node, standing in for the NFS share or R2), turned into Engine API bodies the way
  pulumi-docker does (tests/services/swarm_apply.py, provider_expand.py);
- images: the stand-ins (tests/services/standin_images.py), loaded on every node.
Deviations, each forced by this machine: every service uses DNS round-robin endpoints (no IPVS in
this kernel, as in tests/services; the caches reach nginx's egress by its name); the nginx
PROXY-protocol trust range is the nodes' docker_gwbridge subnet, because a host-mode port here is
forwarded by docker-proxy (dockerd runs with --iptables=false) and connections arrive from that
bridge, not from the load balancer's address.
A Docker Hub stand-in (a registry behind a login that asks for a bearer token from its realm, as Docker
Hub does; both pinned to node 0, which the drill never kills, and up before the gateway) is the
upstream of the caches, which log in with the stack's dockerHubUsername/dockerHubToken.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import gateway_wiring
from components.plan import swarm_specs
from gateway import names
from gateway.render.bundle import Bundle
from settings import Images, Registry, Upstream, User
from tests.components.engine.swarm_pki import TestCa
from tests.components.engine.swarm_sandbox import Sandbox, SandboxNode, bootstrap, free_prefix, run
from tests.services import standin_images, swarm_apply, swarm_engine

STACK = "hadrill"
DOMAIN, MIRROR_DOMAIN = "cr.example.com", "mirror.cr.example.com"
UPSTREAM_ALIAS = "hub-standin"  # what the caches call: the login front, as Docker Hub asks for a token
UPSTREAM_BACKEND = "hub-registry"  # the registry behind it (the drill pushes fresh images straight there)
UPSTREAM_PORT = 5000
HUB_USER, HUB_TOKEN = "drill", "drill-hub-token"  # noqa: S105 - the stand-in's made-up login
HUB_BEARER = "drill-bearer-token"  # noqa: S105 - what the stand-in's realm hands out
# The login answers 401 to anything but its realm without a token: asking the realm (200 or 401 both say
# nginx runs; curl without -f) is its health check.
LOGIN_HEALTH = ["CMD", "curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{UPSTREAM_PORT}/token"]
PINNED = "example/{}@sha256:" + "0" * 64
NGINX_IMAGE = "owncr-standin/nginx:drill"
REGISTRY_IMAGES = ("owncr-standin/registry:drill", "owncr-standin/registry:drill-next")
USERS = ("alice", "bob")
UPSTREAM_CONFIG = (
    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n"
)
# Docker Hub's login, as a cache meets it: every request without the bearer token gets 401 and a
# `WWW-Authenticate: Bearer realm=...`; the realm gives the token for the account's Basic credentials
# (and a 401 for others); with the token, requests reach the registry. nginx, from the stand-in image.
_REALM = f'Bearer realm="http://{UPSTREAM_ALIAS}:{UPSTREAM_PORT}/token",service="hub"'
_BASIC = base64.b64encode(f"{HUB_USER}:{HUB_TOKEN}".encode()).decode()
UPSTREAM_LOGIN_CONF = f"""
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{}}
http {{
    access_log off;
    resolver 127.0.0.11 valid=5s ipv6=off;
    server {{
        listen {UPSTREAM_PORT};
        location = /token {{
            default_type application/json;
            if ($http_authorization != "Basic {_BASIC}") {{
                return 401 '{{"details":"incorrect username or password"}}';
            }}
            return 200 '{{"token":"{HUB_BEARER}","access_token":"{HUB_BEARER}"}}';
        }}
        location / {{
            if ($http_authorization != "Bearer {HUB_BEARER}") {{
                add_header WWW-Authenticate '{_REALM}' always;
                return 401 '{{"errors":[{{"code":"UNAUTHORIZED","message":"authentication required"}}]}}';
            }}
            set $backend {UPSTREAM_BACKEND}:{UPSTREAM_PORT};
            proxy_pass http://$backend;
            proxy_set_header Authorization "";
            proxy_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
"""


def registry() -> Registry:
    return Registry(
        namespaces=("acme",),
        users=tuple(User(name=u, pull=("acme",), push=("acme",)) for u in USERS),
        upstreams=(Upstream(host="docker.io", url=f"http://{UPSTREAM_ALIAS}:{UPSTREAM_PORT}"),),
        images=Images(nginx=PINNED.format("nginx"), registry=PINNED.format("registry")),
        private_replicas=2,
        cache_ttl="168h",
        # The load balancer's PROXY header carries the client's loopback address.
        mirror_client_cidrs=("127.0.0.0/8",),
        docker_hub_username=HUB_USER,
    )


def secret_values(passwords: dict[str, str]) -> dict[str, str]:
    values = {
        gateway_wiring.HTTP_SECRET: os.urandom(16).hex(),
        gateway_wiring.HTPASSWD_SALT_KEY: os.urandom(16).hex(),
        gateway_wiring.HUB_TOKEN: HUB_TOKEN,
    }
    return values | {gateway_wiring.password_key(u): p for u, p in passwords.items()}


@dataclass
class Cluster:
    box: Sandbox
    log: Callable[[str], None]
    storage: Path
    engines: list[swarm_engine.Engine] = field(default_factory=list)
    network: str = ""
    objects: dict[str, tuple[str, str]] = field(default_factory=dict)
    service_ids: dict[str, str] = field(default_factory=dict)  # Bundle key (and "upstream") -> id
    build: Callable[[dict[str, str]], Bundle] | None = None
    plan: swarm_specs.ServicePlan | None = None
    values: dict[str, str] = field(default_factory=dict)
    registry_image: str = REGISTRY_IMAGES[0]
    _node_ids: list[str] = field(default_factory=list)

    @property
    def engine(self) -> swarm_engine.Engine:
        """Node 0's engine: the drill never kills node 0, so the swarm is always driven through it."""
        return self.engines[0]

    @property
    def upstream_address(self) -> tuple[str, int]:
        return self.box.nodes[0].public_ip, UPSTREAM_PORT

    # -- building ------------------------------------------------------------------------------------

    def form(self) -> None:
        self.box.setup(3)
        done = bootstrap(self.box)
        if done.returncode != 0:
            raise RuntimeError(f"swarm bootstrap failed:\n{done.stdout}\n{done.stderr}")
        self.engines = [swarm_engine.Engine(str(n.directory / "docker.sock")) for n in self.box.nodes]
        for engine in self.engines:
            engine.negotiate()
        self.log("swarm of three managers formed by the bootstrap")
        nginx_tar = standin_images.rootfs_tar(standin_images.nginx_rootfs())
        registry_tar = standin_images.rootfs_tar(standin_images.registry_rootfs())
        for engine in self.engines:
            standin_images.docker_import(engine.cli, nginx_tar, NGINX_IMAGE, standin_images.NGINX_STOPSIGNAL)
            for ref in REGISTRY_IMAGES:
                standin_images.docker_import(engine.cli, registry_tar, ref)
        self.log("stand-in images loaded on every node")

    def deploy(self, passwords: dict[str, str]) -> Bundle:
        subnets = {e.get("/networks/docker_gwbridge")["IPAM"]["Config"][0]["Subnet"] for e in self.engines}
        if len(subnets) != 1:
            raise RuntimeError(f"the nodes' docker_gwbridge subnets differ: {subnets}")
        reg = registry()
        self.build = gateway_wiring.cloud_build(
            reg, domain=DOMAIN, mirror_domain=MIRROR_DOMAIN, vpc_cidr=subnets.pop(), s3=None
        )
        self.plan = gateway_wiring.cloud_plan(STACK, reg, node_count=3, nfs_mount_point=str(self.storage))
        self.values = secret_values(passwords)
        bundle = self.build(self.values)
        specs = swarm_specs.service_specs(bundle, self.plan)
        if not all(swarm_specs.is_pinned(s["image"]) for s in specs):
            raise RuntimeError("the production specs must pin their images")
        self.network = self.engine.post(
            "/networks/create", {"Name": f"owncr-{STACK}-net", "Driver": "overlay"}
        )["Id"]
        self._deploy_upstream(specs)
        self.objects = swarm_apply.create_objects(self.engine, STACK, bundle)
        for spec in specs:
            created = self.engine.post("/services/create", self._body(spec))
            self.service_ids[spec["key"]] = created["ID"]
        self.wait_converged(list(self.service_ids), timeout=240)
        self.log("services converged: " + ", ".join(sorted(self.service_ids)))
        return bundle

    def _body(self, spec: swarm_specs.ServiceSpec) -> dict[str, Any]:
        is_nginx = spec["key"] == names.NGINX_KEY
        body = swarm_apply.engine_service_spec(
            spec,
            self.objects,
            self.network,
            image=NGINX_IMAGE if is_nginx else self.registry_image,
        )
        return body

    def _deploy_upstream(self, specs: list[swarm_specs.ServiceSpec]) -> None:
        """The Docker Hub stand-in, on node 0 (never killed): a registry, and the login in front of it that
        the caches call. Up before the gateway starts, as the real upstream is."""
        template = next(s for s in specs if s["key"].startswith(names.CACHE_KEY_PREFIX))
        self._pinned_service(
            {
                **template,
                "key": "upstream",
                "name": f"owncr-{STACK}-upstream",
                "replicas": 1,
                "alias": UPSTREAM_BACKEND,
                "command": ["registry", "serve", "/etc/distribution/config.yml"],
                "configs": [{"object": "cfg", "target": "/etc/distribution/config.yml", "mode": 0o444}],
                "secrets": [],
                "mounts": [],
                "sysctls": {},
                "ports": [{"target": UPSTREAM_PORT, "published": UPSTREAM_PORT, "mode": "host"}],
            },
            UPSTREAM_CONFIG,
            self.registry_image,
        )
        self._pinned_service(
            {
                **template,
                "key": "upstream-login",
                "name": f"owncr-{STACK}-upstream-login",
                "replicas": 1,
                "alias": UPSTREAM_ALIAS,
                "command": ["nginx", "-c", "/etc/hub/nginx.conf", "-g", "daemon off;"],
                "configs": [{"object": "cfg", "target": "/etc/hub/nginx.conf", "mode": 0o444}],
                "secrets": [],
                "mounts": [],
                "sysctls": {},
                "ports": [],
                "healthcheck": {**template["healthcheck"], "test": LOGIN_HEALTH},
            },
            UPSTREAM_LOGIN_CONF,
            NGINX_IMAGE,
        )
        self.wait_converged(["upstream", "upstream-login"], timeout=120)

    def _pinned_service(self, spec: swarm_specs.ServiceSpec, config_text: str, image: str) -> None:
        name = spec["name"]
        data = base64.b64encode(config_text.encode()).decode()
        config = self.engine.post("/configs/create", {"Name": name, "Data": data})["ID"]
        body = swarm_apply.engine_service_spec(spec, {"cfg": (config, name)}, self.network, image=image)
        node0 = self.engine.get("/info")["Swarm"]["NodeID"]
        body["TaskTemplate"]["Placement"]["Constraints"] = [f"node.id=={node0}"]
        self.service_ids[spec["key"]] = self.engine.post("/services/create", body)["ID"]

    def converged(self, keys: list[str]) -> bool:
        """Each service runs its declared replicas, every task healthy, asked of the engine of the node
        the task runs on (swarm_engine.wait_converged knows one node only)."""
        engines = dict(zip(self.node_ids(), self.engines, strict=True))
        for key in keys:
            sid = self.service_ids[key]
            want = self.engine.get(f"/services/{sid}")["Spec"]["Mode"]["Replicated"]["Replicas"]
            tasks = swarm_engine.running_tasks(self.engine, sid, up_to_date=True)
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            if len(running) != want:
                return False
            for t in running:
                cid = t["Status"]["ContainerStatus"]["ContainerID"]
                health = engines[t["NodeID"]].get(f"/containers/{cid}/json")["State"].get("Health")
                if health is not None and health["Status"] != "healthy":
                    return False
        return True

    def wait_converged(self, keys: list[str], timeout: float) -> None:
        try:
            swarm_engine.wait_for("services", lambda: self.converged(keys), timeout, interval=1.0)
        except TimeoutError:
            logs = {k: swarm_engine.service_logs(self.engine, self.service_ids[k])[-800:] for k in keys}
            raise RuntimeError(f"services did not converge: {json.dumps(logs, indent=1)}") from None

    def task_nodes(self, key: str) -> list[str]:
        """Node ids of the service's running tasks."""
        tasks = swarm_engine.running_tasks(self.engine, self.service_ids[key])
        return [t["NodeID"] for t in tasks if t["Status"]["State"] == "running"]

    def node_ids(self) -> list[str]:
        """Swarm node id of each sandbox node (remembered: a dead node's engine cannot be asked)."""
        if not self._node_ids:
            self._node_ids = [e.get("/info")["Swarm"]["NodeID"] for e in self.engines]
        return self._node_ids

    def quorum(self) -> tuple[bool, str]:
        """Every node a ready, reachable manager (Raft needs 2 of 3; the drill wants all 3 back)."""
        nodes = self.engine.get("/nodes")
        states = [
            (n["Status"]["State"], (n.get("ManagerStatus") or {}).get("Reachability", "none")) for n in nodes
        ]
        ok = len(nodes) == 3 and all(s == ("ready", "reachable") for s in states)
        return ok, ", ".join(f"{s}/{r}" for s, r in states)

    def leader(self) -> str:
        """The Swarm node id of the Raft leader."""
        nodes = self.engine.get("/nodes")
        return next(n["ID"] for n in nodes if (n.get("ManagerStatus") or {}).get("Leader"))

    def lead_elsewhere(self, timeout: float = 120) -> None:
        """Move Raft leadership off node 0 (which the drill never kills): demote it, through another
        manager's API, until another leads, then promote it back and wait for three ready managers."""
        node0, via = self.node_ids()[0], self.engines[1]

        def set_role(role: str) -> None:
            # The node object moves on as it reports its status: a stale version is refused, read again.
            for attempt in range(10):
                node = via.get(f"/nodes/{node0}")
                spec = {**node["Spec"], "Role": role}
                try:
                    via.post(f"/nodes/{node0}/update?version={node['Version']['Index']}", spec)
                    return
                except swarm_engine.EngineError as err:
                    if "out of sequence" not in str(err) or attempt == 9:
                        raise
                    time.sleep(0.5)

        def led_by_another() -> bool:
            nodes = via.get("/nodes")
            return any((n.get("ManagerStatus") or {}).get("Leader") and n["ID"] != node0 for n in nodes)

        set_role("worker")
        deadline = time.monotonic() + timeout
        while not led_by_another():
            if time.monotonic() > deadline:
                raise TimeoutError("no other manager took the lead")
            time.sleep(0.5)
        set_role("manager")
        while True:  # node 0's API answers for the swarm again once it is a manager
            with contextlib.suppress(swarm_engine.EngineError):
                if self.quorum()[0]:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("node 0 did not rejoin as a ready, reachable manager")
            time.sleep(0.5)

    def declared_replicas(self) -> tuple[bool, str]:
        parts, ok = [], True
        for key, sid in sorted(self.service_ids.items()):
            want = self.engine.get(f"/services/{sid}")["Spec"]["Mode"]["Replicated"]["Replicas"]
            have = len(self.task_nodes(key))
            ok = ok and have == want
            parts.append(f"{key} {have}/{want}")
        return ok, ", ".join(parts)

    def errors(self) -> list[str]:
        """nginx's upstream errors and the caches' own errors, from every container on every live node
        (`docker service logs` would wait for the dead node's), to say why a request failed."""

        # nginx's error log lines (`<date> [error] <pid>#<tid>: *<connection> upstream timed out ...`) and
        # its slow requests (2 s or more: a door's, a cache's through the egress); a cache's errors, less
        # its tracing exporter's (nothing collects traces in the drill).
        def slow(line: str) -> bool:
            try:
                return float(line.rsplit('"seconds":', 1)[1].rstrip("}\n ")) >= 2
            except (IndexError, ValueError):
                return False

        def nginx(line: str) -> bool:
            return ("[error]" in line and "upstream" in line) or slow(line)

        wanted_lines = {names.NGINX_KEY: nginx}
        for key in self.service_ids:
            if key.startswith(names.CACHE_KEY_PREFIX):
                wanted_lines[key] = lambda line: "level=error" in line and "traces export" not in line
        lines: list[str] = []
        for key, wanted in wanted_lines.items():
            name = self.engine.get(f"/services/{self.service_ids[key]}")["Spec"]["Name"]
            label = json.dumps({"label": [f"com.docker.swarm.service.name={name}"]})
            for engine in self.engines:
                with contextlib.suppress(OSError, swarm_engine.EngineError, subprocess.TimeoutExpired):
                    for c in engine.get("/containers/json?all=1&filters=" + urllib.parse.quote(label)):
                        command = [*engine.cli, "logs", "--timestamps", c["Id"]]
                        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
                        text = out.stdout + out.stderr
                        lines += [f"{key}: {line}" for line in text.splitlines() if wanted(line)]
        return sorted(lines, key=lambda line: line.split(": ", 1)[1])

    # -- changing ------------------------------------------------------------------------------------

    def roll(
        self, key: str, *, values: dict[str, str] | None = None, registry_image: str | None = None
    ) -> None:
        """What `pulumi up` sends after a change: new objects for changed files, then the service update."""
        assert self.build is not None and self.plan is not None
        if values is not None:
            self.values = values
        if registry_image is not None:
            self.registry_image = registry_image
        bundle = self.build(self.values)
        self.objects = swarm_apply.create_objects(self.engine, STACK, bundle)
        spec = next(s for s in swarm_specs.service_specs(bundle, self.plan) if s["key"] == key)
        sid = self.service_ids[key]
        version = self.engine.get(f"/services/{sid}")["Version"]["Index"]
        self.engine.post(f"/services/{sid}/update?version={version}", self._body(spec))

    def wait_update(self, key: str, timeout: float) -> None:
        sid = self.service_ids[key]
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            status = self.engine.get(f"/services/{sid}").get("UpdateStatus") or {}
            state = status.get("State", "")
            if state == "completed":
                return
            if state.startswith("rollback") or state == "paused":
                raise RuntimeError(f"{key}: update {state}: {status.get('Message')}")
            time.sleep(1)
        raise TimeoutError(f"{key}: update still {state!r} after {timeout}s")

    def kill(self, node: SandboxNode) -> float:
        """A hard node loss: its link goes down, then its dockerd, containerd, docker-proxy and every
        container process die by SIGKILL at once (no stop signal, no drain). Returns when the node died
        to the others (its link down, monotonic seconds)."""
        engine = self.engines[node.index]
        pids: list[int] = []
        with contextlib.suppress(OSError, swarm_engine.EngineError):  # a node already dead has none
            for c in engine.get("/containers/json"):
                pids.append(engine.get(f"/containers/{c['Id']}/json")["State"]["Pid"])
        run("ip", "link", "set", f"owsb{self.box.tag}v{node.index}", "down")
        died = time.monotonic()
        in_netns = run("ip", "netns", "pids", node.netns, check=False).stdout.split()
        for pid in {*pids, *map(int, in_netns)}:
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.box.kill_leftovers(str(node.directory))
        if node.process is not None:
            node.process.wait(timeout=30)
            node.process = None
        return died

    def revive(self, node: SandboxNode) -> None:
        """The node boots again: link up, dockerd starts on its old state (a rebooted droplet)."""
        run("ip", "link", "set", f"owsb{self.box.tag}v{node.index}", "up")
        self.box.start(node)
        self.box.wait_started(node)
        self.engines[node.index].negotiate()


def new_sandbox(root: Path) -> Sandbox:
    ca = TestCa()
    # Names unique per run (pid), so parallel drills or tests never share a namespace or bridge.
    return Sandbox(
        root=root,
        ca=ca,
        client=ca.issue("deployer", server=False),
        tag=f"h{os.getpid() % 100000}",
        prefix=free_prefix(),
    )


def kill_node_choice(cluster: Cluster, *, leader: bool = False) -> SandboxNode:
    """A node running a cache of the upstream (node 1 or 2: node 0 carries the drill itself, the upstream
    stand-in and the API it drives the swarm by), so that the mirror door loses a cache every run, not
    by luck of placement (each node runs one, as in production). `leader`: the Raft leader, which must be
    one of them (Cluster.lead_elsewhere), so that the swarm also has to elect another."""
    ids = cluster.node_ids()
    cache = set(
        cluster.task_nodes(next(k for k in cluster.service_ids if k.startswith(names.CACHE_KEY_PREFIX)))
    )
    wanted = {cluster.leader()} if leader else set(ids[1:])
    candidates = [node for node in cluster.box.nodes[1:] if ids[node.index] in cache & wanted]
    if not candidates:
        what = "the leader" if leader else "nodes 1 and 2"
        raise RuntimeError(f"the cache runs on none of {what} (its tasks: {sorted(cache)})")
    return candidates[0]
