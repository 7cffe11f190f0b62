"""Maintenance on real registries: `python -m gateway maintenance` against the data plane `python -m
gateway run --retention ...` started (retention rules, dry run, protected patterns), and garbage
collection while pushes and pulls run: every image acknowledged before, during and after the GC pulls
completely afterwards, pushes refused in the read-only window got a retryable 503 and succeed when
retried, and the private storage shrinks (gateway/upkeep/maintenance.py has the safety argument)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.upkeep import registry_api
from tests import ROOT
from tests.gateway.client_harness import USERS, GatewayProcess, Launcher
from tests.gateway.routing_fixtures import (
    OCI_MANIFEST,
    Response,
    TinyImage,
    assert_oci_error,
    digest_of,
    request,
)

ALICE = ("alice", USERS["alice"])
DAY = 86400.0


def base(gateway: GatewayProcess) -> str:
    return f"http://{gateway.doors.registry}"


def put_document(
    gateway: GatewayProcess, name: str, reference: str, body: bytes, media_type: str
) -> Response:
    """PUT a manifest or index under a tag or its digest."""
    return request(
        f"{base(gateway)}/v2/{name}/manifests/{reference}",
        "PUT",
        body=body,
        headers={"Content-Type": media_type},
        auth=ALICE,
    )


def tags_of(gateway: GatewayProcess, name: str) -> list[str]:
    resp = request(f"{base(gateway)}/v2/{name}/tags/list", auth=ALICE)
    assert resp.status == 200, resp.body
    return sorted(resp.json()["tags"] or [])  # type: ignore[arg-type]


def pushed_days_ago(gateway: GatewayProcess, name: str, tag: str, days: float) -> None:
    """Moves the tag's push time (the mtime of its link in storage, which retention reads) into the past."""
    link = gateway.data / "storage/private/docker/registry/v2/repositories" / name
    link = link / "_manifests/tags" / tag / "current/link"
    when = time.time() - days * DAY
    os.utime(link, (when, when))


def pulls_completely(gateway: GatewayProcess, name: str, image: TinyImage, ref: str) -> bool:
    """Manifest by `ref` and every blob it names, through the registry door."""
    return image.pulls_from(base(gateway), name, ref, ALICE)


# ---- retention ----------------------------------------------------------------------------------------

# team: keep the 2 newest, and v*; acme: keep 10 days, and latest; ops: no rule (untouched).
RULES = ["team=keep:2,protect:v*", "acme=days:10,protect:latest"]


@dataclass
class Pushed:
    images: dict[tuple[str, str], TinyImage] = field(default_factory=dict)

    def push(self, gateway: GatewayProcess, name: str, tag: str, days: float, same_as: str = "") -> None:
        image = self.images[(name, same_as)] if same_as else TinyImage.make(f"{name}:{tag}", 64 * 1024)
        image.push(base(gateway), name, tag, ALICE)
        pushed_days_ago(gateway, name, tag, days)
        self.images[(name, tag)] = image


INDEX = "application/vnd.oci.image.index.v1+json"


def push_index(gateway: GatewayProcess, name: str, tag: str, platforms: list[TinyImage]) -> bytes:
    """A multi-platform image: each platform manifest pushed by digest (untagged), then the index."""
    for image in platforms:
        image.push(base(gateway), name, image.digest, ALICE)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for image, arch in zip(platforms, ("amd64", "arm64"), strict=False)
            ],
        }
    ).encode()
    put = put_document(gateway, name, tag, index, INDEX)
    assert put.status == 201, put.body
    return index


def fallback_tag(digest: str) -> str:
    """The tag of a subject's referrers index (the OCI referrers tag schema)."""
    return digest.replace(":", "-")


def put_referrer(gateway: GatewayProcess, name: str, image: TinyImage, subject: TinyImage) -> bytes:
    """`image` as a referrer of `subject` (as cosign and `oras attach` push them): untagged, by digest."""
    for blob in (image.layer, image.config):
        assert upload_blob(gateway, name, blob).status == 201
    document = json.loads(image.manifest)
    document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.manifest)}
    manifest = json.dumps(document).encode()
    put = put_document(gateway, name, digest_of(manifest), manifest, OCI_MANIFEST)
    assert put.status == 201, put.body
    return manifest


