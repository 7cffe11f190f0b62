"""Test images built from Python: no Docker Hub, no `docker build`, no image pulls from the outside.

`build_image` writes an OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
whose layers are uncompressed tars holding one file of pseudo-random bytes. Everything is a pure function of
the layer sizes and seeds: the same `Layer` always gives the same blob digest, so two images built with a
common `Layer` share that layer in a registry exactly like two images built on one base image. Layers are
streamed to disk in 1 MiB chunks (hashed on the way), so a layer of several GiB never sits in memory.

`write_docker_archive` packs an image for `docker load` (Docker 20.10, still on many fleets, loads only
the docker-archive format) and `write_oci_archive` packs it for `ctr images import`. skopeo reads the
layout itself (`Image.ref`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

CHUNK = 1 << 20
TAR_BLOCK = 512
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Layer:
    """A layer to build: one file of `size` pseudo-random bytes derived from `seed`."""

    size: int
    seed: int


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """One tagged image in an OCI layout directory (several images may share one layout)."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def ref(self) -> str:
        """The skopeo transport reference of this image."""
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, blob: Blob) -> Path:
        return self.layout / "blobs" / "sha256" / blob.hex

    @property
    def manifest_bytes(self) -> bytes:
        return self.blob_path(self.manifest).read_bytes()


def random_chunks(size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes of an AES-CTR keystream keyed by `seed`: deterministic, incompressible and fast
    (several GB/s, where `random.randbytes` manages about 250 MB/s)."""
    key = hashlib.sha256(f"owncr-test-layer-{seed}".encode()).digest()
    keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(CHUNK)
    remaining = size
    while remaining > 0:
        n = min(CHUNK, remaining)
        yield keystream.update(zeros[:n])
        remaining -= n


class _BlobWriter:
    """Writes one blob into `blobs/sha256/` under a temporary name, hashing as it goes."""

    def __init__(self, blobs: Path) -> None:
        self._blobs = blobs
        fd, name = tempfile.mkstemp(dir=blobs, prefix=".partial-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.size += len(data)

    def commit(self, media_type: str) -> Blob:
        self._file.close()
        blob = Blob(f"sha256:{self._sha.hexdigest()}", self.size, media_type)
        self._tmp.replace(self._blobs / blob.hex)
        return blob


def _write_blob(blobs: Path, data: bytes, media_type: str) -> Blob:
    writer = _BlobWriter(blobs)
    writer.write(data)
    return writer.commit(media_type)


def write_layer(blobs: Path, layer: Layer) -> Blob:
    """A one-file tar, written by hand around the streamed payload (tarfile would want a file object);
    fixed name, owner and mtime so the digest depends on (size, seed) only."""
    info = tarfile.TarInfo(f"owncr-layer-{layer.seed}.bin")
    info.size = layer.size
    info.mode = 0o644
    info.mtime = 0
    writer = _BlobWriter(blobs)
    writer.write(info.tobuf(format=tarfile.GNU_FORMAT))
    for chunk in random_chunks(layer.size, layer.seed):
        writer.write(chunk)
    writer.write(bytes(-layer.size % TAR_BLOCK))
    writer.write(bytes(2 * TAR_BLOCK))  # end-of-archive marker
    return writer.commit(LAYER_MEDIA_TYPE)


def build_image(
    layout: Path, layers: Sequence[Layer], *, tag: str = "latest", label: str = "", arch: str = "amd64"
) -> Image:
    """Write (or add to) an OCI layout at `layout` an image made of `layers`, tagged `tag`.

    `label` goes into the image config, so two images with the same layers can still differ (e.g. an
    upstream impostor of a private tag)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_blobs = tuple(write_layer(blobs, layer) for layer in layers)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"owncr.test.label": label}, "Cmd": ["/bin/true"]},
        # Layers are uncompressed, so each diff_id is the layer digest itself.
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layer_blobs]},
        "history": [{"created_by": f"owncr.images layer seed={layer.seed}"} for layer in layers],
    }
    config_blob = _write_blob(blobs, _canonical(config), CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in layer_blobs],
    }
    manifest_blob = _write_blob(blobs, _canonical(manifest), MANIFEST_MEDIA_TYPE)
    _add_to_index(layout, manifest_blob, tag, arch)
    return Image(layout, tag, manifest_blob, config_blob, layer_blobs)


def _canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _add_to_index(layout: Path, manifest: Blob, tag: str, arch: str) -> None:
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    index: dict[str, object] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    entries = index["manifests"]
    assert isinstance(entries, list)
    kept = [m for m in entries if m.get("annotations", {}).get(REF_NAME) != tag]
    entry = manifest.descriptor() | {
        "annotations": {REF_NAME: tag},
        "platform": {"architecture": arch, "os": "linux"},
    }
    index["manifests"] = [*kept, entry]
    index_path.write_text(json.dumps(index, indent=1))


def write_docker_archive(image: Image, path: Path, repo_tag: str) -> Path:
    """The docker-archive (`docker save`) form of `image`, named `repo_tag`, for `docker load`.

    Format: https://github.com/moby/moby/blob/v20.10.24/image/tarexport/load.go (manifest.json with
    Config, RepoTags and Layers; each layer an uncompressed tar)."""
    manifest = [
        {
            "Config": f"{image.config.hex}.json",
            "RepoTags": [repo_tag],
            "Layers": [f"{b.hex}/layer.tar" for b in image.layers],
        }
    ]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        _add_file(archive, f"{image.config.hex}.json", image.blob_path(image.config))
        for blob in image.layers:
            _add_file(archive, f"{blob.hex}/layer.tar", image.blob_path(blob))
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
    return path


def write_oci_archive(image: Image, path: Path) -> Path:
    """The layout of `image` as one tar, for `ctr images import --base-name NAME` (which names the image
    NAME:<tag> from the index's ref-name annotation)."""
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [image.manifest.descriptor() | {"annotations": {REF_NAME: image.tag}}],
    }
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        _add_bytes(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(archive, "index.json", json.dumps(index).encode())
        for blob in (image.manifest, image.config, *image.layers):
            _add_file(archive, f"blobs/sha256/{blob.hex}", image.blob_path(blob))
    return path


def _add_file(archive: tarfile.TarFile, name: str, source: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = source.stat().st_size
    info.mode = 0o644
    with source.open("rb") as f:
        archive.addfile(info, f)  # tarfile copies in chunks: streamed, never whole in memory


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))
