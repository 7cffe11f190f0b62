"""Large layers through the registry door with skopeo: nginx streams request bodies to the registry
(`proxy_request_buffering off`, no `client_max_body_size`) instead of spooling them to its
client_body_temp directory first (which made a 1 GiB push 1.73x slower than direct) or refusing them
(`client_max_body_size 2G` in the original design)."""

from __future__ import annotations

import base64
import time
import urllib.request

import pytest

from gateway.bench.images import GiB, Image, Layer, MiB
from tests.gateway.client_harness import USERS, GatewayProcess, Images, Launcher, ok
from tests.gateway.spool_watch import SpoolWatch

ALICE = f"alice:{USERS['alice']}"


def nginx_pids(gateway: GatewayProcess) -> list[int]:
    pids = [p.pid for p in gateway.children() if p.comm == "nginx"]
    assert len(pids) >= 2, "nginx master and at least one worker"
    return pids


def blob_size_through_gateway(registry: str, name: str, digest: str) -> int:
    request = urllib.request.Request(f"http://{registry}/v2/{name}/blobs/{digest}", method="HEAD")
    request.add_header("Authorization", "Basic " + base64.b64encode(ALICE.encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
        return int(response.headers["Content-Length"])


def push_large(launch: Launcher, image: Image, name: str) -> tuple[float, SpoolWatch]:
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url})
    started = time.monotonic()
    with SpoolWatch(nginx_pids(gateway)) as watch:
        ok(launch.skopeo.copy(image.ref, f"docker://{gateway.doors.registry}/{name}", dest_creds=ALICE))
    elapsed = time.monotonic() - started
    assert watch.samples > 10, "the watcher must have sampled during the push"
    layer = image.layers[0]
    assert blob_size_through_gateway(gateway.doors.registry, name.split(":")[0], layer.digest) == layer.size
    print(f"\npushed {layer.size / MiB:.0f} MiB in {elapsed:.1f}s ({layer.size / MiB / elapsed:.0f} MiB/s)")
    return elapsed, watch


def test_one_gib_layer_is_streamed_not_spooled(launch: Launcher, images: Images) -> None:
    image = images.get("large-1g", [Layer(GiB, 7)])
    _, watch = push_large(launch, image, "team/large:1g")
    watch.assert_streamed(image.layers[0].size)


@pytest.mark.slow
def test_layer_over_two_gib_pushes(launch: Launcher, images: Images) -> None:
    image = images.get("large-2g", [Layer(2 * GiB + 64 * MiB, 8)])
    assert image.layers[0].size > 2 * GiB
    _, watch = push_large(launch, image, "team/large:2g")
    watch.assert_streamed(image.layers[0].size)
