"""Blob downloads straight from the bucket (`python -m gateway run --s3-endpoint ... --blob-redirect`),
with real clients on moto's S3 server (tests/gateway/s3_server.py checks presigned URLs as S3 does):
skopeo, containerd's ctr and dockerd pull private and cached images through both doors, every blob GET
answered by nginx with a small 307 to a presigned URL that carries none of the door's credentials; a
cache miss still streams from the upstream; uploads, manifests, tags and referrers never redirect; an
unauthorised request gets the router's refusal and no URL; an expired or altered URL fails."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import secrets
import time
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.bench.images import Image, Layer, MiB, write_docker_archive
from gateway.config import GatewaySettings, S3Storage, Upstream, User
from gateway.render.nginx import REDIRECT_FILL_SECONDS
from tests.gateway.client_harness import (
    USERS,
    Containerd,
    Dockerd,
    GatewayProcess,
    Images,
    Launcher,
    PlainRegistry,
    ok,
    write_hosts_toml,
)
from tests.gateway.routing_fixtures import ACCEPT, request
from tests.gateway.s3_server import S3_HOST, S3Server, Seen

pytestmark = pytest.mark.docker
ALICE = f"alice:{USERS['alice']}"
# A 307 is headers plus a presigned URL: a few hundred bytes, wherever the blob is many MiB.
SMALL_ANSWER = 2048
# Distribution 3.1.1's s3-aws driver presigns for 20 minutes (RedirectURL: `expiresIn := 20 * time.Minute`).
PRESIGN_SECONDS = 20 * 60


class World:
    """moto + a Docker Hub stand-in seeded with one image, the gateway on S3 with redirects (through its
    command line), containerd and dockerd (registry-mirrors: the mirror door)."""

    def __init__(self, launch: Launcher, images: Images) -> None:
        self.s3: S3Server = launch.s3_server()
        self.dockerhub: PlainRegistry = launch.distribution("redirect-dockerhub")
        self.base = images.get("redirect-base", [Layer(3 * MiB, 80), Layer(200 * 1024, 81)])
        launch.seed(self.dockerhub, self.base, "library/base:1.0")
        flags = ["--s3-endpoint", self.s3.endpoint, "--s3-bucket", self.s3.bucket, "--blob-redirect"]
        self.gateway: GatewayProcess = launch.gateway(
            {"docker.io": self.dockerhub.url}, name="redirect", extra_args=flags, env=self.s3.credentials
        )
        self.registry = self.gateway.doors.registry
        self.mirror = self.gateway.doors.mirror
        self.skopeo = launch.skopeo
        self.private = images.get("redirect-app", [Layer(5 * MiB, 82), Layer(300 * 1024, 83)])
        ok(self.skopeo.copy(self.private.ref, f"docker://{self.registry}/team/app:1.0", dest_creds=ALICE))
        self.containerd: Containerd = launch.containerd()
        self.hosts = launch.workdir / "redirect-certs.d"
        write_hosts_toml(self.hosts, "docker.io", f"http://{self.mirror}")
        self.dockerd: Dockerd = launch.dockerd(
            {
                "registry-mirrors": [f"http://{self.mirror}"],
                "insecure-registries": [self.registry, self.mirror],
            }
        )

    def requests(self) -> list[dict[str, object]]:
        """nginx's request lines (the access log also holds password-check lines)."""
        return [e for e in self.gateway.access_log() if "uri" in e]

    def log_since(self, mark: int) -> list[dict[str, object]]:
        return self.requests()[mark:]

    def mark(self) -> tuple[int, int]:
        return len(self.requests()), len(self.s3.check.requests())

    def blob_gets(self, entries: list[dict[str, object]], name: str) -> list[dict[str, object]]:
        return [
            e
            for e in entries
            if e["method"] == "GET"
            and f"/v2/{name}/blobs/sha256:" in str(e["uri"])
            and "uploads" not in str(e["uri"])
        ]

    def assert_redirected(self, since: tuple[int, int], name: str, image: Image) -> None:
        """Every blob of `image` the client fetched through a door since `since` was answered 307 with a
        small body, and then fetched from the bucket with the presigned URL alone."""
        entries = self.log_since(since[0])
        gets = self.blob_gets(entries, name)
        # containerd adds `?ns=docker.io` to what it sends a mirror.
        fetched = {str(e["uri"]).split("?")[0].rsplit("/", 1)[1] for e in gets}
        assert {b.digest for b in image.layers} <= fetched, entries
        assert all(e["status"] == 307 and int(str(e["bytes_out"])) < SMALL_ANSWER for e in gets), [
            (e["status"], e.get("cache"), e["uri"]) for e in gets
        ]
        from_bucket = [s for s in self.s3.check.requests()[since[1] :] if s.presigned]
        for layer in image.layers:
            hits = [
                s for s in from_bucket if s.path.endswith(f"/blobs/sha256/{layer.hex[:2]}/{layer.hex}/data")
            ]
            assert hits and all(s.status == 200 for s in hits), (layer.digest, from_bucket)
        assert_no_door_credentials(from_bucket)


