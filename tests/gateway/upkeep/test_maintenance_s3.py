"""Maintenance on S3 storage (R2 in production): what `S3Reader` (gateway/upkeep/store_readers.py, which the
cluster's maintenance uses) reads, checked against what Distribution 3.1.1 really writes to a bucket,
then `python -m gateway maintenance` end to end on it. The gateway runs on moto's S3 server
(`python -m gateway run --s3-endpoint ... --retention team=keep:1`); images are pushed and pulled
through its doors; the reader gets the private registry's own rendered `storage.s3` section, as
maintenance reads it in the cluster."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gateway.bench.images import Layer, MiB
from gateway.upkeep.maintenance import STATE_FILE
from gateway.upkeep.registry_api import RegistryApi
from gateway.upkeep.store_readers import S3Reader, reader_for
from tests.gateway.client_harness import USERS, Images, Launcher, ok

pytestmark = pytest.mark.docker
ALICE = f"alice:{USERS['alice']}"


def test_s3_reader_sees_push_times_revisions_and_sizes_as_distribution_writes_them(
    launch: Launcher, images: Images
) -> None:
    s3 = launch.s3_server()
    hub = launch.distribution("s3-times-hub")
    base = images.get("s3-times-base", [Layer(MiB, 91)])
    launch.seed(hub, base, "library/base:1.0")
    flags = ["--s3-endpoint", s3.endpoint, "--s3-bucket", s3.bucket, "--retention", "team=keep:1"]
    gateway = launch.gateway({"docker.io": hub.url}, name="s3-times", extra_args=flags, env=s3.credentials)
    first = images.get("s3-times-a", [Layer(MiB, 92), Layer(64 * 1024, 93)])
    second = images.get("s3-times-b", [Layer(MiB // 2, 94)])
    registry, mirror = gateway.doors.registry, gateway.doors.mirror
    before = datetime.now(UTC) - timedelta(seconds=2)
    ok(launch.skopeo.copy(first.ref, f"docker://{registry}/team/app:old", dest_creds=ALICE))
    time.sleep(1.5)
    ok(launch.skopeo.copy(second.ref, f"docker://{registry}/team/app:new", dest_creds=ALICE))
    time.sleep(1.5)  # a second apart: moto's LastModified has whole seconds
    ok(launch.skopeo.copy(first.ref, f"docker://{registry}/team/app:again", dest_creds=ALICE))
    ok(launch.skopeo.copy(f"docker://{mirror}/library/base:1.0", f"oci:{launch.workdir / 'pulled'}:x"))

    info = json.loads((gateway.data / "state" / STATE_FILE).read_text())
    config = yaml.safe_load(Path(info["private_config"]).read_text())
    reader = reader_for(config["storage"], run=lambda argv: pytest.fail(f"S3 storage ran {argv}"))
    assert isinstance(reader, S3Reader)

    times = reader.tag_times("team/app")
    assert set(times) == {"old", "new", "again"}
    assert before < times["old"] < times["new"] < times["again"] < datetime.now(UTC) + timedelta(seconds=2)
    api = RegistryApi(info["private_url"])
    digests = {api.manifest("team/app", tag).digest for tag in ("old", "new")}
    assert reader.revisions("team/app") == digests  # `again` is `old`'s manifest
    assert reader.revisions("team/none") == set()
    pushed = sum(layer.size for image in (first, second) for layer in image.layers)
    assert pushed < reader.private_bytes() < pushed + 64 * 1024  # layers plus configs, manifests, links
    caches = reader.cache_bytes()
    assert set(caches) == {"docker.io"} and caches["docker.io"] >= base.layers[0].size

    # keep:1 keeps `again` (the newest), whose manifest is `old`'s: `old` is only untagged, `new` goes by
    # digest, and the collection frees `new`'s layer. The dry run first changes nothing.
    dry = gateway.maintenance("--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert re.search(r"would delete team/app:new \(manifest, 51\d\.\d KiB\)", dry.stdout), dry.stdout
    assert "would delete team/app:old (tag only" in dry.stdout
    assert set(reader.tag_times("team/app")) == {"old", "new", "again"}
    stored = reader.private_bytes()
    done = gateway.maintenance()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "retention: team/app: deleted 2 tags: new, old" in done.stdout, done.stdout
    fresh = reader_for(config["storage"], run=lambda argv: pytest.fail(f"S3 storage ran {argv}"))
    assert set(fresh.tag_times("team/app")) == {"again"}
    assert fresh.revisions("team/app") == {api.manifest("team/app", "again").digest}
    freed = re.search(r"freed [\d.]+ \w+, (\d+) bytes", done.stdout)
    assert freed and int(freed[1]) >= second.layers[0].size, done.stdout
    assert fresh.private_bytes() == stored - int(freed[1])
    assert re.search(r"cache docker.io: 1 images kept, 1\.\d MiB", done.stdout), done.stdout
    ok(
        launch.skopeo.copy(
            f"docker://{registry}/team/app:again", f"oci:{launch.workdir / 'again'}:x", src_creds=ALICE
        )
    )
