"""RegistryServices under mocks: what pulumi-docker would receive for every committed stack.

Each (stack, overrides) runs `__main__.py` once per session (`deployed`); the tests read the recorded
inputs by wire name (camelCase; secrets arrive wrapped, `is_rpc_secret`). The pure parts
(`swarm_specs`, `gateway_wiring`, `render_bundle`) are tested directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pwd
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime.rpc import is_rpc_secret

from components import gateway_wiring
from components.plan import lb_health, swarm_specs
from components.registry_services import LayoutMismatch, RegistryServices, render_bundle
from gateway.names import STORE_PREFIX
from gateway.render import layout as gateway_layout
from gateway.render.bundle import Bundle, RenderedFile, ServiceFiles
from settings import Images, Local, Registry, Upstream, User
from tests.components.program_capture import plain
from tests.skips import skip_for_stack

SERVICE = "docker:index/service:Service"
CONFIG = "docker:index/serviceConfig:ServiceConfig"
SECRET = "docker:index/secret:Secret"  # noqa: S105 (a type token)
PASSWORD = "random:index/randomPassword:RandomPassword"  # noqa: S105 (a type token)
NETWORK = "docker:index/network:Network"
PROVIDER = "pulumi:providers:docker"
PINNED = "example/{}@sha256:" + "0" * 64
MOUNTED_DIRS = (gateway_layout.CONFIG_DIR, gateway_layout.SECRET_DIR)


@dataclass
class Deployed:
    resources: list[Any]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    config: dict[str, str]
    layout: Bundle
    http_secret: str

    def of_type(self, typ: str) -> list[Any]:
        return sorted((r for r in self.resources if r.typ == typ), key=lambda r: r.name)

    def service(self, key: str) -> Any:
        found = [s for s in self.of_type(SERVICE) if s.name == f"registry-{key}"]
        assert len(found) == 1, [s.name for s in self.of_type(SERVICE)]
        return found[0]

    @property
    def cloud(self) -> bool:
        return self.config.get("owncr:platform") == "digitalocean"


_RUNS: dict[str, Deployed] = {}


@pytest.fixture(scope="session")
def deployed(mock_session, run_program) -> Callable[..., Deployed]:
    def run(stack: str, overrides: Mapping[str, object] | None = None) -> Deployed:
        key = json.dumps([stack, overrides], sort_keys=True)
        if key not in _RUNS:
            _RUNS[key] = _deploy(mock_session, run_program, stack, overrides)
        return _RUNS[key]

    return run


def _deploy(mock_session, run_program, stack: str, overrides: Mapping[str, object] | None) -> Deployed:
    with mock_session() as mocks:
        got: dict[str, Any] = {}

        async def collect(run) -> None:
            got["config"] = run.config
            got["outputs"] = {name: await out.future() for name, out in run.outputs.items()}
            got["secret"] = {name for name, out in run.outputs.items() if await out.is_secret()}
            services = run.namespace["services"]
            assert isinstance(services, RegistryServices)
            got["layout"] = services.layout

        @pulumi.runtime.test
        def body():
            return collect(run_program(stack, overrides))

        _ = body()  # runs the program and waits for every registration and output
        http = next(
            r
            for r in mocks.resources
            if r.typ == "random:index/randomPassword:RandomPassword" and r.name.endswith("-http-secret")
        )
        return Deployed(
            resources=list(mocks.resources),
            outputs=got["outputs"],
            secret_outputs=got["secret"],
            config=got["config"],
            layout=got["layout"],
            http_secret=mocks.computed[http.typ](http, "")["result"],
        )


@pytest.fixture
def stack(deployed, committed_stack) -> Deployed:
    return deployed(committed_stack)


def mounted(service: Any) -> dict[str, str]:
    """target path -> "config"/"secret"/mount type, from a Service's recorded inputs."""
    spec = service.inputs["taskSpec"]["containerSpec"]
    paths = {c["fileName"]: "config" for c in spec.get("configs", [])}
    paths |= {s["fileName"]: "secret" for s in spec.get("secrets", [])}
    paths |= {m["target"]: m["type"] for m in spec.get("mounts", [])}
    return paths


def referenced_paths(files: ServiceFiles) -> set[str]:
    """Absolute paths below the rendered-file dirs that a service's files or command name."""
    text = "\n".join([*files.command, *(f.content for f in files.files)])
    paths = {p.rstrip(";") for p in re.findall(r"(/[A-Za-z0-9_.\-/]+)", text)}
    return {p for p in paths if p.startswith(MOUNTED_DIRS) and p.rstrip("/") not in MOUNTED_DIRS}


