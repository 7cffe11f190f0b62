"""The clients people use for OCI artifacts, oras 1.3.6 and crane 0.22.1 (scripts/install-tools), against
the gateway run through its command line on the production versions.

oras: a login, an artifact with its own `artifactType` pushed and pulled back byte for byte, an artifact
attached to an image and discovered again. Distribution 3.1.1 has no referrers API: the door passes its
404 on and oras falls back to the referrers tag schema (a `sha256-<hex>` tag holding an index), which
works through the door. Writes on the mirror door and by a user without push rights are refused.
crane: an image copied from the mirror door to the registry door, its tags, the catalog as the router
serves it (registry door only), digests, a layer appended, an index built from two platforms and
filtered to one, deletes; a wrong password, and deletes and pushes on the mirror door, refused."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import secrets
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.bench.images import INDEX_MEDIA_TYPE, Image, Layer
from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from tests.gateway.client_harness import (
    USERS,
    GatewayProcess,
    Images,
    Launcher,
    Oras,
    PlainRegistry,
    installed,
    ok,
    pushed_digest,
    run,
)
from tests.gateway.production_versions import assert_production

NOTES_TYPE = "application/vnd.owncr.test.notes"
SIGNATURE_TYPE = "application/vnd.owncr.test.signature"
READ_ONLY = "the mirror is read-only; push to the registry door"
ALICE = f"alice:{USERS['alice']}"


class Crane:
    """crane over plain HTTP (`--insecure`) with DOCKER_CONFIG in the test's directory: `crane auth
    login` writes a docker config there, never in the real home."""

    def __init__(self, workdir: Path, name: str = "crane") -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {"DOCKER_CONFIG": str(self.dir / "docker-config")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([installed("crane"), *args, "--insecure"], env=self.env, cwd=self.dir)

    def login(self, door: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
        return self("auth", "login", door, "--username", user, "--password", password)

    def manifest(self, ref: str) -> dict[str, Any]:  # JSON as the registry sent it
        return json.loads(ok(self("manifest", ref)).stdout)


def tool_image(images: Images, arch: str) -> Image:
    return images.get(f"artifacts-tool-{arch}", [Layer(200 * 1024, 70), Layer(1000, 71)], arch=arch)


class World:
    """A Docker Hub stand-in with a base image and a two-platform tool, the gateway, alice logged in with
    oras and crane, and one private image (`team/app:1.0`) for artifacts to refer to."""

    def __init__(self, launch: Launcher, images: Images) -> None:
        self.launch = launch
        self.dockerhub: PlainRegistry = launch.distribution("artifacts-dockerhub")
        self.base = images.get("artifacts-base", [Layer(300 * 1024, 72), Layer(1000, 73)])
        launch.seed(self.dockerhub, self.base, "library/base:1.0")
        for arch in ("amd64", "arm64"):
            launch.seed(self.dockerhub, tool_image(images, arch), f"library/tool:{arch}")
        self.gateway: GatewayProcess = launch.gateway({"docker.io": self.dockerhub.url}, name="artifacts")
        self.registry = self.gateway.doors.registry
        self.mirror = self.gateway.doors.mirror
        self.oras = Oras(launch.workdir)
        self.crane = Crane(launch.workdir)
        ok(self.oras.login(self.registry, "alice", USERS["alice"]))
        ok(self.crane.login(self.registry, "alice", USERS["alice"]))
        self.app = images.get("artifacts-app", [Layer(100 * 1024, 74)])
        ok(launch.skopeo.copy(self.app.ref, f"docker://{self.registry}/team/app:1.0", dest_creds=ALICE))

    def logged_since(self, since: int) -> list[dict[str, object]]:
        """Requests the doors logged after the first `since` lines (password checks left out: the
        same log has a line per bcrypt check, without door or URI)."""
        return [e for e in self.gateway.access_log()[since:] if "door" in e]


@pytest.fixture(scope="module")
def world(module_launch: Launcher, images: Images) -> World:
    return World(module_launch, images)


# --- oras -------------------------------------------------------------------------------------------------


def test_oras_login_with_a_wrong_password_is_refused(world: World, tmp_path: Path) -> None:
    oras = Oras(tmp_path)
    login = oras.login(world.registry, "alice", "wrong-password")
    assert login.returncode != 0
    assert "unauthorized: authentication required" in login.stderr, login.stderr
    assert not oras.config.exists() or world.registry not in oras.config.read_text(), "nothing stored"


def test_oras_pushes_an_artifact_and_pulls_it_back(world: World, tmp_path: Path) -> None:
    notes = secrets.token_bytes(64 * 1024)  # random: a pull that returned anything else would show
    name = world.oras.write("notes.bin", notes)
    ref = f"{world.registry}/team/notes:v1"
    push = ok(world.oras("push", ref, "--artifact-type", NOTES_TYPE, f"{name}:application/octet-stream"))
    digest = pushed_digest(push.stdout)

    manifest = json.loads(ok(world.oras("manifest", "fetch", ref)).stdout)
    assert manifest["artifactType"] == NOTES_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/octet-stream"]

    pulled = Oras(tmp_path, "fresh")  # a client that never saw the file, alice's login copied over
    pulled.config.write_text(world.oras.config.read_text())
    pull = ok(pulled("pull", ref, "--output", "out"))
    assert pushed_digest(pull.stdout) == digest
    assert (pulled.dir / "out" / name).read_bytes() == notes


def test_oras_attach_and_discover_use_the_referrers_api(world: World) -> None:
    subject = world.app.manifest.digest
    signature = secrets.token_bytes(512)
    name = world.oras.write("signature.bin", signature)
    since = len(world.gateway.access_log())
    attach = ok(
        world.oras(
            "attach",
            f"{world.registry}/team/app:1.0",
            "--artifact-type",
            SIGNATURE_TYPE,
            f"{name}:text/plain",
        )
    )
    referrer = pushed_digest(attach.stdout)

    discover = json.loads(
        ok(world.oras("discover", f"{world.registry}/team/app:1.0", "--format", "json")).stdout
    )
    assert discover["digest"] == subject
    assert [(r["digest"], r["artifactType"]) for r in discover["referrers"]] == [(referrer, SIGNATURE_TYPE)]

    # How oras got there: its manifest push was answered with OCI-Subject (referrers.js), so oras left
    # the referrers tag schema's tag to the registry and never wrote it; discover asked the API.
    fallback_tag = subject.replace(":", "-")
    answers = {
        (e["method"], str(e["uri"]).split("?")[0], e["route"], e["status"])
        for e in world.logged_since(since)
        if "/referrers/" in str(e["uri"]) or "/manifests/" in str(e["uri"])
    }
    assert ("PUT", f"/v2/team/app/manifests/{referrer}", "manifest_write", 201) in answers, answers
    assert ("GET", f"/v2/team/app/referrers/{subject}", "referrers", 200) in answers, answers
    assert not [a for a in answers if a[0] == "PUT" and fallback_tag in a[1]], answers
    # What a client without the API reads (https://github.com/opencontainers/distribution-spec/blob/v1.1.0/
    # spec.md#referrers-tag-schema): the same list, kept by the door under the fallback tag.
    index = world.crane.manifest(f"{world.registry}/team/app:{fallback_tag}")
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [(referrer, SIGNATURE_TYPE)]
    assert fallback_tag in ok(world.crane("ls", f"{world.registry}/team/app")).stdout.split()

    pulled = ok(world.oras("pull", f"{world.registry}/team/app@{referrer}", "--output", "signature-out"))
    assert pushed_digest(pulled.stdout) == referrer
    assert (world.oras.dir / "signature-out" / name).read_bytes() == signature

    # Deleting the referrer takes it off the list, for both kinds of client.
    ok(world.oras("manifest", "delete", "--force", f"{world.registry}/team/app@{referrer}"))
    discover = json.loads(
        ok(world.oras("discover", f"{world.registry}/team/app:1.0", "--format", "json")).stdout
    )
    assert discover["referrers"] == []
    assert world.crane.manifest(f"{world.registry}/team/app:{fallback_tag}")["manifests"] == []


def api(
    door: str, method: str, path: str, creds: str = ALICE, body: bytes | None = None, content_type: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request to a door: status, headers (lower-case names), body; no redirects, no retries."""
    conn = http.client.HTTPConnection(door, timeout=30)
    headers = {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def put_manifest(door: str, repository: str, manifest: dict[str, Any]) -> tuple[str, dict[str, str]]:
    body = json.dumps(manifest).encode()
    status, headers, answer = api(
        door,
        "PUT",
        f"/v2/{repository}/manifests/{sha256(body)}",
        body=body,
        content_type=manifest["mediaType"],
    )
    assert status == 201, answer
    return headers["docker-content-digest"], headers


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_referrers_api_filters_by_artifact_type_and_lists_what_old_clients_wrote(world: World) -> None:
    ok(world.crane("copy", f"{world.registry}/team/app:1.0", f"{world.registry}/team/filtered:1.0"))
    subject = {"mediaType": world.app.manifest.media_type, "digest": world.app.manifest.digest,
               "size": world.app.manifest.size}  # fmt: skip
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2}
    ok(world.oras("blob", "push", f"{world.registry}/team/filtered", world.oras.write("empty.json", b"{}")))
    pushed = {}
    for kind in (NOTES_TYPE, SIGNATURE_TYPE):
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": kind,
            "config": empty,
            "layers": [empty],
            "subject": subject,
            "annotations": {"org.example.kind": kind},
        }
        digest, headers = put_manifest(world.registry, "team/filtered", manifest)
        assert headers["oci-subject"] == subject["digest"]
        pushed[kind] = digest

    path = f"/v2/team/filtered/referrers/{subject['digest']}"
    status, headers, body = api(world.registry, "GET", path)
    assert (status, headers["content-type"]) == (200, INDEX_MEDIA_TYPE)
    assert "oci-filters-applied" not in headers
    listed = json.loads(body)
    assert (listed["schemaVersion"], listed["mediaType"]) == (2, INDEX_MEDIA_TYPE)
    assert {
        (m["digest"], m["artifactType"], m["annotations"]["org.example.kind"]) for m in listed["manifests"]
    } == {(pushed[k], k, k) for k in pushed}
    status, headers, body = api(world.registry, "GET", f"{path}?artifactType={SIGNATURE_TYPE}")
    assert (status, headers["oci-filters-applied"]) == (200, "artifactType")
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [pushed[SIGNATURE_TYPE]]
    assert api(world.registry, "HEAD", path)[0] == 200

    # A client without the API (or a registry before this one) writes the fallback tag itself: the API
    # answers with what it wrote.
    fallback = json.loads(
        world.crane(
            "manifest", f"{world.registry}/team/filtered:{subject['digest'].replace(':', '-')}"
        ).stdout
    )
    old = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": world.app.manifest.digest,
           "size": world.app.manifest.size, "artifactType": "application/vnd.owncr.test.old"}  # fmt: skip
    fallback["manifests"].append(old)
    body = json.dumps(fallback).encode()
    tag = subject["digest"].replace(":", "-")
    status, _, answer = api(world.registry, "PUT", f"/v2/team/filtered/manifests/{tag}", body=body,
                            content_type=INDEX_MEDIA_TYPE)  # fmt: skip
    assert status == 201, answer
    listed = json.loads(api(world.registry, "GET", path)[2])
    assert old["digest"] in [m["digest"] for m in listed["manifests"]]

    # A subject nothing refers to has an empty list; what is not a digest is refused.
    unknown = sha256(secrets.token_bytes(16))
    status, _, body = api(world.registry, "GET", f"/v2/team/filtered/referrers/{unknown}")
    assert (status, json.loads(body)["manifests"]) == (200, [])
    status, _, body = api(world.registry, "GET", "/v2/team/filtered/referrers/sha256:abc")
    assert (status, json.loads(body)["errors"][0]["code"]) == (400, "DIGEST_INVALID")


def test_a_manifest_larger_than_distribution_accepts_is_refused_before_it_is_read(world: World) -> None:
    body = b'{"schemaVersion":2,"annotations":{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}}'
    status, _, answer = api(world.registry, "PUT", "/v2/team/big/manifests/1.0", body=body,
                            content_type="application/vnd.oci.image.manifest.v1+json")  # fmt: skip
    assert (status, json.loads(answer)["errors"][0]["code"]) == (413, "MANIFEST_INVALID")


def test_oras_push_to_the_mirror_door_is_refused(world: World) -> None:
    name = world.oras.write("mirror-notes.bin", b"never stored\n")
    since, asked_upstream = len(world.gateway.access_log()), len(world.dockerhub.requests())
    for repository in ("library/notes", "team/notes"):
        push = world.oras("push", f"{world.mirror}/{repository}:v1", "--artifact-type", NOTES_TYPE, name)
        assert push.returncode != 0
        # oras first asks whether the manifest already exists, by digest. The mirror door answers that as
        # Distribution's proxy answers a digest nobody has, 500 (v3.1.1; private names get the same
        # answer, router.js), so oras stops there and never reaches a write to be refused with the door's
        # read-only message. Not a clear message, but a refusal: nothing was written (below). oras
        # retries a 500 (6 HEADs over about 7 s here, the slowest part of this file) before it gives up.
        assert f'HEAD "http://{world.mirror}/v2/{repository}/manifests/sha256:' in push.stderr, push.stderr
        assert "response status code 500" in push.stderr, push.stderr
    # A write oras does send straight away (a blob upload) gets the door's own answer.
    blob = world.oras("blob", "push", f"{world.mirror}/library/notes", name)
    assert blob.returncode != 0
    assert f"unsupported: {READ_ONLY}" in blob.stderr, blob.stderr
    delete = world.oras(
        "manifest", "delete", "--force", f"{world.mirror}/library/base@{world.base.manifest.digest}"
    )
    assert delete.returncode != 0
    assert f"unsupported: {READ_ONLY}" in delete.stderr, delete.stderr

    mirror = [e for e in world.logged_since(since) if e["door"] == "mirror"]
    assert mirror, "oras asked the mirror door"
    assert {e["method"] for e in mirror if e["status"] != 405} <= {"GET", "HEAD"}, mirror
    assert all(e["route"] == "refused" for e in mirror if e["method"] not in ("GET", "HEAD")), mirror
    assert world.dockerhub.requests_for("team", asked_upstream) == [], "a private name never goes upstream"


def test_oras_push_without_push_rights_is_refused(world: World, launch: Launcher, tmp_path: Path) -> None:
    # The command line gives every --user push on every namespace: a reader needs the Python API.
    settings = GatewaySettings(
        namespaces=("team",),
        users=(
            User("alice", USERS["alice"], push=("team",)),
            User("reader", "reader-secret-3", pull=("team",)),
            User("stranger", "stranger-secret-4"),
        ),
        upstreams=(Upstream("docker.io", world.dockerhub.url),),
        storage=FilesystemStorage(str(tmp_path / "storage")),
        http_secret=secrets.token_hex(16),
    )
    gateway = launch.local_gateway(settings, name="artifacts-rights")
    assert_production(gateway.versions)
    door = gateway.registry_url.removeprefix("http://")
    alice, reader = Oras(tmp_path, "alice"), Oras(tmp_path, "reader")
    ok(alice.login(door, "alice", USERS["alice"]))
    ok(reader.login(door, "reader", "reader-secret-3"))
    ok(
        alice(
            "push", f"{door}/team/notes:v1", "--artifact-type", NOTES_TYPE, alice.write("a.txt", b"alice\n")
        )
    )

    push = reader(
        "push", f"{door}/team/notes:v2", "--artifact-type", NOTES_TYPE, reader.write("r.txt", b"x\n")
    )
    assert push.returncode != 0
    assert "denied: push to team/notes is denied; reader may push to: no namespace" in push.stderr, (
        push.stderr
    )
    attach = reader("attach", f"{door}/team/notes:v1", "--artifact-type", SIGNATURE_TYPE, "r.txt")
    assert attach.returncode != 0
    assert "denied: push to team/notes is denied" in attach.stderr, attach.stderr
    # Reading is what the reader may do: alice's artifact comes back, and nothing of the reader's is there.
    ok(reader("pull", f"{door}/team/notes:v1", "--output", "out"))
    assert (reader.dir / "out" / "a.txt").read_bytes() == b"alice\n"
    assert ok(reader("repo", "tags", f"{door}/team/notes")).stdout.split() == ["v1"]
    ok(reader("discover", f"{door}/team/notes:v1"))
    # Referrers are private like the rest of the namespace.
    notes = json.loads(ok(reader("manifest", "fetch", "--descriptor", f"{door}/team/notes:v1")).stdout)
    status, _, body = api(
        door, "GET", f"/v2/team/notes/referrers/{notes['digest']}", "stranger:stranger-secret-4"
    )
    assert (status, json.loads(body)["errors"][0]["code"]) == (403, "DENIED")


# --- crane ------------------------------------------------------------------------------------------------


def test_crane_copies_from_the_mirror_door_to_the_registry_door(world: World) -> None:
    ok(world.crane("copy", f"{world.mirror}/library/base:1.0", f"{world.registry}/team/base:1.0"))
    digest = ok(world.crane("digest", f"{world.registry}/team/base:1.0")).stdout.strip()
    assert digest == world.base.manifest.digest, "copied as it is, not rewritten"
    assert ok(world.crane("digest", f"{world.mirror}/library/base:1.0")).stdout.strip() == digest
    assert ok(world.crane("ls", f"{world.registry}/team/base")).stdout.split() == ["1.0"]


def test_crane_with_a_wrong_password_is_refused(world: World, tmp_path: Path) -> None:
    crane = Crane(tmp_path)
    # `crane auth login` only writes the docker config; the registry sees the password on first use.
    ok(crane.login(world.registry, "alice", "wrong-password"))
    copy = crane("copy", f"{world.mirror}/library/base:1.0", f"{world.registry}/team/wrong:1.0")
    assert copy.returncode != 0
    assert (
        f"HEAD http://{world.registry}/v2/team/wrong/manifests/1.0: unexpected status code 401" in copy.stderr
    ), copy.stderr
    listing = crane("ls", f"{world.registry}/team/app")
    assert listing.returncode != 0
    assert "UNAUTHORIZED: authentication required" in listing.stderr, listing.stderr


def test_crane_catalog_is_served_on_the_registry_door_only(world: World) -> None:
    # alice may pull every private namespace, which the router requires for the catalog (router.js);
    # it lists the private registry's repositories, never the caches'.
    catalog = ok(world.crane("catalog", world.registry)).stdout.split()
    assert "team/app" in catalog
    assert not any(name.startswith("library/") for name in catalog), catalog
    mirror = world.crane("catalog", world.mirror)
    assert mirror.returncode != 0
    assert "DENIED: the catalog is served on the registry door only" in mirror.stderr, mirror.stderr


def test_tag_list_pages_through_the_registry_door(world: World) -> None:
    # crane lists with `n=1000`, too few tags here for a second page; a page of one shows the door
    # keeps `n`, `last` and the `Link` to the next page (distribution-spec 1.1, "Listing Tags").
    for tag in ("p1", "p2", "p3"):
        ok(world.crane("tag", f"{world.registry}/team/app:1.0", tag))
    request = urllib.request.Request(f"http://{world.registry}/v2/team/app/tags/list?n=1&last=p1")
    request.add_header("Authorization", "Basic " + base64.b64encode(ALICE.encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback only
        assert json.load(answer)["tags"] == ["p2"]
        assert answer.headers["Link"] == '</v2/team/app/tags/list?last=p2&n=1>; rel="next"'
    assert {"1.0", "p1", "p2", "p3"} <= set(
        ok(world.crane("ls", f"{world.registry}/team/app")).stdout.split()
    )


def test_crane_appends_a_layer(world: World, tmp_path: Path) -> None:
    ok(world.crane("copy", f"{world.mirror}/library/base:1.0", f"{world.registry}/team/appended:1.0"))
    tarball = tmp_path / "extra.tar"
    with tarfile.open(tarball, "w") as archive:
        content = b"appended by crane\n"
        entry = tarfile.TarInfo("extra.txt")
        entry.size = len(content)
        archive.addfile(entry, io.BytesIO(content))

    base, new = f"{world.registry}/team/appended:1.0", f"{world.registry}/team/appended:1.1"
    ok(world.crane("append", "--base", base, "--new_layer", str(tarball), "--new_tag", new))
    layers = [layer["digest"] for layer in world.crane.manifest(new)["layers"]]
    assert layers[:-1] == [b.digest for b in world.base.layers], "the base's layers, reused as they are"
    assert len(layers) == len(world.base.layers) + 1
    assert ok(world.crane("ls", f"{world.registry}/team/appended")).stdout.split() == ["1.0", "1.1"]


def test_crane_builds_an_index_and_filters_it(world: World, images: Images) -> None:
    arches = ("amd64", "arm64")
    for arch in arches:
        ok(world.crane("copy", f"{world.mirror}/library/tool:{arch}", f"{world.registry}/team/tool:{arch}"))
    multi = f"{world.registry}/team/tool:multi"
    manifests = [arg for arch in arches for arg in ("--manifest", f"{world.registry}/team/tool:{arch}")]
    ok(world.crane("index", "append", *manifests, "--tag", multi))
    index = world.crane.manifest(multi)
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    entries = [(m["digest"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert entries == [(tool_image(images, arch).manifest.digest, arch) for arch in arches]

    arm = f"{world.registry}/team/tool:arm64-only"
    ok(world.crane("index", "filter", multi, "--platform", "linux/arm64", "--tag", arm))
    filtered = world.crane.manifest(arm)
    assert [m["digest"] for m in filtered["manifests"]] == [tool_image(images, "arm64").manifest.digest]


def test_crane_deletes_on_the_registry_door_only(world: World) -> None:
    ok(world.crane("copy", f"{world.mirror}/library/base:1.0", f"{world.registry}/team/doomed:1.0"))
    digest = world.base.manifest.digest
    ok(world.crane("delete", f"{world.registry}/team/doomed@{digest}"))
    gone = world.crane("digest", f"{world.registry}/team/doomed:1.0")
    assert gone.returncode != 0
    assert "MANIFEST_UNKNOWN" in gone.stderr, gone.stderr

    delete = world.crane("delete", f"{world.mirror}/library/base@{digest}")
    assert delete.returncode != 0
    assert f"UNSUPPORTED: {READ_ONLY}" in delete.stderr, delete.stderr
    assert ok(world.crane("digest", f"{world.mirror}/library/base:1.0")).stdout.strip() == digest, (
        "still there"
    )
    # A copy onto the mirror door is refused at its first write (here a blob upload: the upstream has
    # no such blob), with the same message.
    copy = world.crane("copy", f"{world.registry}/team/app:1.0", f"{world.mirror}/library/app:1.0")
    assert copy.returncode != 0
    assert f"POST http://{world.mirror}/v2/library/app/blobs/uploads/" in copy.stderr, copy.stderr
    assert f"UNSUPPORTED: {READ_ONLY}" in copy.stderr, copy.stderr