def test_retention_rules_dry_run_and_protected_tags(launch: Launcher) -> None:
    upstream = launch.distribution("dockerhub")
    args = [a for rule in RULES for a in ("--retention", rule)]
    gateway = launch.gateway(
        {"docker.io": upstream.url}, namespaces=("team", "acme", "ops"), extra_args=args, private_replicas=1
    )
    world = Pushed()
    for tag, days in (("v1", 50), ("a", 40), ("b", 30), ("c", 20), ("d", 10)):
        world.push(gateway, "team/app", tag, days)
    # An old tag naming the same manifest as a kept one: only the tag goes, the manifest stays.
    world.push(gateway, "team/app", "old", 60, same_as="d")
    for tag, days in (("n1", 2), ("n2", 5), ("o1", 15), ("latest", 100)):
        world.push(gateway, "acme/web", tag, days)
    world.push(gateway, "ops/tool", "x", 100)
    # A kept multi-platform tag and an old tag naming one of its platform manifests: the old tag goes,
    # the platform manifest stays (never deleted by digest, and the GC keeps what a kept index lists).
    amd64, arm64 = TinyImage.make("multi amd64", 64 * 1024), TinyImage.make("multi arm64", 64 * 1024)
    index = push_index(gateway, "team/multi", "v2", [amd64, arm64])
    amd64.push(base(gateway), "team/multi", "old-amd64", ALICE)
    pushed_days_ago(gateway, "team/multi", "old-amd64", 90)
    pushed_days_ago(gateway, "team/multi", "v2", 80)
    # Untagged manifests: one whose tag moved on (goes), a signature of a kept image (stays), and one
    # in a namespace without a rule (stays: the GC no longer drops untagged manifests everywhere).
    moved = TinyImage.make("m2 before it moved", 64 * 1024)
    moved.push(base(gateway), "team/multi", "m2", ALICE)
    for tag, days in (("m1", 2), ("m2", 3)):
        world.push(gateway, "team/multi", tag, days)
    signature = put_referrer(
        gateway, "team/multi", TinyImage.make("signature of m1"), world.images[("team/multi", "m1")]
    )
    # A referrer of an image that goes: its referrers index (the door's fallback tag) loses its tag.
    doomed = world.images[("team/app", "a")]
    doomed_signature = put_referrer(gateway, "team/app", TinyImage.make("signature of a"), doomed)
    loose = TinyImage.make("ops untagged")
    loose.push(base(gateway), "ops/tool", loose.digest, ALICE)
    before = {name: tags_of(gateway, name) for name in ("team/app", "acme/web", "ops/tool", "team/multi")}

    dry = gateway.maintenance("--dry-run")
    assert dry.returncode == 0, dry.stderr
    size = re.escape("(manifest, 64.2 KiB)")
    for line in (
        rf"retention: would delete team/app:a {size}",
        rf"retention: would delete team/app:b {size}",
        r"retention: would delete team/app:old \(tag only, 64.2 KiB\)",
        rf"retention: would delete acme/web:o1 {size}",
        rf"retention: would delete team/app:{fallback_tag(doomed.digest)} \(manifest, ",
        rf"retention: would delete team/app:{digest_of(doomed_signature)} \(untagged, ",
        r"retention: team/app: 6 tags, 3 kept; 1 untagged manifests go",
        rf"retention: team/app: would delete 4 tags: a, b, old, {fallback_tag(doomed.digest)}",
        r"retention: would delete team/multi:old-amd64 \(tag only, 64.2 KiB\)",
        rf"retention: would delete team/multi:{moved.digest} \(untagged, 64.2 KiB\)",
        r"retention: team/multi: 4 tags, 3 kept; 1 untagged manifests go",
        r"gc \(dry run\): .* pushes not paused",
    ):
        assert re.search(line, dry.stdout), (line, dry.stdout)
    assert "ops/tool" not in dry.stdout
    assert {name: tags_of(gateway, name) for name in before} == before, "the dry run changed tags"

    done = gateway.maintenance()
    assert done.returncode == 0, done.stderr
    assert "one private replica: pulls of private images fail while it restarts" in done.stderr
    print(done.stdout)
    assert tags_of(gateway, "team/app") == ["c", "d", "v1"]  # 2 newest + protected v*
    assert tags_of(gateway, "acme/web") == ["latest", "n1", "n2"]  # 10 days + protected latest
    assert tags_of(gateway, "ops/tool") == ["x"]  # no rule: untouched, however old
    m1 = world.images[("team/multi", "m1")]
    # v2 protected by v*; the referrers index of the kept m1 stays, and the API still lists its signature.
    assert tags_of(gateway, "team/multi") == ["m1", "m2", fallback_tag(m1.digest), "v2"]
    listed = request(f"{base(gateway)}/v2/team/multi/referrers/{m1.digest}", auth=ALICE).json()
    assert [d["digest"] for d in listed["manifests"]] == [digest_of(signature)]  # type: ignore[index]
    gone_index = request(f"{base(gateway)}/v2/team/app/referrers/{doomed.digest}", auth=ALICE).json()
    assert gone_index["manifests"] == []
    got = request(f"{base(gateway)}/v2/team/multi/manifests/v2", auth=ALICE, headers={"Accept": INDEX})
    assert got.status == 200 and got.body == index
    for image in (amd64, arm64):  # untagged now, listed by the kept index: still complete
        assert pulls_completely(gateway, "team/multi", image, image.digest)
    oci = {"Accept": OCI_MANIFEST}  # without it Distribution answers 404 for any OCI manifest
    gone = request(f"{base(gateway)}/v2/team/multi/manifests/{moved.digest}", auth=ALICE, headers=oci)
    assert_oci_error(gone, 404, "MANIFEST_UNKNOWN")
    kept_signature = request(
        f"{base(gateway)}/v2/team/multi/manifests/{digest_of(signature)}", auth=ALICE, headers=oci
    )
    assert kept_signature.status == 200 and kept_signature.body == signature
    assert pulls_completely(gateway, "ops/tool", loose, loose.digest)
    for name, tag in (("team/app", "c"), ("team/app", "d"), ("team/app", "v1"), ("acme/web", "latest")):
        assert pulls_completely(gateway, name, world.images[(name, tag)], tag), (name, tag)
    # Deleted by digest: the manifests are gone, not only their tags.
    for name, tag in (("team/app", "a"), ("team/app", "b"), ("acme/web", "o1")):
        digest = world.images[(name, tag)].digest
        gone = request(f"{base(gateway)}/v2/{name}/manifests/{digest}", auth=ALICE, headers=oci)
        assert_oci_error(gone, 404, "MANIFEST_UNKNOWN")
    freed = re.search(r"freed [0-9.]+ \w+, (\d+) bytes", done.stdout)
    assert freed and int(freed[1]) >= 3 * 64 * 1024, done.stdout  # three unique layers at least

    # A second run finds nothing more to delete.
    again = gateway.maintenance()
    assert again.returncode == 0 and "deleting" not in again.stdout, again.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("team=keep:x", "'keep:x' is not keep:N, days:D or protect:GLOB"),
        ("team=protect:v*", "retention.team: set keep (newest tags kept) or days"),
        ("nobody=keep:3", "retention.nobody: not a private namespace"),
        ("team=keep:1,protect:a/b", "retention.team.protect: 'a/b' is no tag glob"),
    ],
)
def test_bad_retention_is_refused_naming_the_key(tmp_path: Path, spec: str, message: str) -> None:
    argv = [sys.executable, "-m", "gateway", "run", "--data", str(tmp_path), "--registry-port", "1"]
    argv += ["--mirror-port", "2", "--upstream", "http://127.0.0.1:3", "--namespace", "team"]
    argv += ["--user", "alice:alice-secret-1", "--retention", spec]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr


def test_maintenance_of_an_empty_store_collects_nothing(launch: Launcher) -> None:
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, extra_args=["--retention", "team=keep:1"])
    for extra in (["--dry-run"], []):
        done = gateway.maintenance(*extra)
        assert done.returncode == 0, done.stderr
        assert re.search(r"gc( \(dry run\))?: .*\b0 blobs", done.stdout), done.stdout
    # ... and the registry takes pushes again afterwards.
    TinyImage.make("after an empty run").push(base(gateway), "team/app", "1", ALICE)


def test_maintenance_without_a_running_gateway_says_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "maintenance", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert "start the data plane first (python -m gateway run --data" in done.stderr, done.stderr


# ---- garbage collection under load -------------------------------------------------------------------


def upload_blob(gateway: GatewayProcess, name: str, blob: bytes) -> Response:
    """POST then PUT ?digest= (monolithic); the first refusal is returned, else the PUT's answer."""
    start = request(f"{base(gateway)}/v2/{name}/blobs/uploads/", "POST", body=b"", auth=ALICE)
    if start.status != 202:
        return start
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    return request(
        f"{base(gateway)}{location}{sep}digest={digest_of(blob)}",
        "PUT",
        body=blob,
        headers={"Content-Type": "application/octet-stream"},
        auth=ALICE,
    )