def njs_imports(files: ServiceFiles) -> list[tuple[str, ...]]:
    """Where each `js_import ... from f.js` may be found: beside the main config (`-c`), or in js_path
    (https://nginx.org/en/docs/njs/reference.html, js_import and js_path)."""
    text = "\n".join(f.content for f in files.files)
    conf_dir = files.command[files.command.index("-c") + 1].rsplit("/", 1)[0]
    js_paths = re.findall(r"js_path\s+(\S+);", text)
    modules = re.findall(r"js_import\s+\S+\s+from\s+(\S+);", text)
    # ...and each file a module imports (`import x from 'f.js'`; not njs's built-ins such as 'fs').
    modules += re.findall(r"^import\s+\w+\s+from\s+'([^']+\.js)';", text, re.MULTILINE)
    return [
        (module,) if module.startswith("/") else tuple(f"{d}/{module}" for d in (conf_dir, *js_paths))
        for module in modules
    ]


def unmounted(referenced: set[str], mounted: dict[str, str]) -> set[str]:
    """Referenced paths nothing mounts: neither a mounted file nor a directory holding one (js_path)."""
    return {p for p in referenced if p not in mounted and not any(m.startswith(p + "/") for m in mounted)}


# ---------------------------------------------------------------------------------------------------------
# Mounts


def test_every_rendered_and_referenced_path_is_mounted_in_its_reader(stack):
    assert set(stack.layout.services) >= {"nginx", "private", "cache-docker-io"}
    for key, files in stack.layout.services.items():
        paths = mounted(stack.service(key))
        for f in files.files:
            assert paths.get(f.path) == ("secret" if f.secret else "config"), (key, f.path)
        missing = unmounted(referenced_paths(files), paths)
        assert not missing, f"{key} reads {missing}, which nothing mounts"
        if key == "nginx":
            imports = njs_imports(files)
            assert imports and all(any(c in paths for c in candidates) for candidates in imports), imports
    nginx_conf = stack.layout.services["nginx"].files[0].content
    # The one referenced file the image itself provides (tests/services proves the stand-in has it there).
    assert f"load_module {gateway_layout.NJS_MODULE};" in nginx_conf


def test_referenced_paths_find_includes_and_the_njs_router():
    files = ServiceFiles(
        name="x",
        command=("nginx", "-c", "/etc/owncr/nginx/nginx.conf"),
        files=(
            RenderedFile(
                "/etc/owncr/nginx/nginx.conf",
                "js_path /etc/owncr;\njs_import router from router.js;\n"
                "include /run/secrets/owncr/salt.conf;\n",
                False,
            ),
        ),
        port=1,
    )
    assert referenced_paths(files) == {"/etc/owncr/nginx/nginx.conf", "/run/secrets/owncr/salt.conf"}
    assert njs_imports(files) == [("/etc/owncr/nginx/router.js", "/etc/owncr/router.js")]
    absolute = replace(files, files=(RenderedFile("/c", "js_import r from /etc/owncr/r.js;", False),))
    assert njs_imports(absolute) == [("/etc/owncr/r.js",)]


def test_module_imports_and_js_path_directories_are_checked_too():
    module = RenderedFile(
        "/etc/owncr/nginx/router.js", "import fs from 'fs';\nimport owncr from 'owncr.js';\n", False
    )
    conf = RenderedFile("/etc/owncr/nginx/nginx.conf", "js_path /etc/owncr/nginx;\n", False)
    files = ServiceFiles(name="x", command=("nginx", "-c", conf.path), files=(conf, module), port=1)
    # A module's import is found beside the config or in js_path; a built-in ('fs') is no file.
    assert njs_imports(files) == [("/etc/owncr/nginx/owncr.js", "/etc/owncr/nginx/owncr.js")]
    # A directory counts as mounted when a mounted file is inside it, not otherwise.
    assert unmounted({"/etc/owncr/nginx"}, {"/etc/owncr/nginx/router.js": "config"}) == set()
    assert unmounted({"/etc/owncr/nginx"}, {"/etc/owncr/nginx-other/x": "config"}) == {"/etc/owncr/nginx"}


