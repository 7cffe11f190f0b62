"""The registry services' specs on a real single-node swarm: push and mirror pull through the gateway.

What runs is what `RegistryServices` deploys for the `local` stack: the Bundle comes from
`gateway_wiring.local_build`, the plan from `gateway_wiring.local_plan`, configs/secrets and service
specs from `components.plan.swarm_specs`. Two deviations, both forced by this machine and nothing else:
- images: stand-ins built from the versions the pinned images carry (nginx 1.30 + njs 1.0 from Debian sid,
  Distribution v3.1.1; scripts/install-tools), as there is no registry to pull the pinned digests from;
  the specs' images are asserted to be pinned before they are swapped;
- endpoint mode of the services: this kernel has no IP_VS, so Swarm's virtual IPs carry no traffic
  (nginx's included, which the caches reach for their egress); every service is switched to DNS
  round-robin (`dnsrr`), which needs no IPVS.
The Docker Hub stand-in is one more registry service on the same overlay network.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from components import gateway_wiring
from components.local_swarm import INIT_SCRIPT
from components.plan import swarm_specs
from gateway import names
from gateway.bench.images import Image, Layer, build_image
from gateway.local.binaries import default_dockerd
from gateway.render.bundle import Bundle
from settings import Images, Local, Registry, Upstream, User
from tests import ROOT
from tests.services import standin_images, swarm_apply, swarm_engine

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd needs root"),
    pytest.mark.skipif(
        not (shutil.which(default_dockerd()) and shutil.which("skopeo")), reason="dockerd/skopeo missing"
    ),
]

PASSWORD = "alice-password-0123"  # noqa: S105 (test credential)
UPSTREAM_ALIAS = "upstream-standin"
PINNED = "example/{}@sha256:" + "0" * 64
UPSTREAM_CONFIG = (
    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n"
)


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=check)


def read_file(engine: swarm_engine.Engine, container: str, path: str) -> str:
    """A file's content inside a running container, read by the container itself."""
    out = subprocess.run(
        [*engine.cli, "exec", container, "cat", path], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"{path} unreadable in {container}: {out.stderr}"
    return out.stdout


def running_container(engine: swarm_engine.Engine, service_id: str) -> str:
    tasks = swarm_engine.running_tasks(engine, service_id)
    return next(
        t["Status"]["ContainerStatus"]["ContainerID"] for t in tasks if t["Status"]["State"] == "running"
    )


def registry_settings(mirror_client_cidrs: tuple[str, ...]) -> Registry:
    return Registry(
        namespaces=("acme",),
        users=(User(name="alice", pull=("acme",), push=("acme",)),),
        upstreams=(Upstream(host="docker.io", url=f"http://{UPSTREAM_ALIAS}:5000"),),
        images=Images(nginx=PINNED.format("nginx"), registry=PINNED.format("registry")),
        private_replicas=2,
        cache_ttl="168h",
        mirror_client_cidrs=mirror_client_cidrs,
        docker_hub_username=None,
    )


@dataclass
class Swarm:
    engine: swarm_engine.Engine
    nginx_image: str
    registry_image: str
    bridge_cidrs: str  # the docker_gwbridge subnet(s), read the way components/local_swarm.py reads them
    hub_image: Image  # seeded into each stack's Docker Hub stand-in
    app_image: Image


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    workdir = tmp_path_factory.mktemp("swarm")
    with swarm_engine.swarm_daemon(workdir) as engine:
        # The local stack's own swarm-init command (components/local_swarm.py), run twice: the second
        # run must find the swarm and the bridge and print the same subnet.
        env = {
            "PATH": os.environ["PATH"],
            "DOCKER_HOST": f"unix://{engine.socket_path}",
            "SWARM_LISTEN_ADDR": f"127.0.0.1:{swarm_engine.free_port()}",
            "SWARM_DATA_PATH_PORT": str(swarm_engine.free_udp_port()),
        }
        runs = [
            subprocess.run(
                ["sh", "-c", INIT_SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
            )
            for _ in range(2)
        ]
        assert "Swarm initialized" in runs[0].stderr and "Swarm initialized" not in runs[1].stderr
        assert runs[0].stdout == runs[1].stdout
        # Clear refusals before anything is deployed: a door's port held by another program, no engine.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            taken = subprocess.run(["sh", "-c", INIT_SCRIPT], env={**env, "OWNCR_PORTS": f"{port}"},
                                   capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert taken.returncode == 1 and f"port {port} is taken by another program" in taken.stderr, taken
        nowhere = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
        absent = subprocess.run(["sh", "-c", INIT_SCRIPT], env=nowhere, capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
        assert absent.returncode == 1 and "no Docker engine answers at unix:///nonexistent" in absent.stderr
        assert engine.get("/info")["Swarm"]["LocalNodeState"] == "active"
        layout = workdir / "oci"
        yield Swarm(
            engine=engine,
            nginx_image=standin_images.docker_import(
                engine.cli,
                standin_images.nginx_rootfs(),
                "owncr-standin/nginx:test",
                standin_images.NGINX_STOPSIGNAL,
            ),
            registry_image=standin_images.docker_import(
                engine.cli, standin_images.registry_rootfs(), "owncr-standin/registry:test"
            ),
            bridge_cidrs=gateway_wiring.bridge_cidrs(runs[0].stdout),
            hub_image=build_image(layout, [Layer(size=1 << 20, seed=1)], tag="hub", label="hub"),
            app_image=build_image(
                layout, [Layer(size=1 << 20, seed=1), Layer(size=1 << 19, seed=2)], tag="app"
            ),
        )


@dataclass
class Deployment:
    stack: str
    network: str
    objects: dict[str, tuple[str, str]]  # role -> (id, name)
    service_ids: dict[str, str]  # Bundle key (and "upstream") -> service id
    upstream_port: int


def _service_body(swarm: Swarm, dep: Deployment, spec: swarm_specs.ServiceSpec) -> dict[str, Any]:
    is_nginx = spec["key"] == names.NGINX_KEY
    return swarm_apply.engine_service_spec(
        spec,
        dep.objects,
        dep.network,
        image=swarm.nginx_image if is_nginx else swarm.registry_image,
    )


def _converge(engine: swarm_engine.Engine, service_ids: dict[str, str]) -> None:
    try:
        swarm_engine.wait_converged(engine, list(service_ids.values()), timeout=120)
    except TimeoutError:
        logs = {k: swarm_engine.service_logs(engine, sid)[-1500:] for k, sid in service_ids.items()}
        pytest.fail(f"services did not converge: {json.dumps(logs, indent=1)}")


def _check_files(engine: swarm_engine.Engine, dep: Deployment, bundle: Bundle) -> None:
    """Every rendered file is in the container that reads it, at exactly its path, byte for byte."""
    for key, files in bundle.services.items():
        container = running_container(engine, dep.service_ids[key])
        for f in files.files:
            assert read_file(engine, container, f.path) == f.content, f"{key}: {f.path}"


def deploy(swarm: Swarm, stack: str, bundle: Bundle, plan: swarm_specs.ServicePlan) -> Deployment:
    """Create the stack's network, configs, secrets and services from the specs, plus a Docker Hub
    stand-in seeded with `hub_image`; wait until every task runs healthy."""
    engine = swarm.engine
    specs = swarm_specs.service_specs(bundle, plan)
    assert all(swarm_specs.is_pinned(s["image"]) for s in specs)
    network = engine.post(
        "/networks/create",
        {"Name": f"owncr-{stack}-net", "Driver": "overlay"},
    )["Id"]
    dep = Deployment(
        stack, network, swarm_apply.create_objects(engine, stack, bundle), {}, swarm_engine.free_port()
    )
    for spec in specs:
        dep.service_ids[spec["key"]] = engine.post("/services/create", _service_body(swarm, dep, spec))["ID"]

    # The Docker Hub stand-in: a plain registry on the overlay network, published for seeding.
    up_name = f"owncr-{stack}-upstream"
    up_objects = {"cfg": (engine.post("/configs/create", _config(up_name, UPSTREAM_CONFIG))["ID"], up_name)}
    up_spec = copy.deepcopy(next(s for s in specs if s["key"].startswith(names.CACHE_KEY_PREFIX)))
    up_spec["key"], up_spec["name"], up_spec["alias"] = "upstream", up_name, UPSTREAM_ALIAS
    up_spec["command"] = ["registry", "serve", "/etc/distribution/config.yml"]
    up_spec["configs"] = [{"object": "cfg", "target": "/etc/distribution/config.yml", "mode": 0o444}]
    up_spec["secrets"], up_spec["mounts"] = [], []
    up_spec["ports"] = [{"target": 5000, "published": dep.upstream_port, "mode": "host"}]
    dep.service_ids["upstream"] = engine.post(
        "/services/create",
        swarm_apply.engine_service_spec(up_spec, up_objects, network, image=swarm.registry_image),
    )["ID"]

    _converge(engine, dep.service_ids)
    _check_files(engine, dep, bundle)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        swarm.hub_image.ref,
        f"docker://127.0.0.1:{dep.upstream_port}/library/hello:1",
    )
    return dep


def roll(swarm: Swarm, dep: Deployment, bundle: Bundle, plan: swarm_specs.ServicePlan) -> set[str]:
    """What `pulumi up` does after a render changed: new objects for changed contents (same names for
    the rest), an update of each service whose object references changed, then wait for the rollout.
    Returns the keys of the updated services."""
    engine = swarm.engine
    before = dict(dep.objects)
    dep.objects = swarm_apply.create_objects(engine, dep.stack, bundle)
    changed = {role for role in dep.objects if dep.objects[role] != before.get(role)}
    updated = set()
    for spec in swarm_specs.service_specs(bundle, plan):
        refs = {r["object"] for r in spec["configs"] + spec["secrets"]}
        if not refs & changed:
            continue
        sid = dep.service_ids[spec["key"]]
        version = engine.get(f"/services/{sid}")["Version"]["Index"]
        engine.post(f"/services/{sid}/update?version={version}", _service_body(swarm, dep, spec))
        updated.add(spec["key"])

    done = rollout_wait(engine, swarm_specs.service_specs(bundle, plan))
    assert done.returncode == 0, done.stdout + done.stderr
    # No wait of the test's own from here: the product's wait must have covered the whole rollout.
    for key in updated:
        sid = dep.service_ids[key]
        service = engine.get(f"/services/{sid}")
        assert service["UpdateStatus"]["State"] == "completed", service["UpdateStatus"]
        want = service["Spec"]["Mode"]["Replicated"]["Replicas"]
        running = [t for t in swarm_engine.running_tasks(engine, sid) if t["Status"]["State"] == "running"]
        current = swarm_engine.running_tasks(engine, sid, up_to_date=True)
        assert len(running) == len(current) == want, (running, current)
    _check_files(engine, dep, bundle)
    return updated


def rollout_wait(
    engine: swarm_engine.Engine, specs: list[swarm_specs.ServiceSpec]
) -> subprocess.CompletedProcess[str]:
    """components/engine/rollout.py as RegistryServices runs it after `up` changed services."""
    env = {
        "PATH": os.environ["PATH"],
        "OWNCR_DOCKER_HOST": f"unix://{engine.socket_path}",
        "OWNCR_SERVICES": json.dumps([s["name"] for s in specs]),
        "OWNCR_ROLLOUT_TIMEOUT": "150",
    }
    return subprocess.run(
        ["python3", "-m", "components.engine.rollout"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )


@dataclass
class LocalStack:
    dep: Deployment
    registry: Registry
    plan: swarm_specs.ServicePlan
    values: dict[str, str]  # the render's secret inputs
    registry_port: int
    mirror_port: int


def deploy_local_stack(swarm: Swarm, stack: str) -> LocalStack:
    """The local stack's render and plan, deployed; its doors on free ports of 127.0.0.1."""
    registry_port, mirror_port = swarm_engine.free_port(), swarm_engine.free_port()
    registry = registry_settings(("127.0.0.1/32",))
    plan = gateway_wiring.local_plan(
        stack, registry, Local(registry_port=registry_port, mirror_port=mirror_port)
    )
    values = {
        gateway_wiring.HTTP_SECRET: "shared-http-secret-0123456789",
        gateway_wiring.HTPASSWD_SALT_KEY: "htpasswd-salt-key-0123456789",
        gateway_wiring.password_key("alice"): PASSWORD,
        gateway_wiring.LOCAL_CLIENT_CIDRS: swarm.bridge_cidrs,
    }
    dep = deploy(swarm, stack, gateway_wiring.local_build(registry)(values), plan)
    return LocalStack(dep, registry, plan, values, registry_port, mirror_port)


def test_local_stack_specs_push_and_mirror_pull(swarm: Swarm, tmp_path: Path) -> None:
    local = deploy_local_stack(swarm, "svclocal")
    dep, registry, plan, values = local.dep, local.registry, local.plan, local.values
    registry_port, mirror_port = local.registry_port, local.mirror_port

    # Mirror door: anonymous pull of an upstream-only image, through the cache service.
    mirror = f"docker://127.0.0.1:{mirror_port}/library/hello:1"
    pulled = skopeo("inspect", "--raw", "--tls-verify=false", mirror)
    assert json.loads(pulled.stdout)["config"]["digest"] == swarm.hub_image.config.digest
    skopeo("copy", "--src-tls-verify=false", mirror, f"oci:{tmp_path / 'pulled'}:x")

    # Registry door: no credentials, no push; alice pushes and reads back her image.
    target = f"docker://127.0.0.1:{registry_port}/acme/app:1"
    insecure = "--dest-tls-verify=false"
    anonymous = skopeo("copy", insecure, swarm.app_image.ref, target, check=False)
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower()
    skopeo("copy", insecure, "--dest-creds", f"alice:{PASSWORD}", swarm.app_image.ref, target)
    back = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{PASSWORD}", target)
    assert json.loads(back.stdout)["config"]["digest"] == swarm.app_image.config.digest
    # ... and the private name never shows on the mirror door.
    leaked = skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://127.0.0.1:{mirror_port}/acme/app:1", check=False
    )
    assert leaked.returncode != 0
    assert "manifest unknown" in leaked.stderr, leaked.stderr  # as for a name no upstream has

    # A changed password changes htpasswd only: a new secret, nginx rolls (stop-first on its host
    # ports), the registries keep their objects and tasks; afterwards only the new password works.
    new_password = "alice-rotated-0123"  # noqa: S105 (test credential)
    rotated = gateway_wiring.local_build(registry)(
        values | {gateway_wiring.password_key("alice"): new_password}
    )
    assert roll(swarm, dep, rotated, plan) == {names.NGINX_KEY}
    old = skopeo(
        "inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{PASSWORD}", target, check=False
    )
    assert old.returncode != 0
    assert "unauthorized" in old.stderr.lower(), old.stderr
    skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{new_password}", target)

    # An update whose new tasks fail: Swarm rolls it back, and the rollout wait fails `up` with Swarm's
    # message instead of reporting success; the previous spec keeps serving.
    (nginx_spec,) = [s for s in swarm_specs.service_specs(rotated, plan) if s["key"] == names.NGINX_KEY]
    broken = _service_body(swarm, dep, nginx_spec)
    broken["TaskTemplate"]["ContainerSpec"]["Command"] = ["cat", "/nonexistent/nginx.conf"]
    sid = dep.service_ids[names.NGINX_KEY]
    version = swarm.engine.get(f"/services/{sid}")["Version"]["Index"]
    swarm.engine.post(f"/services/{sid}/update?version={version}", broken)
    failed = rollout_wait(swarm.engine, swarm_specs.service_specs(rotated, plan))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "swarm-rollout: FAILED: owncr-svclocal-nginx: Swarm rolled the update back" in failed.stderr
    _converge(swarm.engine, dep.service_ids)
    skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{new_password}", target)


def curl(port: int, host: str, path: str, *extra: str) -> tuple[int, str]:
    """(status, body) of a request that starts with a PROXY protocol v1 header, as the load balancer's."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--haproxy-protocol",
            "-H",
            f"Host: {host}",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            *extra,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, status = out.stdout.rpartition("\n")
    return int(status or 0), body


def test_cloud_stack_specs_behind_a_proxy_protocol_load_balancer(swarm: Swarm, tmp_path: Path) -> None:
    """The cloud render and plan (NFS variant: a host directory stands in for the NFS mount): nginx
    turns healthy only through the PROXY-protocol health check, and both doors answer by hostname."""
    registry = registry_settings(("127.0.0.1/32",))
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    build = gateway_wiring.cloud_build(
        registry,
        domain="cr.example.com",
        mirror_domain="mirror.cr.example.com",
        # Connections from the published port arrive from docker_gwbridge: it plays the VPC (the load
        # balancer's network) here, so the PROXY header's client address (127.0.0.1) is believed.
        vpc_cidr=swarm.bridge_cidrs.split()[0],
        s3=None,
    )
    bundle = build(
        {
            gateway_wiring.HTTP_SECRET: "shared-http-secret-0123456789",
            gateway_wiring.HTPASSWD_SALT_KEY: "htpasswd-salt-key-0123456789",
            gateway_wiring.HTPASSWD_SALT_KEY: "htpasswd-salt-key-0123456789",
            gateway_wiring.password_key("alice"): PASSWORD,
        }
    )
    plan = gateway_wiring.cloud_plan("svccloud", registry, node_count=1, nfs_mount_point=str(nfs))
    # The only change: a free host port instead of 8080 (this machine runs other tests).
    port = swarm_engine.free_port()
    plan = replace(plan, nginx_ports=(swarm_specs.Port(published=port, target=plan.nginx_ports[0].target),))
    deploy(swarm, "svccloud", bundle, plan)

    assert curl(port, "cr.example.com", "/healthz")[0] == 200
    assert curl(port, "cr.example.com", "/v2/")[0] == 401
    assert curl(port, "cr.example.com", "/v2/", "-u", f"alice:{PASSWORD}")[0] == 200
    accept = "application/vnd.oci.image.manifest.v1+json"
    status, body = curl(
        port, "mirror.cr.example.com", "/v2/library/hello/manifests/1", "-H", f"Accept: {accept}"
    )
    assert status == 200 and json.loads(body)["config"]["digest"] == swarm.hub_image.config.digest
    mirrored = "sha256:" + hashlib.sha256(body.encode()).hexdigest()  # the manifest the mirror served
    # Without the PROXY header nginx refuses the connection outright.
    plain = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.stdout in ("000", "400")
    # The registries wrote below the "NFS" mount, each in its own root: a blob pushed through the
    # registry door lands in the private root only, the mirrored manifest in the cache's only.
    blob = tmp_path / "blob"
    blob.write_bytes(b"a blob for the private root\n")
    pushed = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    alice = ("-u", f"alice:{PASSWORD}")
    headers = tmp_path / "upload-headers"
    status, body = curl(port, "cr.example.com", "/v2/acme/roots/blobs/uploads/", *alice, "-X", "POST",
                        "-D", str(headers))  # fmt: skip
    assert status == 202, body
    location = urllib.parse.urlsplit(_header(headers, "Location"))
    status, body = curl(
        port, "cr.example.com", f"{location.path}?{location.query}&digest={pushed}", *alice, "-X", "PUT",
        "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{blob}",
    )  # fmt: skip
    assert status == 201, body
    assert _blob_roots(nfs, pushed) == ["private"]
    assert _blob_roots(nfs, mirrored) == ["cache/docker.io"]


def _header(dump: Path, name: str) -> str:
    """A header's value from a `curl -D` dump."""
    for line in dump.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header in {dump.read_text()!r}")


def _blob_roots(storage: Path, digest: str) -> list[str]:
    """The registry roots (below `storage`) that hold the blob, by Distribution's filesystem layout."""
    hex_digest = digest.removeprefix("sha256:")
    found = storage.rglob(f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data")
    return sorted(str(path.relative_to(storage)).split("/docker/registry/")[0] for path in found)


def _config(name: str, content: str) -> dict[str, object]:
    return {"Name": name, "Data": base64.b64encode(content.encode()).decode()}
