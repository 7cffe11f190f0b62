"""The mirror's last-pull records (gateway/render/njs/pulls.js): every manifest a client pulls from a cache
is recorded on the shared storage by whichever node served it, within a few seconds and outside the
request's path, so maintenance (gateway/upkeep/eviction.py) evicts by the last pull on any node. Two
gateways on one storage stand for two nodes; a filesystem and S3 (moto's server, checking the store's
request signatures as S3 and R2 do) both carry the records. Blobs, tag lists and names nobody has
leave no record."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.bench.images import Image, Layer, MiB
from gateway.config import FilesystemStorage, S3Storage
from gateway.local.runner import LocalGateway
from gateway.names import PULLS_FLUSH_SECONDS, STORE_PREFIX, STORE_PULLS, upstream_id
from tests.gateway.client_harness import Images, Launcher, team_settings
from tests.gateway.routing_fixtures import request

DAY = 86400.0


def _record(image: Image) -> str:
    return f"{STORE_PREFIX}/{STORE_PULLS}/{upstream_id('docker.io')}/library/app/{image.manifest.digest[7:]}"


def _wait(what: str, check: Callable[[], bool]) -> None:
    """A record is written within one flush of the pull (plus a store write)."""
    deadline = time.monotonic() + PULLS_FLUSH_SECONDS + 10
    while not check():
        assert time.monotonic() < deadline, f"{what} within {PULLS_FLUSH_SECONDS + 10} s"
        time.sleep(0.2)


def _pull(launch: Launcher, gateway: LocalGateway, image: Image, into: str) -> None:
    door = gateway.mirror_url.removeprefix("http://")
    assert launch.skopeo.pull(f"{door}/library/app:1.0", launch.workdir / into) == image.manifest.digest


def _nodes(
    launch: Launcher, images: Images, storage: FilesystemStorage | S3Storage
) -> tuple[Image, list[LocalGateway]]:
    hub = launch.distribution("hub")
    image = images.get("records-app", [Layer(MiB, 701)])
    launch.seed(hub, image, "library/app:1.0")
    settings = team_settings(storage, hub.url)
    return image, [launch.local_gateway(settings, name=f"node-{i}") for i in (1, 2)]


def test_a_pull_through_either_node_is_recorded_on_the_shared_filesystem(
    launch: Launcher, images: Images, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    image, (one, two) = _nodes(launch, images, FilesystemStorage(str(root)))
    record = root / _record(image)
    _pull(launch, one, image, "first")
    _wait("the first node's record", record.exists)
    # Only manifests the clients were answered with count: no blob, no tag list, nothing unknown.
    written = sorted(
        p.relative_to(root).as_posix() for p in (root / STORE_PREFIX / STORE_PULLS).rglob("*") if p.is_file()
    )
    assert written == [_record(image)]
    assert request(f"{one.mirror_url}/v2/library/nobody/manifests/1.0").status == 404
    assert request(f"{one.mirror_url}/v2/library/app/tags/list").status == 200

    # A pull through the other node moves the record's time: the last pull on any node counts.
    os.utime(record, (time.time() - DAY, time.time() - DAY))
    _pull(launch, two, image, "second")
    _wait("the second node's record", lambda: record.stat().st_mtime > time.time() - 60)
    time.sleep(PULLS_FLUSH_SECONDS + 1)
    for node in (one, two):  # every record written at its first try
        assert "owncr pulls" not in (node.data_dir / "logs" / "nginx.log").read_text(errors="replace")
    written = sorted(
        p.relative_to(root).as_posix() for p in (root / STORE_PREFIX / STORE_PULLS).rglob("*") if p.is_file()
    )
    assert written == [_record(image)]


def test_a_pull_is_recorded_in_the_bucket(launch: Launcher, images: Images) -> None:
    s3 = launch.s3_server()
    from tests.gateway.s3_server import ACCESS_KEY, SECRET_KEY

    storage = S3Storage(
        bucket=s3.bucket, endpoint=f"http://127.0.0.1:{s3.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    image, (one, _) = _nodes(launch, images, storage)
    _pull(launch, one, image, "pulled")
    _wait("the record in the bucket", lambda: _record(image) in set(s3.keys()))
    # Signed as the store signs every request (the server refuses a bad signature: none was refused).
    writes = [s for s in s3.check.requests() if f"/{STORE_PREFIX}/{STORE_PULLS}/" in s.path]
    assert writes and all(s.status < 300 for s in writes), writes
