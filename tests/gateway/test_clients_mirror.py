"""The mirror door with real clients: upstream-only images pulled by containerd (tags resolved with HEAD,
through a hosts.toml mirror) and skopeo, a second upstream under /v2/<host>/ (containerd's override_path),
images still served with the upstream down, a tag hijack attempt, and cache eviction next to private data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gateway.bench.images import Image, Layer, MiB
from gateway.config import GatewaySettings
from gateway.names import cache_key, cache_route
from gateway.render.nginx import cache_answer_seconds
from tests.gateway.client_harness import (
    USERS,
    Containerd,
    GatewayProcess,
    Images,
    Launcher,
    PlainRegistry,
    cmdline,
    mirror_answered_404,
    ok,
    write_hosts_toml,
)
from tests.gateway.routing_fixtures import ACCEPT, request

ALICE = f"alice:{USERS['alice']}"


TAG_CACHE_SECONDS = GatewaySettings.__dataclass_fields__["tag_cache_seconds"].default  # what the CLI runs
BASE_LAYER = Layer(MiB, 1)  # shared by the upstream base image and a private image built on it


def base_image(images: Images) -> Image:
    return images.get("library-base", [BASE_LAYER, Layer(300 * 1024, 2)])


def tool_image(images: Images) -> Image:
    return images.get("ghcr-tool", [Layer(512 * 1024, 20), Layer(1000, 21)], tag="2.0")


def private_on_base(images: Images) -> Image:
    return images.get("team-on-base", [BASE_LAYER, Layer(700 * 1024, 30)])


class World:
    """Docker Hub and ghcr.io stand-ins seeded with one image each, the gateway, containerd and a hosts dir
    sending docker.io and ghcr.io pulls to the mirror door."""

    def __init__(self, launch: Launcher, images: Images, name: str) -> None:
        self.launch = launch
        self.skopeo = launch.skopeo
        self.dockerhub: PlainRegistry = launch.distribution(f"{name}-dockerhub")
        self.ghcr: PlainRegistry = launch.distribution(f"{name}-ghcr")
        launch.seed(self.dockerhub, base_image(images), "library/base:1.0")
        launch.seed(self.ghcr, tool_image(images), "org/tool:2.0")
        self.gateway: GatewayProcess = launch.gateway(
            {"docker.io": self.dockerhub.url, "ghcr.io": self.ghcr.url}, name=name
        )
        self.containerd: Containerd = launch.containerd()
        self.mirror = self.gateway.doors.mirror
        self.registry = self.gateway.doors.registry
        self.hosts = launch.workdir / f"{name}-certs.d"
        write_hosts_toml(self.hosts, "docker.io", f"http://{self.mirror}")
        write_hosts_toml(self.hosts, "ghcr.io", f"http://{self.mirror}/v2/ghcr.io", override_path=True)

    def ctr_pull(self, ref: str, namespace: str = "default") -> subprocess.CompletedProcess[str]:
        """Pull through the hosts dir (docker.io and ghcr.io names land on the mirror door)."""
        return self.containerd.ctr("-n", namespace, "images", "pull", "--hosts-dir", str(self.hosts), ref)

    def ctr_pull_private(self, name: str, namespace: str = "default") -> str | None:
        """Pull `name` from the registry door with alice's credentials; returns the digest containerd got."""
        ref = f"{self.registry}/{name}"
        ok(self.containerd.ctr("-n", namespace, "images", "pull", "--plain-http", "--user", ALICE, ref))
        return self.containerd.image_digest(ref, namespace)

    def ctr_forget(self, ref: str) -> None:
        """Remove the image and (synchronous garbage collection) its content, so a pull must fetch again."""
        ok(self.containerd.ctr("images", "rm", "--sync", ref))

    def push_private(self, image: Image, name: str) -> None:
        ok(self.skopeo.copy(image.ref, f"docker://{self.registry}/{name}", dest_creds=ALICE))

    def wait_until_cached(self, upstream_host: str, image: Image, timeout: float = 60.0) -> None:
        """Distribution's proxy streams a blob to the client while a goroutine fetches it AGAIN from the
        upstream into its store (registry/proxy/proxyblobstore.go, ServeBlob -> storeLocal): right after
        a pull, the cache may not hold it yet. Wait (bounded) until every blob is in the cache's store."""
        blobs = self.cache_root(upstream_host) / "docker" / "registry" / "v2" / "blobs" / "sha256"
        wanted = [blobs / b.hex[:2] / b.hex / "data" for b in (image.config, *image.layers)]
        deadline = time.monotonic() + timeout
        while not all(p.is_file() and p.stat().st_size > 0 for p in wanted):
            assert time.monotonic() < deadline, f"the {upstream_host} cache did not store {image.tag} in time"
            time.sleep(0.2)

    def cache_root(self, upstream_host: str) -> Path:
        """The storage root of the cache of `upstream_host`, read from the registry config the runner
        rendered under its data directory."""
        for config in self.gateway.data.rglob("*.yml"):
            document = yaml.safe_load(config.read_text()) or {}
            root = document.get("storage", {}).get("filesystem", {}).get("rootdirectory")
            if root and "proxy" in document and upstream_host in f"{config} {root}":
                return Path(root)
        raise AssertionError(f"no cache config for {upstream_host} under {self.gateway.data}")


