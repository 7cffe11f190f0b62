"""Bounded mirror storage, least recently pulled first: the caches' eviction, run by maintenance
(gateway/upkeep/maintenance.py `run`) after garbage collection, outside the read-only window.

The pull-through caches run with Distribution's expiry scheduler off (`proxy.ttl: 0s`) and several
replicas on one root, so nothing but this step ever deletes from a cache. Its input, per cache: every
repository's manifests (revision links, their times, their bytes), tags, layer links and blobs
(gateway/upkeep/store_readers.py `cache_files`), and the mirror's last-pull records (one object per
pulled manifest below `<STORE_PREFIX>/<STORE_PULLS>/<upstream id>/`, written by nginx; its modification
time is that manifest's last pull through any node). `plan` is pure; `evict` reads, plans, prints and
deletes.

The rules (`CachePolicy`: ttl, optional byte budget):
- **Whole images.** An image is a repository's top-level manifest (one no other manifest of the
  repository lists) with the manifests it lists; its last use is the latest, over itself and those, of
  the pull record, or the revision link's time where there is no record (content cached before the
  records existed, or a record not flushed yet) or the record is older. A listed manifest with a record
  of its own (pulled by digest) is also a unit of its own, kept by its own pulls even if its index goes.
- **ttl.** Units used within the ttl are kept. Blobs that no kept unit names stay while stored within
  the ttl (a blob fetched by digest alone, or one fetched again meanwhile), as units of their own.
- **Budget.** If the blobs of everything kept exceed `budget_bytes`, kept units go oldest last use
  first (on a tie the larger first) until the rest fits; a blob counts once however many images share
  it, and is freed only once no kept unit names it.
- **What goes**, for each manifest no kept unit holds: its revision directory, every tag whose current
  link names it, its pull record; the repository's layer links of blobs that neither a kept manifest of
  that repository names nor a kept loose blob is; the data of every blob no kept unit names (a
  manifest's own bytes are a blob it names). Records of manifests no longer stored go after the ttl.
  A kept manifest this run cannot read (larger than a manifest may be, or not JSON) might name any
  blob: then no layer link and no blob of that cache goes.

Why a pull during the deletions is a refetch, never a 404 (Distribution 3.1.1, registry/proxy/)
----------------------------------------------------------------------------------------------------
The deletions run in this order: manifest revisions and tags, then layer links, then blob data, then
records. Every read of a cache first asks its own storage and, if that fails, the upstream:
`proxyManifestStore.Get` falls back to the remote on any local error (and stores what it fetched again),
`proxyTagService.Get` asks the remote first anyway, and `proxyBlobStore.ServeBlob`'s `serveLocal` answers
"not here" whenever its `Stat` (the repository's layer link, then the blob's data) fails, and the blob is
fetched and stored again. Since a manifest's revision goes before any blob it names, a client never gets
a manifest from the cache whose blobs the cache has lost: it gets a manifest that was still complete, or
a fresh one from upstream. Layer links go before data, so a `Stat` through a link never finds a link
whose data is gone half-way through this step. The caches keep no blob descriptors in memory
(gateway/render/registry_config.py), which would answer for a blob after its deletion. What remains is a
blob read whose `Stat` passed an instant before its data went: on a filesystem the open file stays
readable; the rest is the microseconds between `Stat` and open, on an image nobody pulled for the ttl.
A refetch racing the deletions may lose what it stored (the plan was made before it): the next pull
fetches again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TextIO

from gateway.config import DEFAULT_CACHE_TTL, go_duration_seconds
from gateway.upkeep.store_readers import (
    CacheFiles,
    Stored,
    blob_dir,
    layer_dir,
    revision_dir,
    tag_dir,
)

GiB = 1024**3


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def duration(seconds: int) -> str:
    """168h, 90m, 45s: as an operator wrote it in cacheTtl (the largest unit that divides it)."""
    for unit, length in (("h", 3600), ("m", 60)):
        if seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class CachePolicy:
    """How long a cached image stays unpulled, and the bytes every cache may hold at most (None: no
    budget). One policy for every cache: `budget_bytes` bounds each cache on its own."""

    ttl_seconds: int = go_duration_seconds(DEFAULT_CACHE_TTL)
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.ttl_seconds < 1:
            raise ValueError(f"cache policy: ttl_seconds {self.ttl_seconds} must be at least 1")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ValueError(f"cache policy: budget_bytes {self.budget_bytes} must be at least 1 (or None)")

    @classmethod
    def of(cls, cache_ttl: str, cache_max_gib: int | None) -> CachePolicy:
        """From the settings: cacheTtl (a Go duration) and cacheMaxGib."""
        budget = None if cache_max_gib is None else cache_max_gib * GiB
        # At least a second: a ttl below one (a valid Go duration) keeps nothing longer anyway.
        return cls(max(1, go_duration_seconds(cache_ttl)), budget)

    def record(self) -> dict[str, int | None]:
        return {"ttl_seconds": self.ttl_seconds, "budget_bytes": self.budget_bytes}

    @classmethod
    def from_record(cls, raw: Mapping[str, Any] | None) -> CachePolicy:
        """None (a record written before caches were evicted): the defaults."""
        if raw is None:
            return cls()
        budget = raw.get("budget_bytes")
        return cls(int(raw["ttl_seconds"]), None if budget is None else int(budget))

    def __str__(self) -> str:
        budget = "no budget" if self.budget_bytes is None else f"budget {human(self.budget_bytes)}"
        return f"ttl {duration(self.ttl_seconds)}, {budget}"


# --- the planner -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredManifest:
    stored: datetime  # its revision link's modification time: when the cache fetched it
    # The blobs an image manifest names (config, layers); None: stored, but this run could not read it.
    references: frozenset[str] | None = frozenset()
    children: frozenset[str] = frozenset()  # the manifests an index lists


@dataclass
class CacheContents:
    """What `plan` decides on, for one cache."""

    manifests: dict[str, dict[str, StoredManifest]]  # repository -> digest -> manifest
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # repository -> tag -> digest
    layers: dict[str, set[str]] = field(default_factory=dict)  # repository -> blobs linked
    blobs: dict[str, Stored] = field(default_factory=dict)  # digest -> size and time stored
    pulls: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (repository, digest) -> pull


@dataclass(frozen=True)
class _Unit:
    """What is kept or evicted as one: an image, a manifest pulled on its own, or a loose blob."""

    last_use: datetime
    manifests: frozenset[tuple[str, str]]
    blobs: frozenset[str]
    image: bool


@dataclass(frozen=True)
class Eviction:
    """A cache's plan: the counts it reports and the paths (below the cache's root) it removes."""

    kept: int  # images kept
    expired: int  # images not used within the ttl
    over_budget: int  # images used within the ttl, evicted to fit the budget
    bytes_before: int  # blob data stored
    bytes_after: int  # blob data kept
    evicted: tuple[tuple[str, str], ...] = ()  # (repository, digest) of every manifest that goes
    manifests: tuple[str, ...] = ()  # revision and tag directories
    layers: tuple[str, ...] = ()  # layer link directories
    blobs: tuple[str, ...] = ()  # blob directories
    records: tuple[tuple[str, str], ...] = ()  # (repository, digest) of the pull records that go
    spared: str = ""  # why no blob goes, if so

    def phases(self) -> list[tuple[str, tuple[str, ...]]]:
        """The removals in their safe order (module docstring); records are removed after these."""
        return [("manifests", self.manifests), ("layers", self.layers), ("blobs", self.blobs)]


def _last_use(contents: CacheContents, repository: str, digest: str) -> datetime:
    stored = contents.manifests[repository][digest].stored
    pulled = contents.pulls.get((repository, digest))
    return stored if pulled is None else max(stored, pulled)


def _image(manifests: Mapping[str, StoredManifest], top: str) -> set[str]:
    """`top` and what it lists, transitively, of the repository's stored manifests."""
    found, todo = set(), [top]
    while todo:
        digest = todo.pop()
        if digest in manifests and digest not in found:
            found.add(digest)
            todo.extend(manifests[digest].children)
    return found


