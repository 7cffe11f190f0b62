"""Referrers across nodes: two gateways on one storage (as the nodes of a swarm share R2 or NFS), oras
attaching to one subject through both at once, round after round. Before the store's lock
(gateway/render/njs/store.js) each gateway kept its writers in turn only among themselves; measured: of
60 attaches in ten rounds of six, 26 missing from the referrers list. Now every one is listed, on a
filesystem and on S3 (moto's server, checking the store's request signatures as S3 and R2 do).

A lock left on the storage by a gateway that died holding it (a lost node) is honoured until its lease
has passed, then broken: the next write waits that long and no longer."""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.bench.images import Layer
from gateway.config import FilesystemStorage, S3Storage
from gateway.local.runner import LocalGateway
from gateway.names import STORE_LEASE_SECONDS, STORE_PREFIX
from tests.gateway.client_harness import USERS, Images, Launcher, Oras, ok, pushed_digest, team_settings
from tests.gateway.routing_fixtures import OCI_MANIFEST, TinyImage, digest_of, request

ROUNDS = 10
CONCURRENT = 6
NOTE_TYPE = "application/vnd.owncr.test.note"
ALICE = ("alice", USERS["alice"])


def _door(gateway: LocalGateway) -> str:
    return gateway.registry_url.removeprefix("http://")


def _listed(door: str, repository: str, subject: str) -> list[str]:
    reply = request(f"http://{door}/v2/{repository}/referrers/{subject}", auth=ALICE)
    assert reply.status == 200, reply.body
    return [d["digest"] for d in json.loads(reply.body)["manifests"]]


def _attach_rounds(launch: Launcher, images: Images, gateways: list[LocalGateway], tag: str) -> None:
    doors = [_door(g) for g in gateways]
    oras = Oras(launch.workdir, f"oras-{tag}")
    for door in doors:
        ok(oras.login(door, *ALICE))
    app = images.get(f"referred-{tag}", [Layer(1000 + len(tag), 90)])
    ok(launch.skopeo.copy(app.ref, f"docker://{doors[0]}/team/app:{tag}", dest_creds=":".join(ALICE)))
    subject = app.manifest.digest

    def attach(n: int) -> str:
        note = oras.write(f"note-{tag}-{n}.txt", secrets.token_bytes(64))
        door = doors[n % len(doors)]  # alternate: every round writes through every gateway at once
        out = ok(oras("attach", f"{door}/team/app:{tag}", "--artifact-type", NOTE_TYPE, f"{note}:text/plain"))
        return pushed_digest(out.stdout)

    attached: list[str] = []
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        for round_ in range(ROUNDS):
            attached += pool.map(attach, range(round_ * CONCURRENT, (round_ + 1) * CONCURRENT))
            for door in doors:
                missing = set(attached) - set(_listed(door, "team/app", subject))
                assert not missing, (
                    f"round {round_ + 1}: {len(missing)} of {len(attached)} missing via {door}"
                )
    # Old clients read the same list under the fallback tag; nothing in it twice.
    fallback = subject.replace(":", "-")
    index = json.loads(ok(oras("manifest", "fetch", f"{doors[1]}/team/app:{fallback}")).stdout)
    assert sorted(d["digest"] for d in index["manifests"]) == sorted(attached)


def test_attaches_through_two_gateways_on_one_filesystem_all_end_up_listed(
    launch: Launcher, images: Images, tmp_path: Path
) -> None:
    upstream = launch.distribution("dockerhub")
    settings = team_settings(FilesystemStorage(str(tmp_path / "storage")), upstream.url)
    gateways = [launch.local_gateway(settings, name=f"node-{i}") for i in (1, 2)]
    _attach_rounds(launch, images, gateways, "fs")
    # The locks are the store's own objects, beside the registries' roots; none is left behind.
    store = tmp_path / "storage" / STORE_PREFIX
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_attaches_through_two_gateways_on_one_bucket_all_end_up_listed(
    launch: Launcher, images: Images
) -> None:
    s3 = launch.s3_server()
    from tests.gateway.s3_server import ACCESS_KEY, SECRET_KEY

    storage = S3Storage(
        bucket=s3.bucket, endpoint=f"http://127.0.0.1:{s3.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    upstream = launch.distribution("dockerhub")
    settings = team_settings(storage, upstream.url)
    gateways = [launch.local_gateway(settings, name=f"node-{i}") for i in (1, 2)]
    _attach_rounds(launch, images, gateways, "s3")
    # Every lock was taken with a conditional create and let go again, each request signed (the server
    # refuses a store request whose signature does not match: none was refused).
    store = [s for s in s3.check.requests() if f"/{STORE_PREFIX}/" in s.path]
    creates = [s for s in store if s.method == "PUT"]
    assert creates and all(s.headers.get("if-none-match") == "*" for s in creates)
    assert {s.status for s in store} <= {200, 204, 404, 412}, sorted({s.status for s in store})
    assert len([s for s in creates if s.status == 200]) == len([s for s in store if s.method == "DELETE"])
    assert not [k for k in s3.keys() if k.startswith(f"{STORE_PREFIX}/")]  # noqa: SIM118 - a method


@pytest.mark.parametrize("left", [2.0, -60.0], ids=["lease-running", "lease-passed"])
def test_a_lock_left_by_a_lost_node_holds_until_its_lease_passes(
    launch: Launcher, tmp_path: Path, left: float
) -> None:
    """A lock another node holds (here: written as it would write it, then that node gone) makes a
    write wait, and is broken once its lease has passed (clock drift allowed for), never before."""
    upstream = launch.distribution("dockerhub")
    root = tmp_path / "storage"
    gateway = launch.local_gateway(team_settings(FilesystemStorage(str(root)), upstream.url))
    base = gateway.registry_url
    image = TinyImage.make("locked subject")
    image.push(base, "team/locked", "1.0", ALICE)
    lock = root / STORE_PREFIX / "locks" / "referrers" / "team" / "locked" / image.digest.replace(":", "-")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"id": secrets.token_hex(16), "until": (time.time() + left) * 1000}))

    # An artifact on the image (its own config and layer, already in the repository) naming it.
    note = json.loads(image.manifest) | {
        "artifactType": NOTE_TYPE,
        "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
    }
    body = json.dumps(note).encode()
    started = time.monotonic()
    reply = request(
        f"{base}/v2/team/locked/manifests/{digest_of(body)}",
        "PUT",
        auth=ALICE,
        body=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    waited = time.monotonic() - started
    assert reply.status == 201, reply.body
    assert reply.headers.get("OCI-Subject") == image.digest
    assert _listed(_door(gateway), "team/locked", image.digest) == [digest_of(body)]
    if left > 0:  # held until its lease plus the drift allowed for (2 s), not a moment longer than needed
        assert left + 1.5 < waited < left + 2 + STORE_LEASE_SECONDS / 3, waited
    else:
        assert waited < 2, waited
    assert not lock.exists()
