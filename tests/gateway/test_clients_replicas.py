"""Two private replicas behind nginx: uploads hop between replicas (each PATCH/PUT of one upload may land
on either), which only works with one shared http.secret (distribution/distribution#2519). Measured on the
original design without it: 0 of 10 skopeo pushes succeeded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gateway.bench.images import Layer
from tests.gateway.client_harness import USERS, Images, Launcher

PUSHES = 20
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
