"""The mirror under a fleet and a degraded upstream, with real clients: 20 skopeo pulls of one image nobody
pulled before cost the upstream one fetch per blob (counted in the upstream's own access log); a client
cut off mid-blob leaves nothing truncated behind; and with the upstream hung, answering 429 or 503, a tag
pulled before is answered from storage within seconds for every client's Accept header, on a second node
that never pulled it too, while a tag never pulled fails fast with an OCI error and a rate-limiting
upstream is left alone for its Retry-After."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from gateway import names
from gateway.bench.images import Image, Layer, MiB
from gateway.config import FilesystemStorage, GatewaySettings, S3Storage, Upstream, User
from gateway.local.runner import LocalGateway
from gateway.names import cache_key, cache_route
from gateway.upkeep.status import Figures, scrape
from tests.gateway.client_harness import Images, Launcher
from tests.gateway.fault_upstream import DOWNLOAD, TOKEN, FaultUpstream
from tests.gateway.production_versions import assert_production
from tests.gateway.routing_fixtures import HTTP_SECRET, digest_of

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
    mirror_gets = [e for e in gateway.access_log() if e["route"] == cache_route("docker-io", "blob")]
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
    assert digest_of(body) == layer.digest
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
        self.other = images.get("degraded-other", [Layer(MiB, 523)])  # never pulled through the mirror
        launch.seed(self.hub, self.other, "library/other:1.0")
        self.fault = FaultUpstream(self.hub.url).start()
        launch.on_close(self.fault.stop)
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


@pytest.mark.parametrize("mode", ["hang", "429", "503"])
def test_what_was_never_pulled_fails_fast_with_a_registry_error_while_the_upstream_fails(
    degraded: Degraded, mode: str
) -> None:
    degraded.fault.set(mode)
    try:
        for door in degraded.doors:
            for method, path in (
                ("GET", "/v2/library/other/manifests/1.0"),
                ("HEAD", "/v2/library/other/manifests/1.0"),
                ("GET", f"/v2/library/other/manifests/{degraded.other.manifest.digest}"),
                ("GET", f"/v2/library/other/blobs/{degraded.other.layers[0].digest}"),
            ):
                status, headers, body, seconds = get(
                    door, path, method=method, headers={"Accept": ", ".join(ACCEPTS["docker"])}
                )
                # Within about one upstream timeout, never a hang; an answer Docker and containerd retry.
                assert seconds < UPSTREAM_TIMEOUT + 3, (door, method, path, seconds)
                assert status == 503, (door, method, path, status, body)
                assert int(headers["Retry-After"]) >= 1
                if method == "GET":
                    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        degraded.fault.set("pass")


def test_a_rate_limiting_upstream_is_left_alone_for_its_retry_after(degraded: Degraded) -> None:
    degraded.fault.set("429")
    try:
        degraded.expire_tag_cache()
        for _ in range(5):
            for door in degraded.doors:
                for path in ("/v2/library/app/manifests/1.0", "/v2/library/other/manifests/1.0"):
                    get(door, path, headers={"Accept": ", ".join(ACCEPTS["containerd"])})
        # 20 tag reads on two nodes: each node's egress asked the upstream once, then waited out its
        # Retry-After (30 s) without asking again.
        assert degraded.fault.count("429") <= len(degraded.nodes), degraded.fault.paths
    finally:
        degraded.fault.set("pass")


def remote_url(node: LocalGateway) -> str:
    """The URL a node's cache calls its upstream by: the node's egress server."""
    (upstream,) = node.settings.upstreams
    assert node.bundle is not None, "not started"
    files = node.bundle.services[cache_key(upstream.id)].files
    config = yaml.safe_load(next(f.content for f in files if f.path.endswith(".yml")))
    return config["proxy"]["remoteurl"]


def test_token_realm_and_blob_redirects_go_through_the_egress_signed(
    launch: Launcher, images: Images
) -> None:
    """As Docker Hub does, the upstream asks for a token from a realm and redirects blob GETs elsewhere:
    the cache reaches both through the egress, with its login sent to the realm and to nothing else."""
    hub = launch.distribution("token-hub")
    image = images.get("token-app", [Layer(MiB, 531)])
    launch.seed(hub, image, "library/app:1.0")
    fault = FaultUpstream(hub.url, login="puller:hub-secret", redirect_blobs=True).start()
    launch.on_close(fault.stop)
    upstream = Upstream("docker.io", fault.url, username="puller", password="hub-secret")  # noqa: S106
    node = launch.local_gateway(
        dataclasses.replace(settings(fault.url, launch.workdir / "token-storage"), upstreams=(upstream,)),
        name="token-gw",
    )
    door = f"127.0.0.1:{node.mirror_port}"
    assert (
        launch.skopeo.pull(f"{door}/library/app:1.0", launch.workdir / "token-pull") == image.manifest.digest
    )
    basic = "Basic " + base64.b64encode(b"puller:hub-secret").decode()
    tokens = [a for p, a in fault.authorizations if p.startswith("/token")]
    assert basic in tokens
    downloads = [(p, a) for p, a in fault.authorizations if p.startswith(DOWNLOAD)]
    assert {p.rsplit("/", 1)[1] for p, _ in downloads} >= {image.layers[0].digest}
    assert all(a == "" for _, a in downloads), downloads  # no upstream token sent to a download URL
    assert not [a for p, a in fault.authorizations if not p.startswith("/token") and a.startswith("Basic")]

    # The egress hands out signed URLs and fetches only those: not an open proxy for its port's callers.
    egress = remote_url(node).removeprefix("http://")
    status, headers, _, _ = get(
        egress,
        f"/v2/library/app/blobs/{image.layers[0].digest}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 307
    # No connection of a cache outlives its request: one to a node killed hard would hang (egress.conf.j2).
    assert headers["Connection"] == "close"
    signed = urlsplit(headers["Location"])
    via = names.uri(names.VIA)  # /_owncr/via/
    assert signed.netloc == egress and signed.path.startswith(f"{via}{names.VIA_REDIRECT}/")
    status, _, body, _ = get(egress, signed.path)
    assert status == 200 and digest_of(body) == image.layers[0].digest
    kind, sig, rest = signed.path.removeprefix(via).split("/", 2)
    for forged in (
        f"{via}{kind}/{'0' * 32}/{rest}",  # a made-up signature
        f"{via}{kind}/{sig}/{rest.replace('127.0.0.1', '127.0.0.2', 1)}",  # another host
        f"{via}{names.VIA_REALM}/{sig}/{rest}",  # a redirect's signature used for the realm (login sent)
        f"{via}{kind}/{sig}/{rest}x",  # another path
    ):
        status, _, body, _ = get(egress, forged)
        assert status == 403, (forged, status, body)
        assert json.loads(body)["errors"][0]["code"] == "DENIED"


def fetch(door: str, path: str) -> bytes | None:
    """A blob's body, or None when it was cut off (fewer bytes than its Content-Length)."""
    host, port = door.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, (path, resp.status, resp.read()[:300])
        try:
            return resp.read()
        except http.client.IncompleteRead:
            return None
    finally:
        conn.close()