@pytest.fixture(scope="module")
def world(module_launch: Launcher, images: Images) -> World:
    return World(module_launch, images, "shared")


def test_ctr_pulls_upstream_image_through_mirror(world: World, images: Images) -> None:
    ref = "docker.io/library/base:1.0"
    ok(world.ctr_pull(ref))
    assert world.containerd.image_digest(ref) == base_image(images).manifest.digest
    # containerd resolved the tag with HEAD, and the mirror door answered it (not a 404 to fall back from).
    heads = [
        e
        for e in world.gateway.access_log()
        if (e["door"], e["method"]) == ("mirror", "HEAD")
        and str(e["uri"]).startswith("/v2/library/base/manifests/1.0")
    ]
    assert heads and heads[0]["status"] == 200, heads


def test_skopeo_pulls_upstream_image_through_mirror(world: World, images: Images, tmp_path: Path) -> None:
    digest = world.skopeo.pull(f"{world.mirror}/library/base:1.0", tmp_path)
    assert digest == base_image(images).manifest.digest


def test_second_upstream_under_its_host_path(world: World, images: Images, tmp_path: Path) -> None:
    ref = "ghcr.io/org/tool:2.0"
    ok(world.ctr_pull(ref))
    assert world.containerd.image_digest(ref) == tool_image(images).manifest.digest
    digest = world.skopeo.pull(f"{world.mirror}/ghcr.io/org/tool:2.0", tmp_path)
    assert digest == tool_image(images).manifest.digest
    assert world.ghcr.requests_for("org/tool"), "the ghcr.io stand-in served it"
    assert world.dockerhub.requests_for("ghcr.io") == [], "never sent to Docker Hub as a repository name"


def test_unknown_upstream_image_is_not_found(world: World) -> None:
    pull = world.ctr_pull("docker.io/library/absent:1.0")
    assert pull.returncode != 0
    assert mirror_answered_404(pull.stderr, world.mirror), pull.stderr


def test_registry_door_reads_upstream_names_with_credentials(
    world: World, images: Images, tmp_path: Path
) -> None:
    digest = world.skopeo.pull(f"{world.registry}/library/base:1.0", tmp_path, creds=ALICE)
    assert digest == base_image(images).manifest.digest


def test_tag_hijack_never_reaches_clients_nor_the_upstream(
    world: World, images: Images, tmp_path: Path
) -> None:
    genuine = images.get("acme-genuine", [Layer(400 * 1024, 40)], label="genuine")
    impostor = images.get("acme-impostor", [Layer(400 * 1024, 41)], label="impostor")
    world.launch.seed(world.dockerhub, impostor, "acme/app:1.0")  # someone registers our namespace upstream
    since = len(world.dockerhub.requests())
    world.push_private(genuine, "acme/app:1.0")

    assert (
        world.skopeo.pull(f"{world.registry}/acme/app:1.0", tmp_path, creds=ALICE) == genuine.manifest.digest
    )
    assert world.ctr_pull_private("acme/app:1.0") == genuine.manifest.digest
    # Through the mirror door the name does not exist at all (never the impostor).
    mirrored = world.ctr_pull("docker.io/acme/app:1.0")
    assert mirrored.returncode != 0
    assert mirror_answered_404(mirrored.stderr, world.mirror), mirrored.stderr
    inspect = world.skopeo.inspect_raw(f"docker://{world.mirror}/acme/app:1.0")
    assert inspect.returncode != 0
    assert "manifest unknown" in inspect.stderr, inspect.stderr  # as for a name no upstream has

    assert world.dockerhub.requests_for("acme", since) == []


