"""The caches' eviction end to end (gateway/upkeep/eviction.py): images pulled through the mirror door of
`python -m gateway run`, their last-pull records written where nginx writes them (below
`<storage>/owncr/pulls/<upstream id>/`, or at the bucket's top level), old ones made old, then
maintenance: what nobody pulled within the ttl leaves the cache's storage, the rest is intact, the dry
run changes nothing, a budget evicts the least recently used first, and an evicted image pulled again
is fetched again, byte for byte. On a directory, and on S3 (moto's server), where a modification time
cannot be set: there the ttl is seconds and the run's `now` is passed."""

from __future__ import annotations

import io
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from gateway.names import PULLS_FLUSH_SECONDS, cache_key, upstream_id
from gateway.upkeep import maintenance
from gateway.upkeep.eviction import CachePolicy
from gateway.upkeep.store_readers import (
    CacheFiles,
    S3Reader,
    blob_data,
    pulls_prefix,
    record_key,
    revision_dir,
)
from tests.gateway.client_harness import GatewayProcess, Launcher, wait_until
from tests.gateway.routing_fixtures import TinyImage, digest_of

HUB = "docker.io"
DAY = 86400.0


def mirror(gateway: GatewayProcess) -> str:
    return f"http://{gateway.doors.mirror}"


def cache_registry(gateway: GatewayProcess) -> str:
    """The hub cache's own Distribution (nginx keeps its own short-lived copies of tags and blobs: asked
    directly, a pull proves what the cache itself answers)."""
    config = yaml.safe_load((gateway.data / "secrets" / f"{cache_key(upstream_id(HUB))}.yml").read_text())
    return f"http://{config['http']['addr']}"


def seeded(launch: Launcher, labels: list[str]) -> tuple[str, dict[str, TinyImage]]:
    """An upstream stand-in holding one image per label, as library/<label>:1."""
    upstream = launch.distribution("hub")
    images = {label: TinyImage.make(f"evict {label}", 64 * 1024) for label in labels}
    for label, image in images.items():
        image.push(upstream.url, f"library/{label}", "1")
    return upstream.url, images


def pull_all(gateway: GatewayProcess, images: dict[str, TinyImage]) -> None:
    for label, image in images.items():
        assert image.pulls_from(mirror(gateway), f"library/{label}", "1"), label


def blobs(image: TinyImage) -> set[str]:
    return {digest_of(b) for b in (image.manifest, image.config, image.layer)}


def cached(files: CacheFiles, label: str, image: TinyImage) -> bool | None:
    """True: the manifest and every blob are in the cache's storage; False: none of them; None: part."""
    there = [image.digest in files.revisions.get(f"library/{label}", {})]
    there += [b in files.blobs for b in blobs(image)]
    return True if all(there) else False if not any(there) else None