@pytest.mark.parametrize("redirect", [False, True], ids=["blob", "download"])
def test_bytes_that_do_not_match_their_digest_are_never_kept(
    launch: Launcher, images: Images, redirect: bool
) -> None:
    """The upstream (or a CDN or a proxy in between) answers a blob with other bytes once: the clients
    streamed them are cut off, the cache stores nothing, no door keeps it, and every later client gets
    the real blob, for one more upstream fetch. Also with a fleet asking at once."""
    hub = launch.distribution(f"liar-hub-{int(redirect)}")
    image = images.get(f"liar-app-{int(redirect)}", [Layer(4 * MiB, 551), Layer(4 * MiB, 552)])
    launch.seed(hub, image, "library/app:1.0")
    fault = FaultUpstream(hub.url, redirect_blobs=redirect).start()
    launch.on_close(fault.stop)
    node = launch.local_gateway(
        settings(fault.url, launch.workdir / f"liar-storage-{int(redirect)}"), name=f"liar-{int(redirect)}"
    )
    door = f"127.0.0.1:{node.mirror_port}"

    def hub_gets(digest: str) -> int:
        return sum(1 for r in hub.requests() if r.method == "GET" and r.path.endswith(f"/blobs/{digest}"))

    one, fleet = image.layers
    fault.lie(1)
    assert fetch(door, f"/v2/library/app/blobs/{one.digest}") is None  # cut off
    assert fault.lied == 1
    for _ in range(3):  # the real bytes, fetched once more, then kept
        body = fetch(door, f"/v2/library/app/blobs/{one.digest}")
        assert body is not None and digest_of(body) == one.digest
    assert hub_gets(one.digest) == 2

    fault.lie(1)
    with ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(lambda _: fetch(door, f"/v2/library/app/blobs/{fleet.digest}"), range(6)))
    assert fault.lied == 2
    complete = [b for b in bodies if b is not None]
    assert all(digest_of(b) == fleet.digest for b in complete), len(complete)
    assert len(complete) < 6  # someone was streamed the lie, and cut off
    later = fetch(door, f"/v2/library/app/blobs/{fleet.digest}")
    assert later is not None and digest_of(later) == fleet.digest
    assert "is not sha256:" in node.log_path("nginx").read_text()


