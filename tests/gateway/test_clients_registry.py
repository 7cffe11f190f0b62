"""The registry door with real clients, on the gateway as `python -m gateway run` starts it (default
settings): private images pushed and pulled with skopeo and containerd's ctr (each client pulls what the
other pushed, so content really travels), and the runner's own start/stop contract. What clients report
when refused: test_clients_auth.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench.images import Image, Layer, MiB, write_oci_archive
from tests.gateway.client_harness import (
    USERS,
    Containerd,
    GatewayProcess,
    Images,
    Launcher,
    PlainRegistry,
    ok,
)

ALICE = f"alice:{USERS['alice']}"


class World:
    def __init__(self, launch: Launcher) -> None:
        self.launch = launch
        self.upstream: PlainRegistry = launch.distribution("dockerhub")
        self.gateway: GatewayProcess = launch.gateway({"docker.io": self.upstream.url})
        self.containerd: Containerd = launch.containerd()
        self.registry = self.gateway.doors.registry
        self.mirror = self.gateway.doors.mirror
        self.skopeo = launch.skopeo


@pytest.fixture(scope="module")
def world(module_launch: Launcher) -> World:
    return World(module_launch)


def team_image(images: Images, key: str, seed: int) -> Image:
    return images.get(key, [Layer(256 * 1024, seed), Layer(2 * MiB, seed + 1), Layer(1000, seed + 2)])


def test_runner_prints_one_ready_line_and_stops_everything(launch: Launcher) -> None:
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url})
    # One line: the doors and the versions that run (GatewayProcess.start checked they are production's).
    assert gateway.stdout == [
        f"ready registry=http://{gateway.doors.registry} mirror=http://{gateway.doors.mirror} "
        f"metrics={gateway.metrics_url} {gateway.versions}\n"
    ]
    running = {p.comm for p in gateway.children()}
    assert {"nginx", "registry"} <= running, running
    code, leftover = gateway.stop()
    assert code == 0, gateway.log_tail()
    assert leftover == [], f"processes left behind by the runner: {leftover}"


def test_skopeo_push_then_ctr_pull(world: World, images: Images, tmp_path: Path) -> None:
    image = team_image(images, "team-skopeo", 100)
    ref = f"{world.registry}/team/skopeo-app:1.0"
    ok(world.skopeo.copy(image.ref, f"docker://{ref}", dest_creds=ALICE))

    pulled = world.containerd.ctr("images", "pull", "--plain-http", "--user", ALICE, ref)
    ok(pulled)
    assert world.containerd.image_digest(ref) == image.manifest.digest

    assert world.skopeo.pull(ref, tmp_path / "back", creds=ALICE) == image.manifest.digest
    assert world.upstream.requests_for("team") == []


def test_ctr_push_then_skopeo_pull(world: World, images: Images, tmp_path: Path) -> None:
    image = team_image(images, "team-ctr", 200)
    ref = f"{world.registry}/team/ctr-app:1.0"
    archive = str(write_oci_archive(image, tmp_path / "image.tar"))
    ok(world.containerd.ctr("images", "import", "--base-name", ref.removesuffix(":1.0"), archive))
    ok(world.containerd.push(ALICE, ref))

    assert world.skopeo.pull(ref, tmp_path / "back", creds=ALICE) == image.manifest.digest
    # Blobs came back byte for byte (skopeo verified each digest while copying).
    for blob in image.layers:
        assert (tmp_path / "back" / "blobs" / "sha256" / blob.hex).stat().st_size == blob.size
    assert world.upstream.requests_for("team") == []


def test_ctr_push_of_many_layers_is_not_rate_limited(world: World, images: Images, tmp_path: Path) -> None:
    """containerd checks every layer at once, each first without credentials: 30 parallel anonymous
    requests from one address must not count as failed logins (limit: burst 20)."""
    image = images.get("team-many", [Layer(1024 + i, 900 + i) for i in range(30)])
    ref = f"{world.registry}/team/many:1.0"
    archive = str(write_oci_archive(image, tmp_path / "image.tar"))
    ok(world.containerd.ctr("images", "import", "--base-name", ref.removesuffix(":1.0"), archive))
    ok(world.containerd.push(ALICE, ref))
    assert world.skopeo.pull(ref, tmp_path / "back", creds=ALICE) == image.manifest.digest
