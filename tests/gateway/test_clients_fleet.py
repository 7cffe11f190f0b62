"""The mirror under a fleet and a degraded upstream, with real clients: 20 skopeo pulls of one image nobody
pulled before cost the upstream one fetch per blob (counted in the upstream's own access log); a client
cut off mid-blob leaves nothing truncated behind; and with the upstream hung, answering 429 or 503, a tag
pulled before is answered from storage within seconds for every client's Accept header, on a second node
that never pulled it too, while a tag never pulled fails fast with an OCI error and a rate-limiting
upstream is left alone for its Retry-After."""

from __future__ import annotations

import hashlib
import http.client
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from client_harness import Images, Launcher
from fault_upstream import FaultUpstream
from production_versions import assert_production
from routing_fixtures import HTTP_SECRET

from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from gateway.images import Image, Layer, MiB

DEFAULTS = GatewaySettings.__dataclass_fields__
UPSTREAM_TIMEOUT = DEFAULTS["upstream_timeout_seconds"].default
TAG_CACHE_SECONDS = DEFAULTS["tag_cache_seconds"].default
FLEET = 20

# The Accept header each client sends for a tag (from their sources: moby distribution/pull_v2.go,
# containerd core/remotes/docker/resolver.go, containers/image manifest.DefaultRequestedManifestMIMETypes
# (skopeo and podman), go-containerregistry remote/descriptor.go (crane), oras-go registry/remote/manifest).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ACCEPTS = {
    "docker": [DOCKER_V2, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, DOCKER_V1],
    "containerd": [DOCKER_V2, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"],
    "skopeo/podman": [
        OCI_MANIFEST,
        DOCKER_V2,
        DOCKER_V1,
        "application/vnd.docker.distribution.manifest.v1+json",
        DOCKER_LIST,
        OCI_INDEX,
    ],  # fmt: skip
    "crane": [
        "application/vnd.docker.distribution.manifest.v1+json",
        DOCKER_V1,
        DOCKER_V2,
        OCI_MANIFEST,
        DOCKER_LIST,
        OCI_INDEX,
    ],  # fmt: skip
    "oras": [
        DOCKER_V2,
        DOCKER_LIST,
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.oci.artifact.manifest.v1+json",
    ],
}


def fleet_image(images: Images) -> Image:
    return images.get("fleet-app", [Layer(20 * MiB, 501), Layer(20 * MiB, 502), Layer(10 * MiB, 503)])


def settings(upstream: str, storage: Path) -> GatewaySettings:
    return GatewaySettings(
        namespaces=("team",),
        users=(User("alice", "alice-secret-1", push=("team",)),),
        upstreams=(Upstream("docker.io", upstream),),
        storage=FilesystemStorage(str(storage)),
        http_secret=HTTP_SECRET,
    )


def get(door: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
        timeout: float = 60.0) -> tuple[int, dict[str, str], bytes, float]:  # fmt: skip
    host, port = door.rsplit(":", 1)
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body, time.monotonic() - started
    finally:
        conn.close()


def blob_gets(upstream_requests: list, since: int = 0) -> Counter[str]:  # noqa: ANN001 - bench.Request
    return Counter(
        r.path.rsplit("/", 1)[1]
        for r in upstream_requests[since:]
        if r.method == "GET" and "/blobs/" in r.path
    )


def test_a_cold_fleet_costs_the_upstream_one_fetch_per_blob(launch: Launcher, images: Images) -> None:
    hub = launch.distribution("fleet-hub")
    image = fleet_image(images)
    launch.seed(hub, image, "library/app:1.0")
    seeded = len(hub.requests())
    gateway = launch.gateway({"docker.io": hub.url}, name="fleet-gw")
    ref = f"{gateway.doors.mirror}/library/app:1.0"

    def pull(i: int) -> str:
        return launch.skopeo.pull(ref, launch.workdir / f"client-{i}")

    with ThreadPoolExecutor(FLEET) as pool:
        digests = list(pool.map(pull, range(FLEET)))
    assert set(digests) == {image.manifest.digest}
    fetched = blob_gets(hub.requests(), seeded)
    unique = {b.digest for b in (image.config, *image.layers)}
    assert set(fetched) == unique
    # One upstream GET per blob for 20 clients (Distribution alone streams every concurrent miss).
    assert fetched == Counter({d: 1 for d in unique}), fetched
    mirror_gets = [e for e in gateway.access_log() if e["route"] == "cache_docker_io_blob"]
    assert len(mirror_gets) == FLEET * len(unique)