def age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def test_eviction_on_a_directory_by_ttl_dry_run_budget_and_refetch(launch: Launcher) -> None:
    # old: pulled 10 days ago; fresh: fetched 10 days ago, pulled now; unrecorded: fetched now, no
    # record; forgotten: fetched 10 days ago, no record.
    url, images = seeded(launch, ["old", "fresh", "unrecorded", "forgotten"])
    gateway = launch.gateway({HUB: url})
    pull_all(gateway, images)
    storage = gateway.data / "storage"
    root = storage / "cache" / HUB
    records = {
        label: storage / pulls_prefix(HUB) / record_key(f"library/{label}", image.digest)
        for label, image in images.items()
    }
    # The cache stores a blob as it streams it and nginx writes its pull records within a flush: wait for
    # both (each nginx writes a record once an hour at most), then set each image's story.
    deadline = time.monotonic() + PULLS_FLUSH_SECONDS + 20
    while not all(r.exists() for r in records.values()) or not all(
        (root / blob_data(b)).exists() for image in images.values() for b in blobs(image)
    ):
        assert time.monotonic() < deadline, "records and cached blobs within a flush"
        time.sleep(0.2)
    age(records["old"], 10)
    for label in ("unrecorded", "forgotten"):
        records[label].unlink()
    for label in ("old", "fresh", "forgotten"):
        image = images[label]
        age(root / revision_dir(f"library/{label}", image.digest) / "link", 10)
        for blob in blobs(image):
            age(root / blob_data(blob), 10)
    reader = maintenance.LocalStore(gateway.data).cache_storage()
    before = sorted(p for p in storage.rglob("*") if p.is_file() and "private" not in p.parts)

    dry = gateway.maintenance("--dry-run")
    assert dry.returncode == 0, dry.stderr
    print(dry.stdout)
    for label in ("old", "forgotten"):
        assert f"cache {HUB}: would evict library/{label}@{images[label].digest} (1, last used " in dry.stdout
    assert re.search(
        rf"^cache {HUB}: 2 images would be evicted \(not pulled for 168h\), 0 over budget; "
        r"\d+\.\d KiB -> \d+\.\d KiB$",
        dry.stdout,
        re.M,
    ), dry.stdout
    assert sorted(p for p in storage.rglob("*") if p.is_file() and "private" not in p.parts) == before

    done = gateway.maintenance()
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    summary = re.search(
        rf"^cache {HUB}: 2 images evicted \(not pulled for 168h\), 0 over budget; (.+) -> (.+)$",
        done.stdout,
        re.M,
    )
    assert summary and summary[1] != summary[2], done.stdout
    assert re.search(
        rf"^cache {HUB}: 2 images kept, {re.escape(summary[2])} \(ttl 168h, no budget\)$", done.stdout, re.M
    )
    files = reader.cache_files(HUB)
    assert {label: cached(files, label, image) for label, image in images.items()} == {
        "old": False,
        "fresh": True,
        "unrecorded": True,
        "forgotten": False,
    }
    assert set(reader.pull_records(HUB)) == {("library/fresh", images["fresh"].digest)}
    for label in ("fresh", "unrecorded"):
        assert images[label].pulls_from(mirror(gateway), f"library/{label}", "1"), label

    # Evicted, then pulled again: fetched again from upstream, byte for byte, and cached again; through
    # the door, and from the cache registry itself (nginx's copies cannot answer for it).
    assert images["old"].pulls_from(mirror(gateway), "library/old", "1")
    assert images["old"].pulls_from(cache_registry(gateway), "library/old", "1")
    # (stored as the cache sends it, the last part just after the answer)
    wait_until("old cached again", lambda: cached(reader.cache_files(HUB), "old", images["old"]) is True, 30)

    # A budget of two images' bytes: the least recently used goes. `old` was fetched again just now (no
    # record: the fetch counts), `fresh` has the record written after the first pulls, `unrecorded` only
    # its fetch, before that record: it goes.
    each = sum(len(b) for b in (images["old"].manifest, images["old"].config, images["old"].layer))
    store = maintenance.LocalStore(gateway.data)
    store.cache_policy = CachePolicy(7 * 86400, budget_bytes=2 * each + 1024)
    out = io.StringIO()
    maintenance.run(store, out=out)
    print(out.getvalue())
    assert re.search(
        rf"^cache {HUB}: 0 images evicted \(not pulled for 168h\), 1 over budget; ", out.getvalue(), re.M
    )
    assert f"evicting library/unrecorded@{images['unrecorded'].digest}" in out.getvalue()
    files = reader.cache_files(HUB)
    assert [label for label, image in images.items() if cached(files, label, image)] == ["old", "fresh"]
    assert images["unrecorded"].pulls_from(mirror(gateway), "library/unrecorded", "1")


def test_eviction_on_s3_by_ttl_and_refetch(launch: Launcher) -> None:
    s3 = launch.s3_server()
    url, images = seeded(launch, ["old", "recent"])
    flags = ["--s3-endpoint", s3.endpoint, "--s3-bucket", s3.bucket]
    gateway = launch.gateway({HUB: url}, name="s3-evict", extra_args=flags, env=s3.credentials)
    store = maintenance.LocalStore(gateway.data)
    reader = store.cache_storage()
    assert isinstance(reader, S3Reader)

    def pulled(label: str) -> None:
        assert images[label].pulls_from(mirror(gateway), f"library/{label}", "1")
        key = f"{pulls_prefix(HUB)}/{record_key(f'library/{label}', images[label].digest)}"
        reader.client.put_object(Bucket=reader.bucket, Key=key, Body=b"")

    pulled("old")
    time.sleep(4)  # LastModified has whole seconds: `old` is at least 3 s older than `recent`
    pulled("recent")
    store.cache_policy = CachePolicy(ttl_seconds=3)
    out = io.StringIO()
    maintenance.run(store, out=out, now=datetime.now(UTC))
    print(out.getvalue())
    assert re.search(
        rf"^cache {HUB}: 1 images evicted \(not pulled for 3s\), 0 over budget; ", out.getvalue(), re.M
    )
    files = reader.cache_files(HUB)
    assert (cached(files, "old", images["old"]), cached(files, "recent", images["recent"])) == (False, True)
    assert set(reader.pull_records(HUB)) == {("library/recent", images["recent"].digest)}
    assert images["old"].pulls_from(mirror(gateway), "library/old", "1")  # fetched again
    assert images["old"].pulls_from(cache_registry(gateway), "library/old", "1")
    # (stored as the cache sends it, the last part just after the answer)
    wait_until("old cached again", lambda: cached(reader.cache_files(HUB), "old", images["old"]) is True, 30)