def test_only_nginx_publishes_and_all_share_one_overlay(stack):
    (network,) = stack.of_type(NETWORK)
    assert network.inputs["driver"] == "overlay"
    # No IPsec: DigitalOcean's firewall cannot pass ESP between nodes (see registry_services.py).
    assert "encrypted" not in (network.inputs.get("options") or {})
    net_id = f"{network.name}-id"
    for service in stack.of_type(SERVICE):
        nets = service.inputs["taskSpec"]["networksAdvanceds"]
        assert [n["id"] for n in nets] == [net_id]
        key = service.name.removeprefix("registry-")
        assert nets[0]["aliases"] == [stack.layout.services[key].name]
        ports = service.inputs.get("endpointSpec", {}).get("ports", [])
        if key == "nginx":
            assert ports and all(p["publishMode"] == "host" for p in ports)
        else:
            assert ports == []


def test_cloud_nginx_listens_on_8080_and_metrics_local_on_both_configured_ports(stack):
    ports = [
        (p["publishedPort"], p["targetPort"]) for p in stack.service("nginx").inputs["endpointSpec"]["ports"]
    ]
    if stack.cloud:
        assert ports == [(8080.0, 8080.0), (9145.0, 9145.0)]
    else:
        local_ports = int(stack.config["owncr:localRegistryPort"]), int(stack.config["owncr:localMirrorPort"])
        doors = gateway_wiring.LOCAL_REGISTRY_DOOR, gateway_wiring.LOCAL_MIRROR_DOOR
        assert ports == [(float(p), float(t)) for p, t in zip(local_ports, doors, strict=True)]


# ---------------------------------------------------------------------------------------------------------
# Secrets


def _secret_values(stack: Deployed) -> list[str]:
    values = list(json.loads(stack.config.get("owncr:userPasswords", "{}")).values())
    values += [v for k, v in stack.config.items() if "token" in k.lower() and v]
    values.append(stack.http_secret)
    return [v for v in values if len(v) >= 8]


def test_secrets_travel_only_as_swarm_secrets_marked_secret(stack):
    secrets = _secret_values(stack)
    for s in stack.of_type(SECRET):
        assert is_rpc_secret(s.inputs["data"]), s.name
    for r in stack.resources:
        if not r.typ.startswith("docker:") or r.typ == SECRET:
            continue
        text = json.dumps(plain(r.inputs))
        decoded = [base64.b64decode(c["data"]).decode() for c in [r.inputs] if r.typ == CONFIG]
        for value in secrets:
            assert value not in text, f"{r.typ} {r.name} carries a secret"
            assert all(value not in d for d in decoded), f"{r.name} config carries a secret"


def test_the_shared_http_secret_reaches_every_registry_config(stack):
    by_path = {
        next(lb["value"] for lb in s.inputs["labels"] if lb["label"] == "owncr.path"): plain(s.inputs["data"])
        for s in stack.of_type(SECRET)
    }
    for key, files in stack.layout.services.items():
        if key == "nginx":
            continue
        (config,) = [f for f in files.files if f.secret]  # beside it: the drain script (a config)
        assert stack.http_secret in base64.b64decode(by_path[config.path]).decode(), key


def _registry_configs(run: Deployed) -> dict[str, dict[str, Any]]:
    """Service key -> its Distribution config.yml as deployed (decoded from the Swarm secret)."""
    by_path = {
        next(lb["value"] for lb in s.inputs["labels"] if lb["label"] == "owncr.path"): plain(s.inputs["data"])
        for s in run.of_type(SECRET)
    }
    return {
        key: yaml.safe_load(base64.b64decode(by_path[files.files[0].path]))
        for key, files in run.layout.services.items()
        if key != "nginx"
    }


@pytest.mark.parametrize(
    ("stack_name", "overrides", "redirect"),
    [
        ("dev", None, True),  # storage r2, blobRedirect unset: on
        ("prod", None, True),
        ("dev", {"blobRedirect": "false"}, False),
        ("dev", {"storage": "nfs"}, False),
        ("local", None, False),
    ],
)
def test_registries_on_r2_answer_blob_reads_with_presigned_urls(deployed, stack_name, overrides, redirect):
    configs = _registry_configs(deployed(stack_name, overrides))
    assert {"private", "cache-docker-io"} <= set(configs)
    for key, config in configs.items():
        assert config["storage"]["redirect"] == {"disable": not redirect}, key
        assert ("s3" in config["storage"]) == (stack_name != "local" and overrides != {"storage": "nfs"}), key


