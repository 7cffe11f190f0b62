"""What real clients (skopeo, ctr) report when the gateway refuses them, each refusal with its status and
OCI error: no credentials, wrong credentials, a user without push (or pull) rights on a namespace, an
anonymous read on the registry door, writes and private names on the mirror door, a client outside the
mirror's CIDRs, and too many failed logins. (The raw-HTTP matrix is in the gateway helper's tests.)"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.bench.images import Image, Layer, write_oci_archive
from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local.runner import LocalGateway
from tests.gateway.client_harness import (
    USERS,
    Containerd,
    GatewayProcess,
    Images,
    Launcher,
    PlainRegistry,
    ok,
)

ALICE = f"alice:{USERS['alice']}"
READER = "reader:reader-secret-2"


def settings(upstream: PlainRegistry, root: Path, **overrides: object) -> GatewaySettings:
    fields: dict[str, object] = {
        "namespaces": ("team", "acme"),
        "users": (
            User("alice", USERS["alice"], pull=("team", "acme"), push=("team", "acme")),
            User("reader", "reader-secret-2", pull=("team",)),
        ),
        "upstreams": (Upstream("docker.io", upstream.url),),
        "storage": FilesystemStorage(str(root)),
        "http_secret": secrets.token_hex(16),
        # Every client starts anonymously, and the refusals below fail on purpose: with the default
        # limit (5/s, burst 20, per address, all of us being 127.0.0.1) the later ones would read 429.
        # The limiter itself is tested with defaults in test_too_many_failed_logins.
        "login_burst": 10_000,
    }
    return GatewaySettings(**(fields | overrides))  # type: ignore[arg-type]


def auth_image(images: Images) -> Image:
    return images.get("auth-image", [Layer(100 * 1024, 500), Layer(1000, 501)])


class World:
    def __init__(self, launch: Launcher, images: Images) -> None:
        self.launch = launch
        self.skopeo = launch.skopeo
        self.upstream = launch.distribution("dockerhub")
        self.gateway: LocalGateway = launch.local_gateway(settings(self.upstream, launch.workdir / "storage"))
        self.registry = self.gateway.registry_url.removeprefix("http://")
        self.mirror = self.gateway.mirror_url.removeprefix("http://")
        self.containerd: Containerd = launch.containerd()
        self.image = auth_image(images)
        self.pushed = f"{self.registry}/team/app:1.0"
        ok(self.skopeo.copy(self.image.ref, f"docker://{self.pushed}", dest_creds=ALICE))

    def push(self, name: str, creds: str | None = None, door: str | None = None):
        return self.skopeo.copy(self.image.ref, f"docker://{door or self.registry}/{name}", dest_creds=creds)

    def ctr_push(self, image: Image, name: str, creds: str, tmp_path: Path):
        ref = f"{self.registry}/{name}"
        archive = str(write_oci_archive(image, tmp_path / "image.tar"))
        ok(self.containerd.ctr("images", "import", "--base-name", ref.rsplit(":", 1)[0], archive))
        return self.containerd.push(creds, ref)


@pytest.fixture(scope="module")
def world(module_launch: Launcher, images: Images) -> World:
    return World(module_launch, images)


def test_push_without_credentials(world: World) -> None:
    push = world.push("team/x:1")
    assert push.returncode != 0
    assert f"exists in {world.registry}/team/x: unauthorized: authentication required" in push.stderr


def test_wrong_password(world: World) -> None:
    push = world.push("team/x:1", creds="alice:wrong-password")
    assert push.returncode != 0
    assert f"exists in {world.registry}/team/x: unauthorized: authentication required" in push.stderr
    read = world.skopeo.inspect_raw(f"docker://{world.pushed}", creds="alice:wrong-password")
    assert read.returncode != 0
    assert f"reading manifest 1.0 in {world.registry}/team/app: unauthorized" in read.stderr
    pull = world.containerd.ctr(
        "images", "pull", "--plain-http", "--user", "alice:wrong-password", world.pushed
    )
    assert pull.returncode != 0
    assert "failed with status code [manifests 1.0]: 401 Unauthorized" in pull.stderr, pull.stderr


def test_anonymous_read_on_registry_door(world: World) -> None:
    read = world.skopeo.inspect_raw(f"docker://{world.pushed}")
    assert read.returncode != 0
    assert f"reading manifest 1.0 in {world.registry}/team/app: unauthorized" in read.stderr
    pull = world.containerd.ctr("images", "pull", "--plain-http", world.pushed)
    assert pull.returncode != 0
    assert "failed with status code [manifests 1.0]: 401 Unauthorized" in pull.stderr, pull.stderr


def assert_push_denied(world: World, name: str, creds: str, message: str, tmp_path: Path) -> None:
    """skopeo shows the OCI error message; ctr only the status."""
    push = world.push(f"{name}:1", creds=creds)
    assert push.returncode != 0
    assert f"denied: {message}" in push.stderr, push.stderr
    ctr = world.ctr_push(world.image, f"{name}:1.0", creds, tmp_path)
    assert ctr.returncode != 0
    assert "403 Forbidden" in ctr.stderr, ctr.stderr


def test_user_without_push_rights(world: World, tmp_path: Path) -> None:
    assert world.skopeo.pull(world.pushed, tmp_path / "ok", creds=READER) == world.image.manifest.digest
    message = "push to team/x is denied; reader may push to: no namespace"
    assert_push_denied(world, "team/x", READER, message, tmp_path)


def test_user_without_pull_rights(world: World) -> None:
    ok(world.push("acme/app:1.0", creds=ALICE))
    read = world.skopeo.inspect_raw(f"docker://{world.registry}/acme/app:1.0", creds=READER)
    assert read.returncode != 0
    assert "denied: reader may not pull from acme" in read.stderr, read.stderr
    pull = world.containerd.ctr(
        "images", "pull", "--plain-http", "--user", READER, f"{world.registry}/acme/app:1.0"
    )
    assert pull.returncode != 0
    assert "403 Forbidden" in pull.stderr, pull.stderr


def test_push_outside_private_namespaces(world: World, tmp_path: Path) -> None:
    message = "push to library/x is denied; alice may push to: team, acme"
    assert_push_denied(world, "library/x", ALICE, message, tmp_path)
    # Its blob HEADs are reads of a non-private name (the cache may ask upstream); no write goes there.
    assert {r.method for r in world.upstream.requests_for("library")} <= {"GET", "HEAD"}


def test_mirror_door_refuses_writes_and_private_names(world: World) -> None:
    push = world.push("team/x:1", door=world.mirror)
    assert push.returncode != 0
    assert "unsupported: the mirror is read-only; push to the registry door" in push.stderr, push.stderr
    read = world.skopeo.inspect_raw(f"docker://{world.mirror}/team/app:1.0")
    assert read.returncode != 0
    # As for any name no upstream has: nothing tells a private name apart on this door.
    assert "manifest unknown" in read.stderr, read.stderr
    pull = world.containerd.ctr("images", "pull", "--plain-http", f"{world.mirror}/team/app:1.0")
    assert pull.returncode != 0
    assert f"{world.mirror}/team/app:1.0: not found" in pull.stderr, pull.stderr
    assert world.upstream.requests_for("team") == []


def test_client_outside_mirror_cidrs(launch: Launcher, images: Images) -> None:
    upstream = launch.distribution("dockerhub")
    launch.seed(upstream, auth_image(images), "library/base:1.0")
    since = len(upstream.requests())
    gateway = launch.local_gateway(
        settings(upstream, launch.workdir / "s", mirror_client_cidrs=("10.0.0.0/8",))
    )
    mirror = gateway.mirror_url.removeprefix("http://")
    read = launch.skopeo.inspect_raw(f"docker://{mirror}/library/base:1.0")
    assert read.returncode != 0
    # skopeo stops at the ping (GET /v2/ answered 403 DENIED "client 127.0.0.1 may not use this mirror").
    assert (
        f"pinging container registry {mirror}: invalid status code from registry 403 (Forbidden)"
        in read.stderr
    )
    assert upstream.requests_for("library/base", since) == [], "nothing fetched upstream for a refused client"


def test_too_many_failed_logins(launch: Launcher, images: Images) -> None:
    """Defaults (5/s, burst 20 per address). Guesses in parallel exhaust the budget (429 TOOMANYREQUESTS
    with Retry-After); skopeo with the right password right after still gets through, because it backs
    off and retries on 429 by itself (containers/image), while the bucket refills."""
    upstream = launch.distribution("dockerhub")
    gateway: GatewayProcess = launch.gateway({"docker.io": upstream.url})

    def guess(i: int) -> int:
        url = f"http://{gateway.doors.registry}/v2/team/app/manifests/1.0"
        request = urllib.request.Request(url, headers={"Authorization": basic(f"alice:guess-{i}")})
        try:
            with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - loopback only
                return 200
        except urllib.error.HTTPError as e:
            assert e.code == 401 or json.load(e)["errors"][0]["code"] == "TOOMANYREQUESTS"
            return e.code

    # Guess in parallel until refused (bcrypt's cost bounds the guessing rate on a busy machine).
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for batch in range(20):
            statuses += pool.map(guess, range(batch * 16, batch * 16 + 16))
            if 429 in statuses:
                break
    assert statuses.count(429) > 0 and statuses.count(200) == 0, statuses
    ref = f"docker://{gateway.doors.registry}/team/app:1.0"
    ok(launch.skopeo.copy(auth_image(images).ref, ref, dest_creds=ALICE))


def basic(creds: str) -> str:
    return "Basic " + base64.b64encode(creds.encode()).decode()
