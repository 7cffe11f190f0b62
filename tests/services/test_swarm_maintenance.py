"""Maintenance of a deployed stack on a real swarm: `python -m components.cli.maintenance` (what the
maintenance workflow runs) against the local stack's services, while clients push and pull through the
registry door. Same swarm, stand-in images and deviations as test_swarm_services.py.

Proves for the cluster path what tests/gateway/upkeep/test_maintenance.py proves for the local data plane:
the dry run changes nothing; retention deletes exactly what its rule says through the maintenance
registry; pushes during the window get the gateway's retryable 503 and succeed when retried; every
image whose manifest PUT was acknowledged, before, during and after, pulls completely; the store shrank;
the private service ends writable with the spec it started with, and the maintenance registry is gone;
a run cut off inside its window is undone by the next one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.cli.maintenance import HELPER_LABEL, helper_spec, with_read_only
from components.plan import swarm_specs
from gateway import names
from gateway.bench.images import Image, Layer, build_image
from gateway.render.registry_config import READ_ONLY_ENV
from tests import ROOT
from tests.services import swarm_engine
from tests.services.test_swarm_services import PASSWORD, Swarm, deploy_local_stack, skopeo, swarm

__all__ = ["swarm"]  # the module's swarm fixture, shared

pytestmark = pytest.mark.docker

CREDS = f"alice:{PASSWORD}"
# The concurrent pushes (acme/live:live-N) are protected: what must survive them is the GC.
RULE = {"namespace": "acme", "keep": 1, "protect": ["v*", "live-*"]}
LOAD_SECONDS = 300  # bound of the concurrent clients
LIVE = 200  # pushes at most, one a second


def maintenance(
    engine: swarm_engine.Engine,
    private_service: str,
    *args: str,
    module: str = "components.cli.maintenance",
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "OWNCR_DOCKER_HOST": f"unix://{engine.socket_path}",
        "OWNCR_MAINTENANCE": json.dumps({"private_service": private_service, "retention": [RULE]}),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def maintenance_registries(engine: swarm_engine.Engine) -> list[dict[str, Any]]:
    return engine.get("/services?filters=" + urllib.parse.quote(json.dumps({"label": [HELPER_LABEL]})))


def tags(port: int, repository: str) -> set[str]:
    listed = skopeo(
        "list-tags", "--tls-verify=false", "--creds", CREDS, f"docker://127.0.0.1:{port}/{repository}"
    )
    return set(json.loads(listed.stdout)["Tags"])


def push(image: Image, port: int, ref: str, retries: int = 0) -> subprocess.CompletedProcess[str]:
    return skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", CREDS, f"--retry-times={retries}",
        image.ref, f"docker://127.0.0.1:{port}/{ref}", check=False,
    )  # fmt: skip


def pulls_completely(port: int, ref: str, into: Path) -> bool:
    got = skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", CREDS,
        f"docker://127.0.0.1:{port}/{ref}", f"oci:{into}:x", check=False,
    )  # fmt: skip
    return got.returncode == 0


@pytest.fixture
def images(tmp_path: Path) -> Iterator[dict[str, Image]]:
    layout = tmp_path / "oci"
    yield {
        name: build_image(
            layout, [Layer(size=1 << 20, seed=100 + i), Layer(size=1 << 18, seed=200 + i)], tag=name
        )
        for i, name in enumerate(("v1", "old1", "old2", "new"))
    } | {
        f"live{i}": build_image(layout, [Layer(size=1 << 16, seed=300 + i)], tag=f"live{i}")
        for i in range(LIVE)
    }


def test_maintenance_workflow_entry_point_on_a_live_swarm(
    swarm: Swarm, images: dict[str, Image], tmp_path: Path
) -> None:
    engine = swarm.engine
    local = deploy_local_stack(swarm, "svcmaint")
    registry_port, mirror_port = local.registry_port, local.mirror_port
    private = swarm_specs.service_name("svcmaint", names.PRIVATE_KEY)
    spec_before = engine.get(f"/services/{private}")["Spec"]

    # Pushed a second apart: push times (tag link mtimes) have one-second resolution.
    for name in ("v1", "old1", "old2", "new"):
        assert push(images[name], registry_port, f"acme/app:{name}").returncode == 0
        time.sleep(1.1)
    assert tags(registry_port, "acme/app") == {"v1", "old1", "old2", "new"}
    # Something in the Docker Hub cache, whose size the run reports.
    mirrored = f"docker://127.0.0.1:{mirror_port}/library/hello:1"
    skopeo("copy", "--src-tls-verify=false", mirrored, f"oci:{tmp_path / 'mirrored'}:x")

    # The stack's status (components/cli/status.py): that pull counted by the gateway, its blobs fetched
    # from the upstream, the pushes in the private store and the pull in the cache's storage.
    shown = maintenance(engine, private, module="components.cli.status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "the metrics of 1 gateway task(s)" in shown.stdout, shown.stdout
    assert re.search(r"blobs asked / fetched\s+[1-9]\d* / [1-9]", shown.stdout), shown.stdout
    assert re.search(r"upstream docker\.io\s+answering", shown.stdout), shown.stdout
    assert re.search(r"private\s+[\d.]+ MiB", shown.stdout), shown.stdout
    assert re.search(r"cache docker\.io\s+[\d.]+ (B|KiB|MiB)", shown.stdout), shown.stdout
    assert not maintenance_registries(engine)

    # Dry run: lists the two deletions with sizes, deletes nothing, never touches the private service.
    dry = maintenance(engine, private, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert re.search(r"would delete acme/app:old1 \(manifest, 1\.\d MiB\)", dry.stdout), dry.stdout
    assert "would delete acme/app:old2" in dry.stdout and "acme/app:v1" not in dry.stdout
    assert "pushes not paused" in dry.stdout
    assert tags(registry_port, "acme/app") == {"v1", "old1", "old2", "new"}
    assert engine.get(f"/services/{private}")["Spec"] == spec_before
    assert not maintenance_registries(engine)

    # The real run, while one client pushes new tags and another pulls, both through the registry door.
    acknowledged: list[str] = []
    refused: list[str] = []  # pushes the window refused (with the reason clients see)
    pull_failures: list[str] = []
    stop = threading.Event()

    def pusher() -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        for i in range(LIVE):
            if stop.is_set() or time.monotonic() > deadline:
                return
            time.sleep(1)
            ref = f"acme/live:live-{i}"
            done = push(images[f"live{i}"], registry_port, ref)
            if done.returncode != 0:
                refused.append(done.stderr)
                # What a client's retry does: skopeo's own (3 tries), until the window is over.
                for _ in range(30):
                    if (done := push(images[f"live{i}"], registry_port, ref, retries=3)).returncode == 0:
                        break
            if done.returncode == 0:
                acknowledged.append(ref)

    def puller() -> None:
        deadline, n = time.monotonic() + LOAD_SECONDS, 0
        while not stop.is_set() and time.monotonic() < deadline:
            got = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", CREDS,
                         f"docker://127.0.0.1:{registry_port}/acme/app:new", check=False)  # fmt: skip
            n += 1
            if got.returncode != 0:
                pull_failures.append(got.stderr)

    clients = [threading.Thread(target=pusher), threading.Thread(target=puller)]
    for c in clients:
        c.start()
    time.sleep(2)  # some pushes before the window
    try:
        done = maintenance(engine, private)
    finally:
        stop_after = time.monotonic() + 20  # and some after it
        while time.monotonic() < stop_after and clients[0].is_alive():
            time.sleep(0.5)
        stop.set()
        for c in clients:
            c.join(timeout=LOAD_SECONDS)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    print(out)

    # Retention: exactly the rule's deletions.
    assert "retention: acme/app: deleted 2 tags: old1, old2" in out
    assert tags(registry_port, "acme/app") == {"v1", "new"}
    # The window: refused pushes got the gateway's retryable answer, and their retries landed.
    assert refused, "no push fell into the window: the test proved nothing about it"
    assert all("503" in r or "unavailable" in r.lower() for r in refused), refused
    assert not pull_failures, pull_failures[:3]
    pushed = len(acknowledged)
    assert pushed >= 3, acknowledged
    for ref in ["acme/app:v1", "acme/app:new", *acknowledged]:
        assert pulls_completely(registry_port, ref, tmp_path / ref.replace("/", "_").replace(":", "_")), ref
    # Space was freed: at least the two deleted images' own layers (1.25 MiB each).
    freed = re.search(r"freed [\d.]+ \w+, (\d+) bytes", out)
    assert freed and int(freed[1]) >= 2 * ((1 << 20) + (1 << 18)), out
    paused = re.search(r"pushes paused ([\d.]+) s", out)
    assert paused, out
    # The cache's eviction ran in the maintenance registry's container on the cache's storage: the one
    # image pulled through the mirror was pulled just now, so it stays.
    assert re.search(r"cache docker.io: 1 images kept, 1\.\d MiB \(ttl 168h, no budget\)", out), out
    # The private service ends as it began (writable, same spec), the maintenance registry is gone.
    after: dict[str, Any] = engine.get(f"/services/{private}")["Spec"]
    env = after["TaskTemplate"]["ContainerSpec"].get("Env") or []
    assert not [e for e in env if e.split("=", 1)[0] in READ_ONLY_ENV]
    assert after == spec_before
    # Each replica restarted twice (into and out of the window), no more: putting the update policy
    # back restarted nothing.
    history = engine.get("/tasks?filters=" + urllib.parse.quote(json.dumps({"service": [private]})))
    slots = [t["Slot"] for t in history]
    assert sorted(slots) == sorted([*set(slots)] * 3), [(t["Slot"], t["Status"]["State"]) for t in history]
    assert not maintenance_registries(engine)
    print(
        f"maintenance on the swarm: pushes paused {paused[1]} s, freed {freed[1]} bytes; "
        f"{pushed} pushes acknowledged, {len(refused)} refused during the window and retried, "
        f"0 failed pulls"
    )

    # A run cut off inside its window (the runner lost) left the private service read-only and its
    # maintenance registry running: the next run says so, ends the window, removes the leftover.
    service = engine.get(f"/services/{private}")
    node = engine.get("/info")["Swarm"]["NodeID"]
    engine.post("/services/create", helper_spec(service, node, read_only=False))
    engine.post(
        f"/services/{private}/update?version={service['Version']['Index']}", with_read_only(after, True)
    )
    again = maintenance(engine, private)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{private} is still read-only from an earlier run; this run ends that" in again.stdout
    assert "retention: acme/app: 2 tags, 2 kept" in again.stdout
    assert engine.get(f"/services/{private}")["Spec"] == spec_before
    assert not maintenance_registries(engine)
    assert pulls_completely(registry_port, "acme/app:new", tmp_path / "after-recovery")
    assert push(images["old1"], registry_port, "acme/app:back").returncode == 0  # writable again