def test_every_object_is_named_by_its_role_and_content_hash(stack):
    files = {f.role: f for f in swarm_specs.swarm_files(stack.layout)}
    objects = stack.of_type(CONFIG) + stack.of_type(SECRET)
    assert {o.name.removeprefix("registry-") for o in objects} == set(files)
    (name_key,) = [r for r in stack.of_type(PASSWORD) if r.name == "registry-object-name-key"]
    key = f"pw-{hashlib.sha256(name_key.name.encode()).hexdigest()[:24]}"  # the mock's RandomPassword
    for o in objects:
        content = base64.b64decode(plain(o.inputs["data"])).decode()
        f = files[o.name.removeprefix("registry-")]
        labels = {label["label"]: label["value"] for label in o.inputs["labels"]}
        assert labels == swarm_specs.object_labels("test", f)
        if o.typ == SECRET:
            # Keyed: the bare content hash of e.g. htpasswd would let anyone test password guesses.
            assert o.inputs["name"] == swarm_specs.object_name("test", f, content, key), o.name
            assert o.inputs["name"] != swarm_specs.object_name("test", f, content), o.name
        else:
            assert o.inputs["name"] == swarm_specs.object_name("test", f, content), o.name


def test_docker_hub_token_reaches_only_the_docker_hub_cache_as_a_secret(deployed):
    token = "hub-token-0123456789abcdef"  # noqa: S105 (test credential)
    run = deployed("dev", {"dockerHubUsername": "ci-bot", "dockerHubToken": token})
    holders = [
        s.name for s in run.of_type(SECRET) if token in base64.b64decode(plain(s.inputs["data"])).decode()
    ]
    (cache_file,) = [
        f.role for f in swarm_specs.swarm_files(run.layout) if f.service == "cache-docker-io" and f.secret
    ]
    assert holders == [f"registry-{cache_file}"]
    assert not [r.name for r in run.resources if r.typ != SECRET and token in json.dumps(plain(r.inputs))]


def test_provider_is_explicit_and_strongly_authenticated(stack):
    (provider,) = stack.of_type(PROVIDER)
    # No ping at configure time: on a first `up` the engine does not exist yet when the inputs are known.
    assert provider.inputs["disableDockerDaemonCheck"] == "true"  # provider config travels as strings
    for r in stack.resources:
        if r.typ.startswith("docker:"):
            assert (r.provider or "").endswith(f"${PROVIDER}::registry-docker::registry-docker-id"), r.name
    if stack.cloud:
        assert plain(provider.inputs["host"]).startswith("tcp://") and plain(
            provider.inputs["host"]
        ).endswith(":2376")
        assert {"caMaterial", "certMaterial"} <= set(provider.inputs)
        assert is_rpc_secret(provider.inputs["keyMaterial"])
    else:
        assert provider.inputs["host"] == "unix:///var/run/docker.sock"
        assert "keyMaterial" not in provider.inputs


def test_local_stack_has_no_cloud_resource_and_a_local_swarm(deployed):
    local = deployed("local")
    assert [r.typ for r in local.resources if r.typ.split(":")[0] in ("digitalocean", "cloudflare")] == []
    assert not [
        r
        for r in local.resources
        if r.typ in ("pulumi:providers:digitalocean", "pulumi:providers:cloudflare")
    ]
    commands = {r.name: r for r in local.resources if r.typ == "command:local:Command"}
    assert set(commands) == {"local-swarm-init", "registry-rollout"}
    init = commands["local-swarm-init"]
    assert "docker swarm init" in init.inputs["create"]
    assert "LocalNodeState" in init.inputs["create"]  # only when not in a swarm yet
    assert (
        local.outputs["docker_login_command"]
        == f"docker login 127.0.0.1:{local.config['owncr:localRegistryPort']}"
    )
    assert json.loads(local.outputs["docker_daemon_json"]) == {
        "registry-mirrors": [local.outputs["mirror_url"]]
    }


# ---------------------------------------------------------------------------------------------------------
# Services


