"""The private registry on an S3-compatible server (moto's server mode on loopback) with the R2-shaped
storage config (`region: auto`, path-style addressing, a custom endpoint, no redirects to the bucket):
push and pull round-trip with skopeo through the registry door, blobs landing under the private root."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from client_harness import USERS, Images, Launcher, ok
from moto.server import ThreadedMotoServer

from gateway.config import GatewaySettings, S3Storage, Upstream, User
from gateway.images import Layer, MiB
from gateway.ports import free_port
from gateway.registry_config import PRIVATE_ROOT

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


def test_private_registry_on_s3_round_trip(
    launch: Launcher, images: Images, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Distribution 2.8.2's aws-sdk-go panics at start ("LoadCustomCABundleError ... unsupported
    # transport") when AWS_CA_BUNDLE is set, as on some machines; the runner passes its environment on.
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto accepts any
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    upstream = launch.distribution("dockerhub")
    settings = GatewaySettings(
        namespaces=("team",),
        users=(User("alice", USERS["alice"], pull=("team",), push=("team",)),),
        upstreams=(Upstream("docker.io", upstream.url),),
        storage=S3Storage(bucket=BUCKET, endpoint=s3_endpoint, access_key="test", secret_key="test"),  # noqa: S106
        http_secret=secrets.token_hex(16),
    )
    gateway = launch.local_gateway(settings)
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