def test_a_failed_download_host_is_remembered_without_the_upstream(launch: Launcher, images: Images) -> None:
    """A blob redirect to a download host that fails (a dead CDN host; here the stand-in's download path
    answers 503) fails that download, and the egress remembers the host: its next download there is
    answered at once, while the upstream itself is not marked down (other names still pull; its gauge
    stays 0), so the doors answer as usual."""
    hub = launch.distribution("cdn-hub")
    image = images.get("cdn-app", [Layer(MiB, 541)])
    other = images.get("cdn-other", [Layer(MiB, 542)])
    launch.seed(hub, image, "library/app:1.0")
    launch.seed(hub, other, "library/other:1.0")
    fault = FaultUpstream(hub.url, redirect_blobs=True, downloads_fail=True).start()
    launch.on_close(fault.stop)
    node = launch.local_gateway(settings(fault.url, launch.workdir / "cdn-storage"), name="cdn-gw")
    door = f"127.0.0.1:{node.mirror_port}"
    blob = f"/v2/library/app/blobs/{image.layers[0].digest}"

    def figures() -> Figures:
        return Figures(scrape(f"{node.metrics_url}/metrics"))

    def spared() -> float:
        return figures().total("owncr_upstream_spared_total")

    assert get(door, blob)[0] in (500, 502, 503)
    before = spared()
    assert get(door, f"/v2/library/other/blobs/{other.layers[0].digest}")[0] in (500, 502, 503)
    assert spared() > before  # the second download host visit was answered from memory
    status, _, body, _ = get(
        door, "/v2/library/other/manifests/1.0", headers={"Accept": image.manifest.media_type}
    )
    assert status == 200, body  # the upstream is not remembered as down
    assert figures().total("owncr_upstream_unavailable") == 0


OUTAGE_SECONDS = 6  # upstream_down_seconds of the outage test: how long a node remembers a failure