def assert_no_door_credentials(requests: list[Seen]) -> None:
    """Nothing of the door's login reached the bucket: no Authorization header, no user or password in
    the URL, in any header."""
    for seen in requests:
        assert "authorization" not in seen.headers, seen
        everything = f"{seen.path} {seen.query} {seen.headers}"
        for user, password in USERS.items():
            assert (
                password not in everything
                and b64encode(f"{user}:{password}".encode()).decode() not in everything
            )


def assert_writes_not_redirected(entries: list[dict[str, object]], name: str) -> None:
    """Uploads (POST, PATCH, PUT) and manifests are answered in place. A blob HEAD is a read: a client
    checking the blob it just pushed may be redirected (docker does this), and follows."""
    pushed = [e for e in entries if f"/v2/{name}/" in str(e["uri"])]
    writes = [e for e in pushed if e["method"] in ("POST", "PATCH", "PUT")]
    assert writes and all(e["status"] in (201, 202) for e in writes), writes
    redirected = [(e["method"], e["uri"]) for e in pushed if e["status"] == 307]
    assert all(m == "HEAD" and "/blobs/sha256:" in str(u) for m, u in redirected), redirected


@pytest.fixture(scope="module")
def world(module_launch: Launcher, images: Images) -> World:
    return World(module_launch, images)


@dataclass(frozen=True)
class Answer:
    status: int
    location: str | None
    body: bytes


def _request(door: str, method: str, path: str, creds: str | None = None) -> Answer:
    """One request, redirects not followed (http.client): the door's own answer."""
    host, port = door.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    # Distribution answers a tag of an OCI manifest only to a client that accepts one.
    headers = {
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    }
    headers |= {"Authorization": "Basic " + b64encode(creds.encode()).decode()} if creds else {}
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    answer = Answer(response.status, response.getheader("Location"), response.read())
    conn.close()
    return answer


def test_skopeo_push_is_not_redirected_and_pull_is(world: World, tmp_path: Path) -> None:
    # The push in World: uploads, the manifest PUT, blob HEADs of a new image: nothing answered 307.
    pushed = [e for e in world.requests() if "/v2/team/app/" in str(e["uri"])]
    assert pushed and all(e["status"] != 307 for e in pushed), [
        (e["method"], e["uri"], e["status"]) for e in pushed
    ]
    since = world.mark()
    ref = f"{world.registry}/team/app:1.0"
    assert world.skopeo.pull(ref, tmp_path / "oci", creds=ALICE) == world.private.manifest.digest
    world.assert_redirected(since, "team/app", world.private)
    manifests = [e for e in world.log_since(since[0]) if "/manifests/" in str(e["uri"])]
    assert manifests and all(e["status"] == 200 for e in manifests), manifests
    big = world.private.layers[0]
    keys = list(world.s3.keys())
    assert any(k == f"private/docker/registry/v2/blobs/sha256/{big.hex[:2]}/{big.hex}/data" for k in keys), (
        keys
    )


def past_fill_window() -> None:
    """nginx serves a blob it just streamed from a cache's upstream to the clients that waited for it,
    for REDIRECT_FILL_SECONDS (nginx's clock counts whole seconds: up to one more); after that the cache
    answers with its redirect."""
    time.sleep(REDIRECT_FILL_SECONDS + 1.5)


def test_cache_miss_streams_from_upstream_then_redirects(world: World, tmp_path: Path) -> None:
    since = world.mark()
    ref = f"{world.mirror}/library/base:1.0"
    assert world.skopeo.pull(ref, tmp_path / "first") == world.base.manifest.digest
    first = world.blob_gets(world.log_since(since[0]), "library/base")
    # Not in the bucket yet: streamed through the cache (and stored), as without redirects.
    assert first and all(e["status"] == 200 for e in first), first
    assert world.dockerhub.requests_for("library/base")
    past_fill_window()
    since = world.mark()
    assert world.skopeo.pull(ref, tmp_path / "second") == world.base.manifest.digest
    world.assert_redirected(since, "library/base", world.base)
    # The registry door serves cached names the same way.
    since = world.mark()
    reg_ref = f"{world.registry}/library/base:1.0"
    assert world.skopeo.pull(reg_ref, tmp_path / "third", creds=ALICE) == world.base.manifest.digest
    world.assert_redirected(since, "library/base", world.base)


