"""A real Docker daemon (docker 28.5 from scripts/install-tools, started by the test with its own roots
and socket):
the mirror door in `registry-mirrors` serves docker.io pulls (nothing else could: no Docker Hub here),
and the registry door takes `docker login` and `docker push` of an image we built and `docker load`ed.
Why two doors at all (measured with this daemon): ARCHITECTURE.md, "Why two doors"."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench.images import Layer, write_docker_archive
from tests.gateway.client_harness import USERS, Dockerd, GatewayProcess, Images, Launcher, ok

pytestmark = pytest.mark.docker
ALICE = f"alice:{USERS['alice']}"


class World:
    def __init__(self, launch: Launcher, images: Images) -> None:
        self.dockerhub = launch.distribution("dockerhub")
        self.base = images.get("docker-base", [Layer(512 * 1024, 60), Layer(1000, 61)])
        launch.seed(self.dockerhub, self.base, "library/base:1.0")
        self.gateway: GatewayProcess = launch.gateway({"docker.io": self.dockerhub.url})
        self.registry = self.gateway.doors.registry
        self.mirror = self.gateway.doors.mirror
        self.skopeo = launch.skopeo
        self.dockerd: Dockerd = launch.dockerd(
            {
                "registry-mirrors": [f"http://{self.mirror}"],
                "insecure-registries": [self.registry, self.mirror],
            }
        )
        self.docker = self.dockerd.docker


@pytest.fixture(scope="module")
def world(module_launch: Launcher, images: Images) -> World:
    return World(module_launch, images)


def test_docker_hub_name_is_pulled_from_the_mirror(world: World) -> None:
    since = len(world.dockerhub.requests())
    ok(world.docker("pull", "base:1.0"))
    inspect = ok(world.docker("image", "inspect", "--format", "{{.Id}}", "base:1.0"))
    assert inspect.stdout.strip() == world.base.config.digest
    assert world.dockerhub.requests_for("library/base", since), "served by the stand-in through the mirror"


def test_private_name_is_not_on_the_mirror(world: World, images: Images) -> None:
    # The name exists privately (pushed through the registry door) AND upstream (an impostor): through
    # the mirror dockerd gets neither; the gateway refuses it without asking any registry.
    private = images.get("docker-private", [Layer(1000, 64)], label="private")
    ok(world.skopeo.copy(private.ref, f"docker://{world.registry}/team/app:1.0", dest_creds=ALICE))
    impostor = images.get("docker-impostor", [Layer(1000, 62)], label="impostor")
    ok(world.skopeo.copy(impostor.ref, f"docker://{world.dockerhub.host}/team/app:1.0"))
    since, logged = len(world.dockerhub.requests()), len(world.gateway.access_log())
    pull = world.docker("pull", "team/app:1.0")
    assert pull.returncode != 0
    assert world.dockerhub.requests_for("team", since) == []
    assert world.docker("image", "inspect", "team/app:1.0").returncode != 0, "nothing was pulled"
    asked = [e for e in world.gateway.access_log()[logged:] if str(e["uri"]).startswith("/v2/team/app/")]
    assert asked, "dockerd asked the mirror door first"
    answers = {(e["door"], e["route"], e["status"], e["upstream"]) for e in asked}
    assert answers == {("mirror", "refused", 404, "")}, asked


def test_login_then_push_to_the_registry_door(world: World, images: Images, tmp_path: Path) -> None:
    image = images.get("docker-app", [Layer(512 * 1024, 60), Layer(700 * 1024, 63)])
    name = f"{world.registry}/team/docker-app:1.0"
    ok(world.docker("load", "-i", str(write_docker_archive(image, tmp_path / "app.tar", name))))

    anonymous = world.docker("push", name)
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stderr, anonymous.stderr

    wrong = world.docker("login", world.registry, "-u", "alice", "--password-stdin", stdin="wrong-password")
    assert wrong.returncode != 0
    assert "401 Unauthorized" in wrong.stderr, wrong.stderr

    login = world.docker("login", world.registry, "-u", "alice", "--password-stdin", stdin=USERS["alice"])
    ok(login)
    assert "Login Succeeded" in login.stdout
    ok(world.docker("push", name))

    # Docker gzips the layers on push: compare what the registry holds by config (the image id).
    pushed = ok(world.skopeo.inspect_raw(f"docker://{name}", creds=ALICE))
    assert image.config.digest in pushed.stdout
    assert world.dockerhub.requests_for("team/docker-app") == []


def test_push_outside_private_namespaces_is_denied(world: World, images: Images, tmp_path: Path) -> None:
    image = images.get("docker-app", [Layer(512 * 1024, 60), Layer(700 * 1024, 63)])
    name = f"{world.registry}/library/not-ours:1.0"
    ok(world.docker("load", "-i", str(write_docker_archive(image, tmp_path / "x.tar", name))))
    ok(world.docker("login", world.registry, "-u", "alice", "--password-stdin", stdin=USERS["alice"]))
    push = world.docker("push", name)
    assert push.returncode != 0
    assert "denied" in push.stderr, push.stderr