@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_an_outage_one_node_saw_is_every_node_s_answer(launch: Launcher, kind: str) -> None:
    """In production a cache reaches the egress of whichever node Swarm picks, so the node whose door
    answers a miss may not be the one whose egress saw the upstream fail. The egress publishes what it
    learns to the store (egress.js failed) before the cache hears of it, and every door consults it
    before answering a miss (egress.js missed): a never-pulled name is a retryable 503 on every node.

    Here the other node's cache answers its miss without any failure of its own (its upstream stand-in
    simply has no such name), which is what its door sees in production when the cache's call went
    through the node that remembers the outage. Without the store, that door answered 404: final."""
    failing_hub = launch.distribution("outage-hub")
    fault = FaultUpstream(failing_hub.url).start()
    launch.on_close(fault.stop)
    quiet_hub = launch.distribution("outage-quiet-hub")
    if kind == "s3":
        from tests.gateway.s3_server import ACCESS_KEY, SECRET_KEY

        s3 = launch.s3_server()
        endpoint = f"http://127.0.0.1:{s3.port}"
        storage: FilesystemStorage | S3Storage = S3Storage(s3.bucket, endpoint, ACCESS_KEY, SECRET_KEY)
    else:
        storage = FilesystemStorage(str(launch.workdir / "outage-storage"))

    def node(upstream: str, name: str) -> LocalGateway:
        base = dataclasses.replace(settings(upstream, launch.workdir), storage=storage)
        return launch.local_gateway(
            dataclasses.replace(base, upstream_down_seconds=OUTAGE_SECONDS), name=name
        )

    saw_it, other = node(fault.url, "saw-it"), node(quiet_hub.url, "other")
    path = "/v2/library/never-pulled/manifests/1.0"
    fault.set("503")
    try:
        status, _, _, _ = get(f"127.0.0.1:{saw_it.mirror_port}", path)
        assert status == 503
        status, headers, body, _ = get(f"127.0.0.1:{other.mirror_port}", path)
        assert status == 503, body
        assert 1 <= int(headers["Retry-After"]) <= OUTAGE_SECONDS
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        fault.set("pass")
    # Once the outage's window has passed, a miss is a miss again, on every node.
    time.sleep(OUTAGE_SECONDS + 1)
    status, _, body, _ = get(f"127.0.0.1:{other.mirror_port}", path)
    assert status == 404, body
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_a_cache_that_starts_while_its_upstream_fails_keeps_its_login(
    launch: Launcher, images: Images
) -> None:
    """Distribution's proxy reads the token realm its upstream login is for once, from the answer to the
    ping it sends as it starts (registry/proxy/proxyauth.go, configureAuth): a cache rescheduled during an
    outage got the egress's failure, no realm, and pulled anonymously until its next restart. The egress
    answers that ping with the upstream's last challenge instead, kept in the store by whichever node saw
    it: here the first node, before the second one (its nginx and its cache new) starts in the outage."""
    hub = launch.distribution("login-hub")
    image = images.get("login-later", [Layer(MiB, 542)])
    launch.seed(hub, image, "library/later:1.0")
    fault = FaultUpstream(hub.url, login="puller:hub-secret").start()
    launch.on_close(fault.stop)
    upstream = Upstream("docker.io", fault.url, username="puller", password="hub-secret")  # noqa: S106
    shared = dataclasses.replace(
        settings(fault.url, launch.workdir / "login-storage"),
        upstreams=(upstream,),
        upstream_down_seconds=OUTAGE_SECONDS,
    )
    launch.local_gateway(shared, name="login-first")  # its cache's ping: the challenge, kept
    fault.set("503")
    try:
        second = launch.local_gateway(shared, name="login-second")
    finally:
        fault.set("pass")
    time.sleep(OUTAGE_SECONDS + 1)  # the second node's memory of the outage has passed
    since = len(fault.authorizations)
    door = f"127.0.0.1:{second.mirror_port}"
    assert (
        launch.skopeo.pull(f"{door}/library/later:1.0", launch.workdir / "login-pull")
        == image.manifest.digest
    )
    basic = "Basic " + base64.b64encode(b"puller:hub-secret").decode()
    assert basic in [a for p, a in fault.authorizations[since:] if p.startswith("/token")]
