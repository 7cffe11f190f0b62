"""gateway/bench/images.py: the test images are deterministic, valid, share layers like real base images, and
load into Docker and containerd (the formats are checked by the real clients in the other test files)."""

from __future__ import annotations

import json
import tarfile
import tracemalloc
from pathlib import Path

from gateway.bench.images import (
    Layer,
    MiB,
    build_image,
    random_chunks,
    write_docker_archive,
    write_oci_archive,
)


def test_same_layers_same_digests_and_shared_layers(tmp_path: Path) -> None:
    a = build_image(tmp_path / "a", [Layer(1000, 1), Layer(MiB + 1, 2)], label="a")
    b = build_image(tmp_path / "b", [Layer(1000, 1), Layer(MiB + 1, 2)], label="a")
    c = build_image(tmp_path / "c", [Layer(1000, 1), Layer(10, 3)], label="c")
    assert a.manifest == b.manifest
    assert a.layers[0] == c.layers[0]  # a shared base layer
    assert a.layers[1] != c.layers[1]
    assert a.manifest != c.manifest


def test_label_alone_changes_the_image(tmp_path: Path) -> None:
    genuine = build_image(tmp_path / "g", [Layer(10, 1)], label="genuine")
    impostor = build_image(tmp_path / "i", [Layer(10, 1)], label="impostor")
    assert genuine.layers == impostor.layers
    assert genuine.manifest.digest != impostor.manifest.digest


def test_layer_is_a_tar_of_the_seeded_bytes(tmp_path: Path) -> None:
    image = build_image(tmp_path / "x", [Layer(3 * MiB + 17, 7)])
    with tarfile.open(image.blob_path(image.layers[0])) as tar:
        (member,) = tar.getmembers()
        assert member.size == 3 * MiB + 17
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == b"".join(random_chunks(3 * MiB + 17, 7))
    manifest = json.loads(image.manifest_bytes)
    assert [d["size"] for d in manifest["layers"]] == [image.layers[0].size]
    assert image.blob_path(image.layers[0]).stat().st_size == image.layers[0].size


def test_several_tags_in_one_layout(tmp_path: Path) -> None:
    one = build_image(tmp_path / "l", [Layer(10, 1)], tag="1")
    two = build_image(tmp_path / "l", [Layer(10, 2)], tag="2")
    again = build_image(tmp_path / "l", [Layer(10, 3)], tag="1")
    refs = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]
    }
    assert refs == {"1": again.manifest.digest, "2": two.manifest.digest}
    assert one.manifest.digest != again.manifest.digest


def test_archives_list_every_blob(tmp_path: Path) -> None:
    image = build_image(tmp_path / "x", [Layer(10, 1), Layer(20, 2)])
    with tarfile.open(write_docker_archive(image, tmp_path / "d.tar", "example.test/a/b:1")) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["example.test/a/b:1"]
        assert set(tar.getnames()) == {"manifest.json", manifest[0]["Config"], *manifest[0]["Layers"]}
    with tarfile.open(write_oci_archive(image, tmp_path / "o.tar")) as tar:
        blobs = {n.removeprefix("blobs/sha256/") for n in tar.getnames() if n.startswith("blobs/")}
        assert blobs == {b.hex for b in (image.manifest, image.config, *image.layers)}


def test_layers_are_streamed_not_held_in_memory(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        image = build_image(tmp_path / "big", [Layer(64 * MiB, 9)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.layers[0].size > 64 * MiB
    assert peak < 8 * MiB, f"building a 64 MiB layer peaked at {peak / MiB:.1f} MiB of Python memory"
