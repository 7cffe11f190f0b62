"""Large layers through the registry door with skopeo: nginx streams request bodies to the registry
(`proxy_request_buffering off`, no `client_max_body_size`) instead of spooling them to its
client_body_temp directory first (which made a 1 GiB push 1.73x slower than direct) or refusing them
(`client_max_body_size 2G` in the original design)."""

from __future__ import annotations

import base64
import re
import time
import urllib.request
from pathlib import Path

import pytest
from client_harness import USERS, GatewayProcess, Images, Launcher, ok
from spool_watch import SpoolWatch

from gateway.images import GiB, Image, Layer, MiB

ALICE = f"alice:{USERS['alice']}"
DEBIAN_BODY_TEMP = Path("/var/lib/nginx/body")  # nginx-light's compiled-in client_body_temp_path


def body_temp_dir(gateway: GatewayProcess) -> Path:
    """Where this nginx would spool request bodies: the rendered client_body_temp_path, else the default."""
    for conf in gateway.data.rglob("nginx*.conf"):
        m = re.search(r"^\s*client_body_temp_path\s+(\S+?)[\s;]", conf.read_text(), re.MULTILINE)
        if m:
            return Path(m[1])
    return DEBIAN_BODY_TEMP


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
    with SpoolWatch(nginx_pids(gateway), body_temp_dir(gateway)) as watch:
        ok(launch.skopeo.copy(image.ref, f"docker://{gateway.doors.registry}/{name}", dest_creds=ALICE))
    elapsed = time.monotonic() - started
    layer = image.layers[0]
    assert blob_size_through_gateway(gateway.doors.registry, name.split(":")[0], layer.digest) == layer.size
    assert watch.samples > 10, "the watcher must have sampled during the push"
    print(f"\npushed {layer.size / MiB:.0f} MiB in {elapsed:.1f}s ({layer.size / MiB / elapsed:.0f} MiB/s)")
    return elapsed, watch


def test_one_gib_layer_is_streamed_not_spooled(launch: Launcher, images: Images) -> None:
    image = images.get("large-1g", [Layer(GiB, 7)])
    _, watch = push_large(launch, image, "team/large:1g")
    assert watch.spool_files == set(), f"nginx spooled the body to {watch.spool_files}"
    # Logs and the login cache write a little; a spooled layer would be the whole GiB.
    assert watch.written < 16 * MiB, f"nginx wrote {watch.written / MiB:.0f} MiB to disk during the push"


@pytest.mark.slow
def test_layer_over_two_gib_pushes(launch: Launcher, images: Images) -> None:
    image = images.get("large-2g", [Layer(2 * GiB + 64 * MiB, 8)])
    assert image.layers[0].size > 2 * GiB
    _, watch = push_large(launch, image, "team/large:2g")
    assert watch.written < 16 * MiB, f"nginx wrote {watch.written / MiB:.0f} MiB to disk during the push"
