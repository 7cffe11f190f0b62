"""The private registry on an S3-compatible server (moto's server mode on loopback) with the R2-shaped
storage config (`region: auto`, path-style addressing, a custom endpoint, no redirects to the bucket):
push and pull round-trip with skopeo through the registry door, blobs landing under the private root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gateway.bench.images import Layer, MiB
from gateway.config import GatewaySettings, S3Storage
from gateway.local.ports import free_port
from gateway.render.registry_config import PRIVATE_ROOT
from tests.gateway.client_harness import USERS, Images, Launcher, ok, team_settings
from tests.gateway.routing_fixtures import request

ALICE = f"alice:{USERS['alice']}"
BUCKET = "owncr-test"


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _bucket(s3_endpoint: str) -> Any:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto accepts any
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    return s3


def _settings(s3_endpoint: str, upstream_url: str, *, force_path_style: bool = True) -> GatewaySettings:
    storage = S3Storage(
        bucket=BUCKET,
        endpoint=s3_endpoint,
        access_key="test",
        secret_key="test",  # noqa: S106
        force_path_style=force_path_style,
    )
    return team_settings(storage, upstream_url)


def test_private_registry_on_s3_round_trip(
    launch: Launcher, images: Images, s3_endpoint: str, tmp_path: Path
) -> None:
    s3 = _bucket(s3_endpoint)
    upstream = launch.distribution("dockerhub")
    gateway = launch.local_gateway(_settings(s3_endpoint, upstream.url))
    registry = gateway.registry_url.removeprefix("http://")
    # One layer above the multipart chunk size (16 MiB), so the S3 driver uploads it in several parts.
    image = images.get("s3-image", [Layer(40 * MiB, 700), Layer(2 * MiB, 701)])
    ok(launch.skopeo.copy(image.ref, f"docker://{registry}/team/on-s3:1.0", dest_creds=ALICE))

    assert launch.skopeo.pull(f"{registry}/team/on-s3:1.0", tmp_path, creds=ALICE) == image.manifest.digest
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    big = image.layers[0].hex
    data = [k for k in keys if k.endswith(f"/blobs/sha256/{big[:2]}/{big}/data")]
    assert data and all(k.startswith(PRIVATE_ROOT.strip("/") + "/") for k in keys), keys[:20]
    head = s3.head_object(Bucket=BUCKET, Key=data[0])
    assert head["ContentLength"] == image.layers[0].size
    assert upstream.requests_for("team") == []


def test_without_path_style_addressing_the_bucket_is_not_found(launch: Launcher, s3_endpoint: str) -> None:
    """The control for `forcepathstyle` (read by Distribution >= 3.0's S3 driver): without it the driver
    addresses the bucket as a subdomain of the endpoint host (owncr-test.127.0.0.1), which does not
    exist, and every storage request fails: a push is refused and the registry's log says why. R2's
    endpoint needs path style for the same reason."""
    _bucket(s3_endpoint)
    upstream = launch.distribution("dockerhub")
    gateway = launch.local_gateway(_settings(s3_endpoint, upstream.url, force_path_style=False))
    started = request(
        f"{gateway.registry_url}/v2/team/on-s3/blobs/uploads/", "POST", auth=("alice", USERS["alice"])
    )
    assert started.status >= 500, (started.status, started.body)
    log = (gateway.data_dir / "logs" / "private.log").read_text(errors="replace")
    assert f"lookup {BUCKET}.127.0.0.1" in log, log[-2000:]