def test_one_cache_service_per_upstream_with_a_replica_per_node(deployed):
    upstreams = {
        "docker.io": "https://registry-1.docker.io",
        "ghcr.io": "https://ghcr.io",
        "quay.io": "https://quay.io",
    }
    run = deployed("prod", {"upstreams": upstreams})
    caches = [s for s in run.of_type(SERVICE) if "-cache-" in s.name]
    assert sorted(s.name for s in caches) == [
        "registry-cache-docker-io",
        "registry-cache-ghcr-io",
        "registry-cache-quay-io",
    ]
    # As many as nginx (one per node): losing the node that runs one leaves the others.
    nginx = next(s for s in run.of_type(SERVICE) if s.name.endswith("-nginx"))
    per_node = nginx.inputs["mode"]["replicated"]["replicas"]
    assert per_node > 1
    assert {s.inputs["mode"]["replicated"]["replicas"] for s in caches} == {per_node}
    # A cache's connect to a lost node's egress gives up after one SYN retry (swarm_specs.CACHE_SYSCTLS);
    # nothing else changes its kernel settings.
    for service in run.of_type(SERVICE):
        sysctl = service.inputs["taskSpec"]["containerSpec"].get("sysctl")
        assert sysctl == ({"net.ipv4.tcp_syn_retries": "1"} if service in caches else None), service.name
    assert len({s.inputs["name"] for s in caches}) == 3


def test_modes_and_rolling_updates(stack):
    nginx = stack.service("nginx").inputs
    # One per node (replicas + max one per node: converge_config cannot wait for a global service).
    nodes = float(stack.config["owncr:nodeCount"]) if stack.cloud else 1.0
    assert nginx["mode"] == {"replicated": {"replicas": nodes}}
    assert nginx["taskSpec"]["placement"]["maxReplicas"] == 1.0
    assert nginx["updateConfig"]["order"] == "stop-first"  # a host-mode port cannot be bound twice
    private = stack.service("private").inputs
    assert private["mode"]["replicated"]["replicas"] == float(stack.config["owncr:privateReplicas"])
    for service in stack.of_type(SERVICE):
        inputs = service.inputs
        update, rollback = inputs["updateConfig"], inputs["rollbackConfig"]
        assert update["parallelism"] == 1.0 and update["failureAction"] == "rollback"
        assert rollback["failureAction"] == "pause"
        if service.name != "registry-nginx":
            assert update["order"] == "start-first"
        assert set(inputs["convergeConfig"]) == {"delay", "timeout"}
        task = inputs["taskSpec"]
        assert task["restartPolicy"]["condition"] == "any"
        assert task["resources"]["limits"]["memoryBytes"] > 0
        assert task["logDriver"] == {"name": "json-file", "options": {"max-size": "10m", "max-file": "5"}}
        assert task["containerSpec"]["healthcheck"]["tests"][0] == "CMD"
        # Longer than Swarm's 10 s default, so rolling updates let multi-GB transfers finish; nginx behind
        # the load balancer drains first (11 s: 2 failed checks 3 s apart + 5 s), then gets its 2 min.
        grace = "55s"
        if service.name == "registry-nginx":
            grace = "2m11s" if stack.cloud else "2m"
        assert task["containerSpec"]["stopGracePeriod"] == grace, service.name
        env = task["containerSpec"].get("env", {})
        # nginx: until the load balancer took the node out; registries: until nginx re-resolved them.
        drain = ("11" if stack.cloud else "0") if service.name == "registry-nginx" else "10"
        assert env == {swarm_specs.DRAIN_ENV: drain}, service.name
        # The next nginx drains only once the load balancer sends the new one traffic (2 checks + 5 s).
        delay = "11s" if stack.cloud and service.name == "registry-nginx" else "5s"
        assert update["delay"] == rollback["delay"] == delay, service.name


def test_every_image_is_pinned_by_digest(stack):
    images = {s.inputs["taskSpec"]["containerSpec"]["image"] for s in stack.of_type(SERVICE)}
    assert len(images) == 2 and all(swarm_specs.is_pinned(i) for i in images)


def test_nginx_starts_under_the_drain_wrapper(stack):
    spec = stack.service("nginx").inputs["taskSpec"]["containerSpec"]
    command = spec["commands"]
    drain = f"{gateway_layout.CONFIG_DIR}/drain.sh"
    flag = f"{gateway_layout.STATE_DIR}/{gateway_layout.DRAIN_FLAG}"
    start = command.index(drain) - 1
    assert command[start : start + 5] == ["sh", drain, flag, "QUIT", "nginx"]
    assert drain in mounted(stack.service("nginx"))
    if start:  # filesystem storage: the store's directory is made the workers' first (the next test)
        assert command[:2] == ["sh", "-c"] and command[3:start] == [
            f"{gateway_wiring.STORAGE_ROOT}/{STORE_PREFIX}",
            gateway_layout.NGINX_USER,
        ]
    private = stack.service("private").inputs["taskSpec"]["containerSpec"]["commands"]
    assert private[:5] == ["sh", drain, "-", "TERM", "registry"]
    assert drain in mounted(stack.service("private"))