def put_manifest(gateway: GatewayProcess, name: str, tag: str, image: TinyImage) -> Response:
    return put_document(gateway, name, tag, image.manifest, OCI_MANIFEST)


def push_once(gateway: GatewayProcess, name: str, tag: str, image: TinyImage) -> Response:
    """One attempt as a client makes it: HEAD each blob, upload the missing ones, PUT the manifest."""
    for blob in (image.layer, image.config):
        head = request(f"{base(gateway)}/v2/{name}/blobs/{digest_of(blob)}", "HEAD", auth=ALICE)
        if head.status != 200:
            answer = upload_blob(gateway, name, blob)
            if answer.status != 201:
                return answer
    return put_manifest(gateway, name, tag, image)


@dataclass
class Load:
    """Pushes and pulls run against the gateway from threads until `stop`; what each saw."""

    gateway: GatewayProcess
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: dict[str, TinyImage] = field(default_factory=dict)  # tag -> image (201 on its PUT)
    acknowledged_at: list[float] = field(default_factory=list)  # time.monotonic() of each 201
    refused: list[Response] = field(default_factory=list)  # 503s seen, retried
    refused_at: list[float] = field(default_factory=list)  # time.monotonic() of each 503
    other: list[str] = field(default_factory=list)  # anything else: a failure
    pulls: int = 0
    failed_pulls: list[str] = field(default_factory=list)

    def pusher(self, worker: int, limit: int = 60) -> None:
        for i in range(limit):
            if self.stop.is_set():
                return
            tag = f"w{worker}-{i}"
            image = TinyImage.make(f"load {tag}", 32 * 1024)
            for _attempt in range(300):  # bounded: at least 300 x 0.05 s, longer than any window here
                answer = push_once(self.gateway, "team/load", tag, image)
                if answer.status == 201:
                    self.acknowledged[tag] = image
                    self.acknowledged_at.append(time.monotonic())
                    break
                if answer.status == 503 or (answer.status == 400 and b"MANIFEST_BLOB_UNKNOWN" in answer.body):
                    if answer.status == 503:
                        self.refused.append(answer)
                        self.refused_at.append(time.monotonic())
                    time.sleep(0.05)
                    continue
                self.other.append(f"{tag}: {answer.status} {answer.body[:200]!r}")
                break
            else:
                self.other.append(f"{tag}: never accepted")

    def puller(self, images: dict[str, TinyImage]) -> None:
        while not self.stop.is_set():
            for tag, image in images.items():
                self.pulls += 1
                if not pulls_completely(self.gateway, "team/base", image, tag):
                    self.failed_pulls.append(tag)


