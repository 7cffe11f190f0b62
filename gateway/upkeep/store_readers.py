"""What maintenance reads from the private registry's storage itself, because the registry API does not
tell it: when each tag was last pushed, every manifest revision of a repository (tagged or not), and
how many bytes the private store and each cache hold; and for the caches' eviction (gateway/upkeep/
eviction.py) everything below a cache's root (`cache_files`: revisions, tags, layer links and blobs with
their sizes and times), the tag links' targets, manifests' bytes, the mirror's last-pull records, and
removal. `reader_for` picks the reader from the registry's own `storage` config section, so maintenance
reads exactly the store the registry writes.

Both readers follow Distribution's storage layout (registry/storage/paths.go), below each registry's
`rootdirectory`: `docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link` (rewritten
whenever the tag moves: its modification time is the tag's last push) and
`.../_manifests/revisions/sha256/<hex>/link`, `.../_layers/sha256/<hex>/link` and
`docker/registry/v2/blobs/sha256/<xx>/<hex>/data`; caches live beside the private root
(gateway/render/registry_config.py: `/private`, `/cache/<host>`), the gateway's own objects beside both
(gateway/names.py STORE_PREFIX), the last-pull records below `<STORE_PREFIX>/<STORE_PULLS>/<upstream id>/
<repository>/<hex>` (their modification time is the pull's).

A filesystem reader runs a few commands per cache, whatever the number of files (`find ... -exec ... +`,
`cat` and `rm` of many paths at once): in the cluster each is a `docker exec` in the maintenance registry.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.names import STORE_PREFIX, STORE_PULLS, upstream_id

REPOSITORIES = "docker/registry/v2/repositories"  # below a registry's root, every storage driver
BLOBS = "docker/registry/v2/blobs/sha256"
TAG_LINK = "current/link"
# Distribution refuses a larger manifest (handlers/manifests.go maxManifestBodySize); a larger file is
# no manifest maintenance trusts itself to read.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
_HEX = "[0-9a-f]{64}"
_REVISION = re.compile(rf"^{REPOSITORIES}/(.+?)/_manifests/revisions/sha256/({_HEX})/link$")
_TAG = re.compile(rf"^{REPOSITORIES}/(.+?)/_manifests/tags/([^/]+)/{TAG_LINK}$")
_LAYER = re.compile(rf"^{REPOSITORIES}/(.+?)/_layers/sha256/({_HEX})/link$")
_BLOB = re.compile(rf"^{BLOBS}/[0-9a-f]{{2}}/({_HEX})/data$")
_RECORD = re.compile(rf"^(.+)/({_HEX})$")
_DIGEST = re.compile(rf"^sha256:{_HEX}$")
_LINK_TARGET = re.compile(rf"^(.*):(sha256:{_HEX})$")  # grep -H: the link's path, then its content
_BATCH = 500  # paths per command line or delete request (S3 takes at most 1000)


class StoreError(RuntimeError):
    """The storage is not one maintenance can read."""


def tags_dir(repository: str) -> str:
    return f"{REPOSITORIES}/{repository}/_manifests/tags"


def revisions_dir(repository: str) -> str:
    return f"{REPOSITORIES}/{repository}/_manifests/revisions/sha256"


def revision_dir(repository: str, digest: str) -> str:
    return f"{revisions_dir(repository)}/{digest.removeprefix('sha256:')}"


def tag_dir(repository: str, tag: str) -> str:
    return f"{tags_dir(repository)}/{tag}"


def layer_dir(repository: str, digest: str) -> str:
    return f"{REPOSITORIES}/{repository}/_layers/sha256/{digest.removeprefix('sha256:')}"


def blob_dir(digest: str) -> str:
    hex_ = digest.removeprefix("sha256:")
    return f"{BLOBS}/{hex_[:2]}/{hex_}"


def blob_data(digest: str) -> str:
    return blob_dir(digest) + "/data"


def pulls_prefix(host: str) -> str:
    """Below the store root (a filesystem's storage root, a bucket's top level): the last-pull records
    of the cache of `host` (gateway/names.py)."""
    return f"{STORE_PREFIX}/{STORE_PULLS}/{upstream_id(host)}"


@dataclass(frozen=True)
class Stored:
    size: int
    time: datetime


@dataclass
class CacheFiles:
    """Every file below a cache's root (paths relative to it), sorted into Distribution's layout."""

    host: str
    files: dict[str, Stored] = field(default_factory=dict)  # every file, the layout's and any other
    revisions: dict[str, dict[str, datetime]] = field(default_factory=dict)  # repository -> digest -> time
    tag_links: dict[str, dict[str, str]] = field(default_factory=dict)  # repository -> tag -> link path
    layers: dict[str, set[str]] = field(default_factory=dict)  # repository -> linked blob digests
    blobs: dict[str, Stored] = field(default_factory=dict)  # digest -> its data file

    @classmethod
    def of(cls, host: str, files: Iterable[tuple[str, int, datetime]]) -> CacheFiles:
        found = cls(host)
        for path, size, time in files:
            found.files[path] = Stored(size, time)
            if m := _REVISION.match(path):
                found.revisions.setdefault(m[1], {})["sha256:" + m[2]] = time
            elif m := _TAG.match(path):
                found.tag_links.setdefault(m[1], {})[m[2]] = path
            elif m := _LAYER.match(path):
                found.layers.setdefault(m[1], set()).add("sha256:" + m[2])
            elif m := _BLOB.match(path):
                found.blobs["sha256:" + m[1]] = Stored(size, time)
        return found

    @property
    def repositories(self) -> list[str]:
        return sorted(set(self.revisions) | set(self.tag_links) | set(self.layers))

    def below(self, directories: Iterable[str]) -> list[str]:
        """The listed files below those directories (or those files themselves)."""
        ordered = sorted(self.files)
        found: list[str] = []
        for directory in directories:
            at = bisect_left(ordered, directory)
            while at < len(ordered) and (
                ordered[at] == directory or ordered[at].startswith(directory.rstrip("/") + "/")
            ):
                found.append(ordered[at])
                at += 1
        return found


def manifest_bytes(files: CacheFiles, digests: Iterable[str]) -> list[tuple[str, str]]:
    """(digest, data path) of the manifests worth reading: stored, and no larger than a manifest can be."""
    return [
        (d, blob_data(d))
        for d in sorted(set(digests))
        if d in files.blobs and files.blobs[d].size <= MANIFEST_MAX_BYTES
    ]


def record_key(repository: str, digest: str) -> str:
    """A record's path below its cache's pulls prefix."""
    return f"{repository}/{digest.removeprefix('sha256:')}"


def _records(found: Iterable[tuple[str, datetime]]) -> dict[tuple[str, str], datetime]:
    """(repository, digest) -> last pull, from (path below the pulls prefix, modification time)."""
    return {(m[1], "sha256:" + m[2]): time for path, time in found if (m := _RECORD.match(path))}


def _batches(items: list[str], size: int = _BATCH) -> Iterator[list[str]]:
    for at in range(0, len(items), size):
        yield items[at : at + size]


def _root(driver: Mapping[str, Any]) -> str:
    return "/" + str(driver.get("rootdirectory", "")).strip("/")


class FilesReader:
    """Filesystem storage, read with find and stat through `run` (in the cluster: busybox in the
    maintenance registry's container; locally: this machine's)."""

    def __init__(self, root: str, run: Callable[[list[str]], bytes]) -> None:
        self.root = root.rstrip("/")  # the private registry's rootdirectory
        self.run = run
        self.times: dict[str, dict[str, datetime]] = {}

    def _stat(self, path: str, fmt: str, *find: str) -> list[tuple[str, ...]]:
        script = f'[ -d "$1" ] || exit 0; find "$1" {" ".join(find)} -exec stat -c "{fmt} %n" {{}} +'
        out = self.run(["sh", "-c", script, "sh", path]).decode()
        fields = fmt.count(" ") + 1  # then the path, which may hold spaces
        return [tuple(line.split(" ", fields)) for line in out.splitlines() if line]

    def tag_times(self, repository: str) -> dict[str, datetime]:
        if repository not in self.times:
            base = f"{self.root}/{tags_dir(repository)}"
            found = self._stat(base, "%Y", "-path", f"'*/{TAG_LINK}'", "-type", "f")
            self.times[repository] = {
                path.removeprefix(base + "/").removesuffix("/" + TAG_LINK): datetime.fromtimestamp(
                    int(mtime), UTC
                )
                for mtime, path in found
            }
        return self.times[repository]

    def revisions(self, repository: str) -> set[str]:
        base = f"{self.root}/{revisions_dir(repository)}"
        found = self._stat(base, "%s", "-mindepth", "2", "-maxdepth", "2", "-name", "link", "-type", "f")
        return {"sha256:" + path.removeprefix(base + "/").split("/")[0] for _, path in found}

    def _bytes(self, path: str) -> int:
        return sum(int(size) for size, _ in self._stat(path, "%s", "-type", "f"))

    def private_bytes(self) -> int:
        return self._bytes(self.root)

    @property
    def store_root(self) -> str:
        """The storage root: the parent of the private root, `cache/` and the gateway's STORE_PREFIX."""
        return self.root.rsplit("/", 1)[0]  # registry_config: <storage>/private, /cache/<host>

    def cache_root(self, host: str) -> str:
        return f"{self.store_root}/cache/{host}"

    def cache_hosts(self) -> list[str]:
        script = '[ -d "$1" ] && ls "$1" || true'
        return self.run(["sh", "-c", script, "sh", f"{self.store_root}/cache"]).decode().split()

    def cache_bytes(self) -> dict[str, int]:
        return {host: self._bytes(self.cache_root(host)) for host in self.cache_hosts()}

    def _stored(self, base: str) -> Iterator[tuple[str, int, datetime]]:
        for mtime, size, path in self._stat(base, "%Y %s", "-type", "f"):
            yield path.removeprefix(base + "/"), int(size), datetime.fromtimestamp(int(mtime), UTC)

    def cache_files(self, host: str) -> CacheFiles:
        return CacheFiles.of(host, self._stored(self.cache_root(host)))

    def tags(self, files: CacheFiles) -> dict[str, dict[str, str]]:
        """repository -> tag -> the digest its current link names (one grep over every tag link)."""
        base = self.cache_root(files.host)
        paths = {f"{base}/{p}": (r, t) for r, links in files.tag_links.items() for t, p in links.items()}
        found: dict[str, dict[str, str]] = {}
        for batch in _batches(sorted(paths)):
            out = self.run(["sh", "-c", 'grep -H "" "$@" 2>/dev/null; exit 0', "sh", *batch]).decode()
            for line in out.splitlines():
                if (m := _LINK_TARGET.match(line)) and m[1] in paths:
                    repository, tag = paths[m[1]]
                    found.setdefault(repository, {})[tag] = m[2]
        return found

    def manifests(self, files: CacheFiles, digests: Iterable[str]) -> dict[str, bytes]:
        """digest -> bytes of each stored manifest: `cat` of many files at once, cut at the listed sizes;
        a piece whose digest does not match (a file gone meanwhile) is left out."""
        wanted = manifest_bytes(files, digests)
        base = self.cache_root(files.host)
        found: dict[str, bytes] = {}
        for at in range(0, len(wanted), _BATCH):
            batch = wanted[at : at + _BATCH]
            argv = ["sh", "-c", 'cat -- "$@" 2>/dev/null; exit 0', "sh", *(f"{base}/{p}" for _, p in batch)]
            out, offset = self.run(argv), 0
            for digest, _ in batch:
                piece = out[offset : offset + files.blobs[digest].size]
                offset += len(piece)
                if "sha256:" + hashlib.sha256(piece).hexdigest() == digest:
                    found[digest] = piece
        return found

    def pull_records(self, host: str) -> dict[tuple[str, str], datetime]:
        base = f"{self.store_root}/{pulls_prefix(host)}"
        return _records((path, time) for path, _, time in self._stored(base))

    def remove(self, files: CacheFiles, paths: Iterable[str]) -> None:
        """Remove those paths (files or directories) below the cache's root."""
        self._remove(self.cache_root(files.host), paths)

    def remove_records(self, host: str, records: Iterable[tuple[str, str]]) -> None:
        self._remove(f"{self.store_root}/{pulls_prefix(host)}", (record_key(*r) for r in records))

    def _remove(self, base: str, paths: Iterable[str]) -> None:
        for batch in _batches(sorted(paths)):
            self.run(["rm", "-rf", "--", *(f"{base}/{p}" for p in batch)])