def _units(contents: CacheContents, oldest: datetime) -> tuple[list[_Unit], list[_Unit]]:
    """The image and own-pull units, then the loose blobs (no kept unit names them) as units."""
    present = contents.blobs.keys()

    def blobs_of(repository: str, digests: Iterable[str]) -> frozenset[str]:
        named: set[str] = set()
        for digest in digests:
            named |= {digest} | (contents.manifests[repository][digest].references or frozenset())
        return frozenset(named & present)

    units: list[_Unit] = []
    for repository, manifests in contents.manifests.items():
        listed = set().union(*(m.children for m in manifests.values()))
        for digest in manifests:
            members = _image(manifests, digest) if digest not in listed else {digest}
            if digest not in listed or (repository, digest) in contents.pulls:
                units.append(
                    _Unit(
                        max(_last_use(contents, repository, d) for d in members),
                        frozenset((repository, d) for d in members),
                        blobs_of(repository, members),
                        image=digest not in listed,
                    )
                )
    named = set().union(*(u.blobs for u in units if u.last_use >= oldest))
    loose = [
        _Unit(blob.time, frozenset(), frozenset({digest}), image=False)
        for digest, blob in contents.blobs.items()
        if digest not in named
    ]
    return units, loose


def plan(contents: CacheContents, policy: CachePolicy, now: datetime) -> Eviction:
    """Which images of one cache stay and which paths go (see the module docstring)."""
    oldest = now - timedelta(seconds=policy.ttl_seconds)
    units, loose = _units(contents, oldest)
    kept = [u for u in units + loose if u.last_use >= oldest]
    expired = sum(1 for u in units if u.image and u.last_use < oldest)

    def size(blobs: Iterable[str]) -> int:
        return sum(contents.blobs[b].size for b in blobs)

    over_budget = 0
    if policy.budget_bytes is not None:
        holders = Counter(b for u in kept for b in u.blobs)
        total = size(holders)
        kept.sort(key=lambda u: (u.last_use, -size(u.blobs)))
        gone = 0
        while total > policy.budget_bytes and gone < len(kept):
            unit, gone = kept[gone], gone + 1
            over_budget += unit.image
            holders.subtract(unit.blobs)
            total -= size(b for b in unit.blobs if holders[b] == 0)
        kept = kept[gone:]

    kept_manifests = set().union(*(u.manifests for u in kept))
    kept_blobs = set().union(*(u.blobs for u in kept))
    evicted = sorted(
        (r, d)
        for r, manifests in contents.manifests.items()
        for d in manifests
        if (r, d) not in kept_manifests
    )
    going = set(evicted)
    directories = [revision_dir(r, d) for r, d in evicted]
    directories += [
        tag_dir(r, tag) for r, tags in contents.tags.items() for tag, d in tags.items() if (r, d) in going
    ]
    stored = {(r, d) for r, manifests in contents.manifests.items() for d in manifests}
    records = sorted(
        key
        for key, pulled in contents.pulls.items()
        if key in going or (key not in stored and pulled < oldest)
    )
    unreadable = sorted(f"{r}@{d}" for r, d in kept_manifests if contents.manifests[r][d].references is None)
    common = {
        "kept": sum(1 for u in kept if u.image),
        "expired": expired,
        "over_budget": over_budget,
        "bytes_before": size(contents.blobs),
        "evicted": tuple(evicted),
        "manifests": tuple(directories),
        "records": tuple(records),
    }
    if unreadable:
        spared = f"no blob goes: kept manifests unread ({', '.join(unreadable[:3])})"
        return Eviction(**common, bytes_after=size(contents.blobs), spared=spared)
    loose_kept = {b for u in kept if not u.manifests for b in u.blobs}
    layers = []
    for repository, linked in contents.layers.items():
        wanted = set(loose_kept)
        for r, d in kept_manifests:
            if r == repository:
                wanted |= contents.manifests[r][d].references or frozenset()
        layers += [layer_dir(repository, b) for b in sorted(linked - wanted)]
    return Eviction(
        **common,
        bytes_after=size(kept_blobs),
        layers=tuple(layers),
        blobs=tuple(blob_dir(b) for b in sorted(contents.blobs.keys() - kept_blobs)),
    )


