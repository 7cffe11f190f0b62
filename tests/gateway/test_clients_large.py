"""Large layers through the registry door with skopeo: nginx streams request bodies to the registry
(`proxy_request_buffering off`, no `client_max_body_size`) instead of spooling them to its
client_body_temp directory first (which made a 1 GiB push 1.73x slower than direct) or refusing them
(`client_max_body_size 2G` in the original design)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from client_harness import USERS, GatewayProcess, Images, Launcher, ok

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


def written_to_disk(pid: int) -> int:
    """Bytes the process caused to be written to storage (not to sockets): /proc/<pid>/io write_bytes."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"])


class SpoolWatch:
    """Watches nginx while a push runs: the temp files it holds open under `temp_dir` (nginx unlinks a
    request-body temp file right after creating it, so the directory itself always looks empty: the
    open descriptors show it, as `... (deleted)`), and the bytes its processes write to disk."""

    def __init__(self, pids: list[int], temp_dir: Path) -> None:
        self.pids = pids
        self.temp_dir = str(temp_dir)
        self.spool_files: set[str] = set()
        self.samples = 0
        self.written = 0
        self._before = {pid: written_to_disk(pid) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.written = sum(written_to_disk(pid) - before for pid, before in self._before.items())

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    for fd in Path(f"/proc/{pid}/fd").iterdir():
                        with contextlib.suppress(OSError):
                            target = os.readlink(fd)
                            if target.startswith(self.temp_dir):
                                self.spool_files.add(target)
            self.samples += 1
            self._stop.wait(0.02)


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