def test_gc_under_concurrent_pushes_and_pulls_loses_no_acknowledged_image(launch: Launcher) -> None:
    upstream = launch.distribution("dockerhub")
    gateway = launch.gateway({"docker.io": upstream.url}, private_replicas=2)
    baseline = {f"b{i}": TinyImage.make(f"base {i}", 64 * 1024) for i in range(3)}
    for tag, image in baseline.items():
        image.push(base(gateway), "team/base", tag, ALICE)
    # Garbage: images pushed, then deleted by digest (their layers are unreferenced).
    garbage = [TinyImage.make(f"garbage {i}", 256 * 1024) for i in range(4)]
    for i, image in enumerate(garbage):
        image.push(base(gateway), "team/junk", f"g{i}", ALICE)
        # Pushers may delete through the registry door (the router sends DELETE where it sends PUT).
        deleted = request(f"{base(gateway)}/v2/team/junk/manifests/{image.digest}", "DELETE", auth=ALICE)
        assert deleted.status == 202, deleted.body
    # A blob uploaded before the window whose manifest only comes after it.
    late = TinyImage.make("late manifest", 64 * 1024)
    for blob in (late.layer, late.config):
        assert upload_blob(gateway, "team/late", blob).status == 201
    # Outside the window a 405 stays a 405 (only the read-only mode's refusal becomes a 503).
    not_a_write = request(
        f"{base(gateway)}/v2/team/base/blobs/{digest_of(late.layer)}", "PUT", body=b"x", auth=ALICE
    )
    assert_oci_error(not_a_write, 405, "UNSUPPORTED")

    load = Load(gateway)
    threads = [threading.Thread(target=load.pusher, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=load.puller, args=(baseline,)))
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # pushes acknowledged before the GC
        started = time.monotonic()
        done = gateway.maintenance()
        ended = time.monotonic()
        time.sleep(1.0)  # ... and after it
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    assert "one private replica" not in done.stderr  # two here

    paused = re.search(r"gc: pushes paused ([0-9.]+) s", done.stdout)
    freed = re.search(r"freed [0-9.]+ \w+, (\d+) bytes", done.stdout)
    assert paused and freed, done.stdout
    assert int(freed[1]) >= 4 * 256 * 1024, "the garbage layers were not freed"
    assert load.other == [], load.other
    # Every refusal is a 503 UNAVAILABLE (clients retry it): the read-only window's, with Retry-After,
    # or a write that met a replica while it restarted.
    for answer in load.refused:
        assert_oci_error(answer, 503, "UNAVAILABLE")
    paused_refusals = [a for a in load.refused if b"pushes are paused" in a.body]
    paused_at = [
        t for a, t in zip(load.refused, load.refused_at, strict=True) if b"pushes are paused" in a.body
    ]
    assert paused_refusals, "no push met the read-only window: the test proves nothing about it"
    wrong = [(a.headers.items(), a.body[:200]) for a in paused_refusals if a.headers["Retry-After"] != "30"]
    assert wrong == [], wrong
    assert load.failed_pulls == [] and load.pulls > 0, (load.failed_pulls[:5], load.pulls)
    # Every acknowledged image pulls completely, whether acknowledged before, during (before and after
    # the window itself) or after the maintenance run; the refused ones were acknowledged when retried.
    when = [(t > started) + (t > ended) for t in load.acknowledged_at]
    assert {0, 1, 2} <= set(when), f"acknowledged before/during/after: {[when.count(i) for i in range(3)]}"
    for tag, image in load.acknowledged.items():
        assert pulls_completely(gateway, "team/load", image, tag), tag
    for tag, image in baseline.items():
        assert pulls_completely(gateway, "team/base", image, tag), tag

    # The manifest of blobs uploaded before the window is refused (never acknowledged broken) ...
    assert_oci_error(put_manifest(gateway, "team/late", "1", late), 400, "MANIFEST_BLOB_UNKNOWN")
    # ... and the client's retry (HEAD says 404, so it uploads again) succeeds and pulls.
    assert push_once(gateway, "team/late", "1", late).status == 201
    assert pulls_completely(gateway, "team/late", late, "1")
    print(
        f"pushes acknowledged {len(load.acknowledged)} (before/during/after "
        f"{'/'.join(str(when.count(i)) for i in range(3))}), read-only refusals seen over "
        f"{max(paused_at) - min(paused_at):.2f} s, refused then retried {len(load.refused)}, "
        f"pulls {load.pulls}; paused {paused[1]} s, freed {freed[1]} bytes"
    )


def test_registry_api_follows_pages_of_tags_and_repositories(
    launch: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distribution pages long lists (`Link: <...>; rel="next"`): every page is read."""
    registry = launch.distribution("plain")
    for i in range(5):
        TinyImage.make(f"paged {i}").push(registry.url, f"team/r{i}", f"t{i}")
        TinyImage.make(f"paged tag {i}").push(registry.url, "team/r0", f"x{i}")
    monkeypatch.setattr(registry_api, "PAGE", 2)
    api = registry_api.RegistryApi(registry.url)
    assert api.repositories() == [f"team/r{i}" for i in range(5)]
    assert sorted(api.tags("team/r0")) == ["t0", "x0", "x1", "x2", "x3", "x4"]
    assert api.tags("team/none") == []  # no such repository: nothing to keep or delete