# --- reading and acting ------------------------------------------------------------------------------


class CacheStorage(Protocol):
    """What eviction needs of a storage (store_readers.py: FilesReader, S3Reader)."""

    def cache_hosts(self) -> list[str]: ...
    def cache_files(self, host: str) -> CacheFiles: ...
    def tags(self, files: CacheFiles) -> dict[str, dict[str, str]]: ...
    def manifests(self, files: CacheFiles, digests: Iterable[str]) -> dict[str, bytes]: ...
    def pull_records(self, host: str) -> dict[tuple[str, str], datetime]: ...
    def remove(self, files: CacheFiles, paths: Iterable[str]) -> None: ...
    def remove_records(self, host: str, records: Iterable[tuple[str, str]]) -> None: ...


def parse_manifest(body: bytes | None, stored: datetime, *, present: bool) -> StoredManifest:
    """A manifest as the planner sees it. Its data gone (`present` false) names nothing: Distribution
    cannot serve it and fetches it again. Stored but unreadable: references unknown (None)."""
    if body is None:
        return StoredManifest(stored, None if present else frozenset())
    try:
        document = json.loads(body)
    except ValueError:
        return StoredManifest(stored, None)
    if not isinstance(document, dict):
        return StoredManifest(stored, None)
    listed = document.get("manifests") or []
    named = [document.get("config") or {}, *(document.get("layers") or []), *(document.get("blobs") or [])]
    blobs = {d.get("digest") for d in named} | {d.get("blobSum") for d in document.get("fsLayers") or []}
    return StoredManifest(
        stored,
        frozenset(b for b in blobs if isinstance(b, str)),
        frozenset(d["digest"] for d in listed if isinstance(d.get("digest"), str)),
    )


