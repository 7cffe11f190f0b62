"""Two private replicas behind nginx: uploads hop between replicas (each PATCH/PUT of one upload may land
on either), which only works with one shared http.secret (distribution/distribution#2519). Measured on the
original design without it: 0 of 10 skopeo pushes succeeded. And a delete acknowledged by one replica
holds on the other at once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from gateway.bench.images import Layer
from gateway.names import PRIVATE_ANSWER_SECONDS, private_key
from tests.gateway.client_harness import USERS, GatewayProcess, Images, Launcher, cmdline
from tests.gateway.routing_fixtures import ACCEPT, TinyImage, digest_of, request

PUSHES = 20
READS = 8  # per check: nginx alternates the replicas, so each sees half of them
ALICE = f"alice:{USERS['alice']}"


def test_twenty_multi_layer_pushes_through_two_replicas(launch: Launcher, images: Images) -> None:
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, private_replicas=2)
    registry = gateway.doors.registry
    pushes = [
        (
            images.get(f"replica-{i}", [Layer(300 * 1024 + i, 1000 + 3 * i + j) for j in range(3)]),
            f"team/r{i}:1.0",
        )
        for i in range(PUSHES)
    ]

    def push(item: tuple) -> str:
        image, name = item
        result = launch.skopeo.copy(image.ref, f"docker://{registry}/{name}", dest_creds=ALICE)
        return "" if result.returncode == 0 else f"{name}: {result.stderr.strip()[-500:]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(push, pushes) if f]
    assert failures == [], f"{len(failures)} of {PUSHES} pushes failed:\n" + "\n".join(failures)

    for image, name in pushes:
        read = launch.skopeo.inspect_raw(f"docker://{registry}/{name}", creds=ALICE)
        assert read.returncode == 0, read.stderr
        assert read.stdout.encode() == image.manifest_bytes
    assert upstream.requests_for("team") == []


def test_a_delete_through_one_replica_holds_on_every_replica(launch: Launcher) -> None:
    """With two replicas behind nginx (round robin), each read after an acknowledged delete may reach
    either: none may still serve the deleted blob or manifest (a per-replica descriptor cache did)."""
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, private_replicas=2)
    base = f"http://{gateway.doors.registry}"
    image = TinyImage.make("deleted everywhere")
    auth = ("alice", USERS["alice"])
    image.push(base, "team/deleted", "1.0", auth)
    blob = f"{base}/v2/team/deleted/blobs/{digest_of(image.layer)}"
    manifest = f"{base}/v2/team/deleted/manifests/{digest_of(image.manifest)}"
    for _ in range(READS):  # every replica has read (and, with a cache, remembered) both
        assert request(blob, "HEAD", auth=auth).status == 200
        assert request(manifest, "HEAD", auth=auth, headers={"Accept": ACCEPT}).status == 200
    assert request(manifest, "DELETE", auth=auth).status == 202
    assert request(blob, "DELETE", auth=auth).status == 202
    for _ in range(READS):
        assert request(blob, auth=auth).status == 404
        assert request(blob, "HEAD", auth=auth).status == 404
        assert request(manifest, auth=auth, headers={"Accept": ACCEPT}).status == 404


@contextlib.contextmanager
def second_replica_stopped(gateway: GatewayProcess) -> Iterator[None]:
    """The second private replica stopped outright (as a node lost without a reset), then resumed."""
    (second,) = [p for p in gateway.children() if f"{private_key(1)}.yml" in cmdline(p.pid)]
    os.kill(second.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(second.pid, signal.SIGCONT)


def assert_one_bounded_wait(waits: list[float], what: str) -> None:
    """Some request met the stopped replica, and waited PRIVATE_ANSWER_SECONDS, not longer."""
    assert max(waits) >= PRIVATE_ANSWER_SECONDS - 1, f"no {what} reached the stopped replica: {waits}"
    assert max(waits) <= PRIVATE_ANSWER_SECONDS + 5, waits


def test_a_hung_replica_costs_a_read_one_bounded_wait_then_another_replica_answers(launch: Launcher) -> None:
    """A replica that stops answering (its node lost without a reset: here, stopped outright) holds a
    manifest read for PRIVATE_ANSWER_SECONDS, then nginx asks the other replica: the client gets its
    manifest, never waits for a transfer's timeout. A blob read is routed as a transfer and also answers."""
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, private_replicas=2, name="hung-replica")
    base = f"http://{gateway.doors.registry}"
    image = TinyImage.make("hung replica")
    auth = ("alice", USERS["alice"])
    image.push(base, "team/hung", "1.0", auth)
    waits = []
    with second_replica_stopped(gateway):
        for _ in range(READS // 2):  # round robin: about half of them go to the stopped replica first
            started = time.monotonic()
            manifest = request(
                f"{base}/v2/team/hung/manifests/1.0", auth=auth, headers={"Accept": ACCEPT}, timeout=60
            )
            waits.append(time.monotonic() - started)
            assert (manifest.status, manifest.body) == (200, image.manifest)
        blob = request(f"{base}/v2/team/hung/blobs/{digest_of(image.layer)}", auth=auth, timeout=120)
        assert (blob.status, blob.body) == (200, image.layer)
    assert_one_bounded_wait(waits, "read")


def test_a_hung_replica_costs_an_upload_start_one_bounded_wait_then_another_replica_starts_it(
    launch: Launcher,
) -> None:
    """An upload's start (a POST without a body, as every client sends one) that a replica does not answer
    (its node lost without a reset, over a connection opened just before: here, stopped outright) is
    given up on after PRIVATE_ANSWER_SECONDS and started on the other replica, where the upload then
    completes; before, it waited for the uploads' 900 s timeout."""
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, private_replicas=2, name="hung-start")
    base = f"http://{gateway.doors.registry}"
    auth = ("alice", USERS["alice"])
    waits = []
    with second_replica_stopped(gateway):
        for _ in range(READS // 2):  # round robin: about half of them go to the stopped replica first
            started = time.monotonic()
            start = request(f"{base}/v2/team/started/blobs/uploads/", "POST", auth=auth, body=b"", timeout=60)
            waits.append(time.monotonic() - started)
            assert start.status == 202, (start.status, start.body[:200])
    assert_one_bounded_wait(waits, "start")
    TinyImage.make("started after a hung replica").push(base, "team/started", "1", auth)