def test_ctr_pulls_private_and_cached_from_the_bucket(world: World) -> None:
    since = world.mark()
    ref = f"{world.registry}/team/app:1.0"
    ok(world.containerd.ctr("images", "pull", "--plain-http", "--user", ALICE, ref))
    assert world.containerd.image_digest(ref) == world.private.manifest.digest
    world.assert_redirected(since, "team/app", world.private)

    ok(world.skopeo.copy(world.base.ref, f"docker://{world.dockerhub.host}/library/cached:1.0"))
    warm = world.mark()
    ok(
        world.containerd.ctr(
            "images", "pull", "--hosts-dir", str(world.hosts), "docker.io/library/cached:1.0"
        )
    )
    assert world.blob_gets(world.log_since(warm[0]), "library/cached"), (
        "the first pull went through the mirror"
    )
    ok(world.containerd.ctr("images", "rm", "--sync", "docker.io/library/cached:1.0"))
    past_fill_window()
    since = world.mark()
    ok(
        world.containerd.ctr(
            "images", "pull", "--hosts-dir", str(world.hosts), "docker.io/library/cached:1.0"
        )
    )
    assert world.containerd.image_digest("docker.io/library/cached:1.0") == world.base.manifest.digest
    world.assert_redirected(since, "library/cached", world.base)


def test_docker_pulls_private_and_cached_from_the_bucket(
    world: World, images: Images, tmp_path: Path
) -> None:
    docker = world.dockerd.docker
    ok(docker("login", world.registry, "-u", "alice", "--password-stdin", stdin=USERS["alice"]))
    since = world.mark()
    ok(docker("pull", f"{world.registry}/team/app:1.0"))
    world.assert_redirected(since, "team/app", world.private)
    inspect = ok(docker("image", "inspect", "--format", "{{.Id}}", f"{world.registry}/team/app:1.0"))
    assert inspect.stdout.strip() == world.private.config.digest

    # A push from docker (gzipped layers, new digests): uploads and the manifest are never redirected.
    own = images.get("redirect-docker-own", [Layer(2 * MiB, 84)])
    name = f"{world.registry}/team/own:1.0"
    ok(docker("load", "-i", str(write_docker_archive(own, tmp_path / "own.tar", name))))
    since = world.mark()
    ok(docker("push", name))
    assert_writes_not_redirected(world.log_since(since[0]), "team/own")

    ok(world.skopeo.copy(world.base.ref, f"docker://{world.dockerhub.host}/library/fromdocker:1.0"))
    # Warm the cache first: a miss streams (test above), the pull below must be a hit.
    world.skopeo.pull(f"{world.mirror}/library/fromdocker:1.0", tmp_path / "warm")
    past_fill_window()
    since = world.mark()
    ok(docker("pull", "fromdocker:1.0"))
    world.assert_redirected(since, "library/fromdocker", world.base)


def test_unauthorised_requests_get_the_refusal_never_a_url(world: World) -> None:
    blob = f"/v2/team/app/blobs/{world.private.layers[0].digest}"
    since = world.mark()
    for method in ("GET", "HEAD"):
        for creds in (None, "alice:wrong-password", "nobody:alice-secret-1"):
            answer = _request(world.registry, method, blob, creds)
            assert answer.status == 401 and answer.location is None, (method, creds)
        # The mirror door does not know private names at all.
        answer = _request(world.mirror, method, blob)
        assert answer.status == 404 and answer.location is None, method
    # A write to a cached name is refused before any registry sees it.
    answer = _request(world.registry, "POST", "/v2/library/base/blobs/uploads/", ALICE)
    assert answer.status == 403 and answer.location is None
    assert not any(s.presigned for s in world.s3.check.requests()[since[1] :])


def test_a_user_without_pull_rights_gets_the_refusal_never_a_url(world: World, launch: Launcher) -> None:
    """Per-user rights (the command line grants every user every namespace, so through the Python API, on
    the same bucket and root): the router refuses bob before any registry could sign a URL for him."""
    storage = S3Storage(
        bucket=world.s3.bucket,
        endpoint=world.s3.endpoint,
        access_key=world.s3.credentials["AWS_ACCESS_KEY_ID"],
        secret_key=world.s3.credentials["AWS_SECRET_ACCESS_KEY"],
        redirect=True,
    )
    settings = GatewaySettings(
        namespaces=("team", "acme"),
        users=(User("alice", USERS["alice"], pull=("team",)), User("bob", USERS["bob"], pull=("acme",))),
        upstreams=(Upstream("docker.io", world.dockerhub.url),),
        storage=storage,
        http_secret=secrets.token_hex(16),
    )
    door = launch.local_gateway(settings).registry_url.removeprefix("http://")
    blob = f"/v2/team/app/blobs/{world.private.layers[0].digest}"
    for method in ("GET", "HEAD"):
        assert _request(door, method, blob, ALICE).status == 307, method  # the control: alice may pull
        answer = _request(door, method, blob, f"bob:{USERS['bob']}")
        assert answer.status == 403 and answer.location is None, (method, answer.status)
    body = _request(door, "GET", blob, f"bob:{USERS['bob']}").body
    assert b'"DENIED"' in body and b"may not pull from team" in body, body