def contents_of(storage: CacheStorage, host: str) -> tuple[CacheFiles, CacheContents]:
    files = storage.cache_files(host)
    digests = [d for revisions in files.revisions.values() for d in revisions]
    bodies = storage.manifests(files, digests)
    manifests = {
        repository: {
            d: parse_manifest(bodies.get(d), stored, present=d in files.blobs)
            for d, stored in revisions.items()
        }
        for repository, revisions in files.revisions.items()
    }
    return files, CacheContents(
        manifests, storage.tags(files), files.layers, files.blobs, storage.pull_records(host)
    )


def evict(
    storage: CacheStorage, host: str, policy: CachePolicy, *, dry_run: bool, out: TextIO, now: datetime
) -> Eviction:
    """Plan one cache's eviction, print it, and (unless `dry_run`) remove in the safe order."""
    files, contents = contents_of(storage, host)
    eviction = plan(contents, policy, now)
    tagged: dict[tuple[str, str], list[str]] = {}
    for repository, tags in contents.tags.items():
        for tag, digest in tags.items():
            tagged.setdefault((repository, digest), []).append(tag)
    for repository, digest in eviction.evicted:
        names = ",".join(sorted(tagged.get((repository, digest), []))) or "untagged"
        used = _last_use(contents, repository, digest).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        verb = "would evict" if dry_run else "evicting"
        print(f"cache {host}: {verb} {repository}@{digest} ({names}, last used {used})", file=out)
    if eviction.spared:
        print(f"cache {host}: {eviction.spared}", file=out)
    if not dry_run:
        for _, paths in eviction.phases():
            storage.remove(files, paths)
        storage.remove_records(host, eviction.records)
    if eviction.evicted or eviction.blobs:
        verb = "would be evicted" if dry_run else "evicted"
        ttl, before, after = (
            duration(policy.ttl_seconds),
            human(eviction.bytes_before),
            human(eviction.bytes_after),
        )
        print(
            f"cache {host}: {eviction.expired} images {verb} (not pulled for {ttl}), "
            f"{eviction.over_budget} over budget; {before} -> {after}",
            file=out,
        )
    print(f"cache {host}: {eviction.kept} images kept, {human(eviction.bytes_after)} ({policy})", file=out)
    return eviction