def test_a_client_cut_off_mid_blob_leaves_no_truncated_blob(launch: Launcher, images: Images) -> None:
    hub = launch.distribution("cut-hub")
    image = images.get("cut-app", [Layer(40 * MiB, 511)])
    launch.seed(hub, image, "library/cut:1.0")
    seeded = len(hub.requests())
    gateway = launch.gateway({"docker.io": hub.url}, name="cut-gw")
    layer = image.layers[0]
    path = f"/v2/library/cut/blobs/{layer.digest}"
    host, port = gateway.doors.mirror.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    assert len(resp.read(MiB)) == MiB
    conn.sock.close()  # the first client goes away after 1 MiB
    conn.close()
    status, headers, body, _ = get(gateway.doors.mirror, path)
    assert status == 200
    assert int(headers["Content-Length"]) == len(body) == layer.size
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    # A range of it, and a HEAD, are answered from what was stored, not a short copy.
    status, headers, part, _ = get(gateway.doors.mirror, path, headers={"Range": "bytes=1000-1999"})
    assert (status, part) == (206, body[1000:2000])
    status, headers, _, _ = get(gateway.doors.mirror, path, method="HEAD")
    assert (status, int(headers["Content-Length"])) == (200, layer.size)
    assert sum(blob_gets(hub.requests(), seeded).values()) <= 2  # the cut-off fill, then at most a retry


class Degraded:
    """A Docker Hub stand-in behind a fault switch, two gateway nodes on one storage (the second never
    pulls anything itself), and one image pulled through the first node."""

    def __init__(self, launch: Launcher, images: Images) -> None:
        self.hub = launch.distribution("degraded-hub")
        self.image = images.get("degraded-app", [Layer(2 * MiB, 521), Layer(MiB, 522)])
        launch.seed(self.hub, self.image, "library/app:1.0")
        launch.seed(self.hub, images.get("degraded-other", [Layer(MiB, 523)]), "library/other:1.0")
        self.fault = FaultUpstream(self.hub.url).start()
        launch._stops.append(self.fault.stop)  # noqa: SLF001 - stopped with everything else
        storage = launch.workdir / "shared-storage"
        self.nodes = [
            launch.local_gateway(settings(self.fault.url, storage), name=f"node-{i}") for i in (1, 2)
        ]
        self.doors = [f"127.0.0.1:{n.mirror_port}" for n in self.nodes]
        self.skopeo = launch.skopeo
        self.workdir = launch.workdir
        for node in self.nodes:
            assert_production(node.versions)
        assert (
            launch.skopeo.pull(f"{self.doors[0]}/library/app:1.0", launch.workdir / "first")
            == self.image.manifest.digest
        )

    def expire_tag_cache(self) -> None:
        """Past nginx's tag micro-cache: what follows is answered by the cache and its storage."""
        time.sleep(TAG_CACHE_SECONDS + 1)


@pytest.fixture(scope="module")
def degraded(module_launch: Launcher, images: Images) -> Degraded:
    return Degraded(module_launch, images)


@pytest.mark.parametrize("mode", ["hang", "429", "503"])
def test_a_pulled_tag_is_served_for_every_client_on_every_node_while_the_upstream_fails(
    degraded: Degraded, mode: str
) -> None:
    degraded.fault.set(mode)
    try:
        degraded.expire_tag_cache()
        slowest = 0.0
        for door in degraded.doors:
            for client, accept in ACCEPTS.items():
                for method in ("HEAD", "GET"):
                    status, headers, body, seconds = get(
                        door,
                        "/v2/library/app/manifests/1.0",
                        method=method,
                        headers={"Accept": ", ".join(accept)},
                    )
                    assert status == 200, (door, client, method, status, body)
                    assert headers["Docker-Content-Digest"] == degraded.image.manifest.digest
                    if method == "GET":
                        assert body == degraded.image.manifest_bytes
                    slowest = max(slowest, seconds)
        # At worst one upstream timeout: after it, the egress answers for the upstream at once.
        assert slowest < UPSTREAM_TIMEOUT + 3, slowest
        # A real client pulls the whole image from the node that never pulled it.
        pulled = degraded.skopeo.pull(
            f"{degraded.doors[1]}/library/app:1.0", degraded.workdir / f"second-node-{mode}"
        )
        assert pulled == degraded.image.manifest.digest
    finally:
        degraded.fault.set("pass")