class S3Reader:
    """S3 storage (R2), listed with the private registry's own keys (boto3, in this process only)."""

    def __init__(self, driver: Mapping[str, Any]) -> None:
        import boto3  # the maintenance workflow's dependency only

        self.bucket = str(driver["bucket"])
        self.prefix = _root(driver).strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=str(driver["regionendpoint"]),
            region_name=str(driver.get("region") or "auto"),
            aws_access_key_id=str(driver["accesskey"]),
            aws_secret_access_key=str(driver["secretkey"]),
        )
        self.times: dict[str, dict[str, datetime]] = {}

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def _under(self, path: str) -> str:
        return f"{self.prefix}/{path}/".lstrip("/")

    def tag_times(self, repository: str) -> dict[str, datetime]:
        if repository not in self.times:
            base = self._under(tags_dir(repository))
            self.times[repository] = {
                o["Key"].removeprefix(base).removesuffix("/" + TAG_LINK): o["LastModified"]
                for o in self._objects(base)
                if o["Key"].endswith("/" + TAG_LINK)
            }
        return self.times[repository]

    def revisions(self, repository: str) -> set[str]:
        base = self._under(revisions_dir(repository))
        keys = (o["Key"].removeprefix(base) for o in self._objects(base))
        return {"sha256:" + k.split("/")[0] for k in keys if k.count("/") == 1 and k.endswith("/link")}

    def private_bytes(self) -> int:
        return sum(int(o["Size"]) for o in self._objects(f"{self.prefix}/"))

    def cache_bytes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for o in self._objects("cache/"):
            host = o["Key"].split("/")[1]
            sizes[host] = sizes.get(host, 0) + int(o["Size"])
        return sizes

    def cache_hosts(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix="cache/", Delimiter="/"
        )
        return [p["Prefix"].split("/")[1] for page in pages for p in page.get("CommonPrefixes", [])]

    def _stored(self, prefix: str) -> Iterator[tuple[str, int, datetime]]:
        for o in self._objects(prefix):
            yield o["Key"].removeprefix(prefix), int(o["Size"]), o["LastModified"]

    def cache_files(self, host: str) -> CacheFiles:
        return CacheFiles.of(host, self._stored(f"cache/{host}/"))

    def _get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None  # gone since the listing

    def tags(self, files: CacheFiles) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for repository, links in files.tag_links.items():
            for tag, path in links.items():
                body = self._get(f"cache/{files.host}/{path}")
                target = (body or b"").decode(errors="replace").strip()
                if _DIGEST.match(target):
                    found.setdefault(repository, {})[tag] = target
        return found

    def manifests(self, files: CacheFiles, digests: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for digest, path in manifest_bytes(files, digests):
            body = self._get(f"cache/{files.host}/{path}")
            if body is not None and "sha256:" + hashlib.sha256(body).hexdigest() == digest:
                found[digest] = body
        return found

    def pull_records(self, host: str) -> dict[tuple[str, str], datetime]:
        return _records((path, time) for path, _, time in self._stored(pulls_prefix(host) + "/"))

    def remove(self, files: CacheFiles, paths: Iterable[str]) -> None:
        """Remove those paths below the cache's root: the keys the listing found there (a bucket has no
        directories), one request per thousand."""
        self._delete([f"cache/{files.host}/{p}" for p in files.below(paths)])

    def remove_records(self, host: str, records: Iterable[tuple[str, str]]) -> None:
        self._delete([f"{pulls_prefix(host)}/{record_key(*r)}" for r in records])

    def _delete(self, keys: list[str]) -> None:
        for batch in _batches(sorted(keys)):
            done = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            if done.get("Errors"):
                raise StoreError(f"deleting from bucket {self.bucket}: {done['Errors'][:3]}")


def reader_for(storage: Mapping[str, Any], run: Callable[[list[str]], bytes]) -> FilesReader | S3Reader:
    if "s3" in storage:
        return S3Reader(storage["s3"])
    if "filesystem" in storage:
        return FilesReader(_root(storage["filesystem"]), run)
    raise StoreError(f"unsupported storage driver {sorted(storage)} in the private registry's config")