def test_manifests_tags_and_referrers_never_redirect(world: World) -> None:
    digest = world.private.manifest.digest
    for path in (
        "/v2/team/app/manifests/1.0",
        f"/v2/team/app/manifests/{digest}",
        "/v2/team/app/tags/list",
        f"/v2/team/app/referrers/{digest}",
    ):
        for method in ("GET", "HEAD"):
            answer = _request(world.registry, method, path, ALICE)
            # Answered in place: HEAD on tags/list is Distribution's 405, the referrers API is the door's
            # own (an empty index here); the point is that none of them is a 307.
            expected = 405 if method == "HEAD" and path.endswith("/tags/list") else 200
            assert answer.status == expected and answer.location is None, (
                method,
                path,
                answer.status,
            )


@pytest.fixture
def clock(world: World) -> Iterator[PresignCheckClock]:
    yield PresignCheckClock(world)
    world.s3.check.clock_skew = dt.timedelta(0)


class PresignCheckClock:
    def __init__(self, world: World) -> None:
        self.world = world

    def later(self, seconds: int) -> None:
        self.world.s3.check.clock_skew = dt.timedelta(seconds=seconds)


def _fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(method, f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_presigned_url_is_short_lived_and_cannot_be_altered(world: World, clock: PresignCheckClock) -> None:
    layer = world.private.layers[0]
    answer = _request(world.registry, "GET", f"/v2/team/app/blobs/{layer.digest}", ALICE)
    assert answer.status == 307
    location = answer.location or ""
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.hostname == S3_HOST and parts.path.startswith(f"/{world.s3.bucket}/private/"), location
    assert int(query["X-Amz-Expires"]) == PRESIGN_SECONDS and query["X-Amz-SignedHeaders"] == "host"
    status, body = _fetch(location)
    assert status == 200 and hashlib.sha256(body).hexdigest() == layer.hex

    # HEAD is redirected too, to a URL signed for HEAD only.
    head = _request(world.registry, "HEAD", f"/v2/team/app/blobs/{layer.digest}", ALICE)
    assert head.status == 307
    head_url = head.location or ""
    assert _fetch(head_url, "HEAD")[0] == 200
    assert _fetch(head_url, "GET")[0] == 403

    # Whoever holds the URL cannot stretch it: the expiry is part of what is signed.
    stretched = location.replace(f"X-Amz-Expires={PRESIGN_SECONDS}", "X-Amz-Expires=604800")
    status, body = _fetch(stretched)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # Nor point it at another blob.
    other = world.private.layers[1]
    moved = location.replace(layer.hex, other.hex)
    status, body = _fetch(moved)
    assert status == 403 and b"SignatureDoesNotMatch" in body

    clock.later(PRESIGN_SECONDS - 60)
    assert _fetch(location)[0] == 200
    clock.later(PRESIGN_SECONDS + 60)
    status, body = _fetch(location)
    assert status == 403 and b"Request has expired" in body


# Storage requests per private read, without the per-replica descriptor cache (registry_config.py): the
# repository's link and the blob's data are looked up in the bucket each time. Measured with moto, the
# same reads with Distribution's in-memory cache: 0, 0 and 1 (docs/oci.md). The bound catches a read that
# suddenly costs more; that a read costs anything is what keeps a delete true on every replica.
READ_COSTS = {"blob HEAD": 7, "blob GET (redirected)": 7, "manifest GET by digest": 3}


def test_private_reads_ask_storage_at_a_bounded_cost(world: World) -> None:
    blob = f"http://{world.registry}/v2/team/app/blobs/{world.private.layers[1].digest}"
    manifest = f"http://{world.registry}/v2/team/app/manifests/{world.private.manifest.digest}"
    auth = ("alice", USERS["alice"])
    reads = {
        "blob HEAD": lambda: request(blob, "HEAD", auth=auth),
        "blob GET (redirected)": lambda: request(blob, auth=auth),
        "manifest GET by digest": lambda: request(manifest, auth=auth, headers={"Accept": ACCEPT}),
    }
    measured = {}
    for label, read in reads.items():
        read()  # a first read may cost more (the registry finds its way): not what is measured
        before = len(world.s3.check.requests())
        for _ in range(10):
            assert read().status in (200, 307), label
        api = [s for s in world.s3.check.requests()[before:] if not s.presigned]
        measured[label] = len(api) / 10
    print(f"S3 requests per private read: {measured}")
    assert all(measured[label] <= cost for label, cost in READ_COSTS.items()), measured