def test_cache_eviction_spares_private_image_sharing_a_layer(
    world: World, images: Images, tmp_path: Path
) -> None:
    private = private_on_base(images)
    world.skopeo.pull(f"{world.mirror}/library/base:1.0", tmp_path / "warm")
    world.push_private(private, "team/on-base:1.0")
    root = world.cache_root("docker.io")
    shared = private.layers[0].hex
    assert (root / "docker/registry/v2/blobs/sha256" / shared[:2] / shared / "data").exists(), "cached first"

    shutil.rmtree(root)

    digest = world.skopeo.pull(f"{world.registry}/team/on-base:1.0", tmp_path / "after", creds=ALICE)
    assert digest == private.manifest.digest
    assert world.ctr_pull_private("team/on-base:1.0", namespace="evicted") == private.manifest.digest


def test_served_from_cache_when_the_upstream_is_down(
    launch: Launcher, images: Images, tmp_path: Path
) -> None:
    world = World(launch, images, "outage")
    ref = "docker.io/library/base:1.0"
    ok(world.ctr_pull(ref))
    world.skopeo.pull(f"{world.mirror}/ghcr.io/org/tool:2.0", tmp_path / "warm")
    world.wait_until_cached("docker.io", base_image(images))
    world.wait_until_cached("ghcr.io", tool_image(images))
    world.dockerhub.stop()
    world.ghcr.stop()
    # Past nginx's tag micro-cache: tags must now resolve from the Distribution caches themselves.
    time.sleep(TAG_CACHE_SECONDS + 1)

    world.ctr_forget(ref)
    ok(world.ctr_pull(ref))
    assert world.containerd.image_digest(ref) == base_image(images).manifest.digest
    digest = world.skopeo.pull(f"{world.mirror}/ghcr.io/org/tool:2.0", tmp_path / "cold")
    assert digest == tool_image(images).manifest.digest
    # Something never cached cannot be served. Distribution's proxy answers an unreachable upstream with
    # its local tags only; the egress remembers the upstream down, so the door says "not mirrored yet,
    # retry" (503) instead of the cache's "manifest unknown" (docs/troubleshooting.md).
    absent = world.skopeo.inspect_raw(f"docker://{world.mirror}/library/never-pulled:1.0")
    assert absent.returncode != 0
    assert "reading manifest 1.0 in" in absent.stderr and "503" in absent.stderr, absent.stderr
    answers = [
        e
        for e in world.gateway.access_log()
        if e["uri"] == "/v2/library/never-pulled/manifests/1.0" and e["door"] == "mirror"
    ]
    # The cache itself answered 404; the door turned it into 503 while the upstream is remembered down.
    assert {(e["route"], e["status"], e["upstream_status"]) for e in answers} == {
        (cache_route("docker-io", "tag"), 503, "404")
    }, answers


def test_a_hung_cache_costs_a_bounded_wait_and_a_retryable_answer(launch: Launcher) -> None:
    """A cache that stops answering (its own request stuck on a dead peer, here: stopped outright) holds a
    door's request for at most cache_answer_seconds, then once more on a fresh look at the caches
    (templates/again.conf.j2: the one that hung is all there is here), then the client gets a retryable
    503 instead of waiting for its own timeout."""
    upstream = launch.distribution("hung-cache-dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, name="hung-cache")
    default = next(f.default for f in fields(GatewaySettings) if f.name == "upstream_timeout_seconds")
    assert isinstance(default, int)
    bound = cache_answer_seconds(default)  # what the runner renders (it keeps the default)
    (cache,) = [p for p in gateway.children() if cache_key("docker-io") in cmdline(p.pid)]
    os.kill(cache.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = request(
            f"http://{gateway.doors.mirror}/v2/library/never-pulled/manifests/1.0",
            headers={"Accept": ACCEPT},
            timeout=2 * bound + 40,
        )
        waited = time.monotonic() - started
    finally:
        os.kill(cache.pid, signal.SIGCONT)
    assert answer.status == 503 and json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE", answer
    assert 2 * bound - 1 <= waited <= 2 * bound + 10, (waited, bound)