def test_the_store_directory_is_prepared_for_the_workers_then_the_drain_wrapper_runs(stack, tmp_path):
    """The preparation before the drain wrapper, run as a shell runs it (dash here; busybox ash in the
    image): the directory exists, belongs to the workers' user, and the rest of the command runs."""
    command = stack.service("nginx").inputs["taskSpec"]["containerSpec"]["commands"]
    if command[:2] != ["sh", "-c"]:
        skip_for_stack("storage is not a filesystem on this stack")
    mounts = stack.service("nginx").inputs["taskSpec"]["containerSpec"]["mounts"]
    assert gateway_wiring.STORAGE_ROOT in [m["target"] for m in mounts], "nginx sees the shared storage"
    store = tmp_path / "storage" / STORE_PREFIX
    ran = subprocess.run(
        ["sh", "-c", command[2], str(store), "nobody", "echo", "then", "the rest"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout == "then the rest\n", ran
    assert store.is_dir() and store.stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_lb_timings_derive_drain_and_pacing():
    assert lb_health.drain_seconds() == 11 and lb_health.rejoin_seconds() == 11
    assert lb_health.detection_seconds() == 12  # 2 checks, each 3 s apart + 3 s timeout
    assert [swarm_specs.go_duration(s) for s in (155, 120, 45, 35, 60, 61)] == [
        "2m35s",
        "2m",
        "45s",
        "35s",
        "1m",
        "1m1s",
    ]


def test_cloud_nginx_health_check_speaks_proxy_protocol(stack):
    test = stack.service("nginx").inputs["taskSpec"]["containerSpec"]["healthcheck"]["tests"]
    assert ("--haproxy-protocol" in test) == stack.cloud
    assert test[-1] == f"http://127.0.0.1:{gateway_layout.GATEWAY_PORT}/healthz"


def test_every_service_is_reached_by_dns_round_robin_as_the_drill_runs_it(stack):
    """Production runs the endpoint mode scripts/ha-drill proves (no IPVS there): every service's name
    resolves to its tasks' own addresses; nginx keeps its host-mode port, which SwarmKit allows with it."""
    for key in ("nginx", "private", "cache-docker-io"):
        endpoint = stack.service(key).inputs["endpointSpec"]
        assert endpoint["mode"] == "dnsrr", key
        assert all(p["publishMode"] == "host" for p in endpoint.get("ports", [])), key


def test_nfs_storage_bind_mounts_the_node_mount_into_every_service(deployed):
    run = deployed("dev", {"storage": "nfs"})
    nfs = {"type": "bind", "source": "/mnt/owncr", "target": gateway_wiring.STORAGE_ROOT}
    for service in run.of_type(SERVICE):
        mounts = service.inputs["taskSpec"]["containerSpec"].get("mounts", [])
        if service.name == "registry-nginx":
            # The state dir's tmpfs, nginx's blob copy on the node's disk, and the storage its store
            # (njs/store.js) keeps the nodes' locks on.
            assert [(m["type"], m.get("source")) for m in mounts] == [
                ("tmpfs", None),
                ("volume", swarm_specs.BLOB_CACHE_VOLUME),
                ("bind", "/mnt/owncr"),
            ]
            assert mounts[2] == nfs
        else:
            assert mounts == [nfs]


def test_first_preview_of_a_new_stack_registers_every_service(mock_session, run_program):
    """At the first preview the manager's address and the R2 keys are unknown: every docker resource
    is still registered (shown as create), only contents and names derived from them are unknown."""
    with mock_session(preview=True) as mocks:

        @pulumi.runtime.test
        def body():
            run_program("dev")

        body()
        names = sorted(r.name for r in mocks.resources if r.typ == SERVICE)
    assert names == ["registry-cache-docker-io", "registry-nginx", "registry-private"]


# ---------------------------------------------------------------------------------------------------------
# Names and rendering (pure)

REGISTRY = Registry(
    namespaces=("acme",),
    users=(User(name="alice", pull=("acme",), push=("acme",)), User(name="bob", pull=("acme",), push=())),
    upstreams=(Upstream(host="docker.io", url="https://registry-1.docker.io"),),
    images=Images(nginx=PINNED.format("nginx"), registry=PINNED.format("registry")),
    private_replicas=2,
    cache_ttl="168h",
    mirror_client_cidrs=("203.0.113.0/24",),
    docker_hub_username=None,
)
VALUES = {
    gateway_wiring.HTTP_SECRET: "http-secret-0123456789abcdef",
    gateway_wiring.HTPASSWD_SALT_KEY: "htpasswd-salt-key-0123456789",
    gateway_wiring.password_key("alice"): "alice-password-1",
    gateway_wiring.password_key("bob"): "bob-password-123",
    gateway_wiring.S3_ACCESS_KEY: "access-key-id",
    gateway_wiring.S3_SECRET_KEY: "s3-secret-key-0123",
}


CLOUD_BUILD = gateway_wiring.cloud_build(
    REGISTRY,
    domain="cr.example.com",
    mirror_domain="mirror.cr.example.com",
    vpc_cidr="10.0.0.0/24",
    s3=("b", "https://s3.example.com"),
)


def test_cloud_build_refuses_redirects_without_an_object_store():
    with pytest.raises(ValueError, match="blob_redirect needs S3 storage"):
        gateway_wiring.cloud_build(
            REGISTRY,
            domain="cr.example.com",
            mirror_domain="m.cr.example.com",
            vpc_cidr="10.0.0.0/24",
            s3=None,
            blob_redirect=True,
        )


def _roles(*services: str) -> set[str]:
    return {f.role for f in swarm_specs.swarm_files(CLOUD_BUILD(VALUES)) if f.service in services}


def _names(values: Mapping[str, str]) -> dict[str, str]:
    bundle = CLOUD_BUILD(values)
    return {
        f.role: swarm_specs.object_name(
            "prod", f, next(r.content for r in bundle.services[f.service].files if r.path == f.path)
        )
        for f in swarm_specs.swarm_files(bundle)
    }


def test_object_names_change_when_and_only_when_the_content_changes():
    base = _names(VALUES)
    assert base == _names(dict(VALUES))  # deterministic: same content, same names (no diff, no roll)
    alice = _names(VALUES | {gateway_wiring.password_key("alice"): "another-password"})
    (htpasswd,) = [r for r in _roles("nginx") if "htpasswd" in r]
    assert {r for r in base if base[r] != alice[r]} == {htpasswd}
    s3 = _names(VALUES | {gateway_wiring.S3_SECRET_KEY: "rotated-secret-key"})
    drain_scripts = {"private-drain-sh", "cache-docker-io-drain-sh"}  # the same for any secret
    assert drain_scripts <= _roles("private", "cache-docker-io")
    # The registries' configs and the store's file (nginx's store.js signs with the same key).
    store = {r for r in _roles("nginx") if "store-json" in r}
    assert {r for r in base if base[r] != s3[r]} == (
        _roles("private", "cache-docker-io") - drain_scripts
    ) | store
    for name in base.values():
        assert len(name) <= swarm_specs.OBJECT_NAME_MAX and name.startswith("owncr-prod-")


def test_object_names_keep_the_hash_when_the_role_is_shortened():
    f = swarm_specs.SwarmFile("cache-registry-k8s-io-config-yml", "cache-registry-k8s-io", "/c.yml", False)
    long = swarm_specs.object_name("a-long-stack-name", f, "x")
    assert len(long) <= swarm_specs.OBJECT_NAME_MAX
    labels = json.dumps(swarm_specs.object_labels("a-long-stack-name", f), sort_keys=True)
    assert long.endswith("-" + swarm_specs.content_hash(labels + "\n" + "x"))


def test_object_names_change_with_the_labels_even_for_the_same_content():
    """The provider replaces a config or secret whose labels change (labels are ForceNew); under the
    same name, Swarm would refuse the replacement's create."""
    f = swarm_specs.SwarmFile("nginx-conf", "nginx", "/etc/owncr/nginx.conf", False)
    moved = replace(f, path="/etc/owncr/nginx/nginx.conf")
    assert swarm_specs.object_labels("prod", f) != swarm_specs.object_labels("prod", moved)
    assert swarm_specs.object_name("prod", f, "same") != swarm_specs.object_name("prod", moved, "same")
    assert swarm_specs.object_name("prod", f, "same") == swarm_specs.object_name("prod", f, "same")


def test_plan_refuses_unpinned_images():
    plan = gateway_wiring.local_plan("local", REGISTRY, Local(registry_port=5000, mirror_port=5001))
    with pytest.raises(ValueError, match="pinned by digest"):
        replace(plan, nginx_image="nginx:latest")
    with pytest.raises(ValueError, match="pinned by digest"):
        replace(plan, registry_image="registry:3")


def test_render_bundle_refuses_a_secret_in_a_config(mocks):
    def leaky(values: Mapping[str, str]) -> Bundle:
        return Bundle(
            {"nginx": ServiceFiles("n", ("nginx",), (RenderedFile("/etc/x", values["pw"], False),), 1)}
        )

    @pulumi.runtime.test
    def body():
        layout, real = render_bundle(leaky, {"pw": pulumi.Output.secret("secret-value-123")})
        assert layout.services["nginx"].files[0].content.startswith("placeholder-")
        return real

    with pytest.raises(LayoutMismatch, match="contains the secret"):
        body()


def test_render_bundle_refuses_a_shape_that_depends_on_a_secret(mocks):
    def shifty(values: Mapping[str, str]) -> Bundle:
        path = "/etc/a" if values["pw"].startswith("placeholder") else "/etc/b"
        return Bundle({"nginx": ServiceFiles("n", ("nginx",), (RenderedFile(path, "x", True),), 1)})

    @pulumi.runtime.test
    def body():
        return render_bundle(shifty, {"pw": "secret-value-123"})[1]

    with pytest.raises(LayoutMismatch, match="different set"):
        body()


def test_local_mirror_door_admits_the_engine_bridge():
    build = gateway_wiring.local_build(REGISTRY)
    conf = (
        build(VALUES | {gateway_wiring.LOCAL_CLIENT_CIDRS: "172.18.0.0/16 junk"})
        .services["nginx"]
        .files[0]
        .content
    )
    assert re.search(r"^\s*172\.18\.0\.0/16 1;$", conf, re.M)
    assert re.search(r"^\s*203\.0\.113\.0/24 1;$", conf, re.M)
    assert "proxy_protocol" not in conf


@pytest.mark.parametrize("stack", ["dev", "local"])
def test_up_waits_for_the_rollout_of_every_service(deployed, stack: str) -> None:
    """The provider's converge wait returns before Swarm has finished (components/engine/rollout.py):
    one Command runs the rollout wait against the same engine, for every service, re-run on changes."""
    run = deployed(stack)
    (rollout,) = [r for r in run.resources if r.name == "registry-rollout"]
    assert rollout.inputs["create"] == "python3 -m components.engine.rollout"
    env = plain(rollout.inputs["environment"])
    services = sorted(s.inputs["name"] for s in run.of_type(SERVICE))
    assert sorted(json.loads(env["OWNCR_SERVICES"])) == services
    if stack == "local":
        assert env["OWNCR_DOCKER_HOST"] == "unix:///var/run/docker.sock"
        assert not [k for k in env if k.endswith("_PEM")]
    else:
        assert env["OWNCR_DOCKER_HOST"].startswith("tcp://") and env["OWNCR_DOCKER_KEY_PEM"]
    # Secret (the client key), and re-run whenever an object name (content hash) changes.
    assert is_rpc_secret(rollout.inputs["environment"])
    objects = {o.inputs["name"] for o in run.of_type(CONFIG) + run.of_type(SECRET)}
    assert objects <= set(plain(rollout.inputs["triggers"]))


def test_the_local_stack_generates_missing_passwords_and_says_how_to_log_in(deployed) -> None:
    """No step by hand: `me` has no configured password, so one is generated (a secret) and exported as
    a secret output, and the login command reads it from the stack."""
    run = deployed("local", {"userPasswords": {}})  # what the CLI passes when none is set
    generated = [r for r in run.resources if r.name == "password-me"]
    assert len(generated) == 1 and generated[0].typ == "random:index/randomPassword:RandomPassword"
    assert set(run.outputs["generated_passwords"]) == {"me"}
    assert "generated_passwords" in run.secret_outputs
    command = run.outputs["docker_login_command"]
    assert command.startswith("pulumi stack output --show-secrets generated_passwords --json | python3 -c")
    assert command.endswith("| docker login 127.0.0.1:5000 -u me --password-stdin")


def test_cloud_stacks_still_require_every_password(load_settings) -> None:
    import settings as owncr_settings  # noqa: PLC0415

    with pytest.raises(owncr_settings.ConfigError, match="no password for"):
        load_settings("dev", {"userPasswords": {}})
