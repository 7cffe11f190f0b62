"""Maintenance of the private store: tag retention, then garbage collection in a short read-only window
for pushes; then the mirror's caches: eviction of what nobody pulled lately. Prints what it did (tags
deleted per repository, blobs and bytes freed, how long pushes were paused, images evicted and kept
per cache, with sizes). `python -m gateway maintenance --data DIR [--dry-run]` runs it against a local
`python -m gateway run --data DIR` (`LocalStore`); the maintenance workflow runs the same `run` against
a deployed stack (components/cli/maintenance.py, `SwarmStore`).

Why garbage collection cannot lose an acknowledged image
--------------------------------------------------------
Distribution's `registry garbage-collect` (v3.1.1, registry/storage/garbagecollect.go) marks every
blob that a manifest of any repository references, then sweeps: deletes every other blob, and the
repository layer links of unmarked blobs (`vacuum.RemoveLayer`). It runs without `--delete-untagged`
(which would drop untagged manifests in every namespace, those without a retention rule too, and
signatures): retention removes the untagged manifests of its own namespaces. It takes no lock, so a
manifest committed between mark and sweep loses the blobs it references: acknowledged, then broken.
Hence:

1. **No write reaches the store during mark and sweep.** Every private replica is restarted with
   `storage.maintenance.readonly.enabled: true` (read at start only, handlers/app.go; in the cluster
   through the environment, registry_config.READ_ONLY_ENV) and the GC starts once the last one
   answers in that mode (in the cluster: once no task of the writable spec runs, draining ones too).
   Read-only Distribution registers no PUT, POST, PATCH or DELETE handler (handlers/manifests.go,
   blob.go, blobupload.go): a write is refused before it touches storage, and the gateway turns that
   refusal into 503 UNAVAILABLE + Retry-After (gateway/render/templates/routes.conf.j2), which Docker and
   containerd retry. Reads go on throughout.
2. **An image acknowledged before the window is marked.** The manifest PUT's 201 is sent after its
   revision and tag links are written, and the GC enumerates every repository's manifests, so its
   blobs are marked and kept.
3. **A blob uploaded before the window whose manifest comes after it** is unreferenced during the GC:
   its data and its repository link are swept. When the manifest arrives, the registry checks every
   blob it names (schema2/OCI handler `verifyManifest`: `Stat` through the repository's links) and an
   index's platform manifests (`validation.manifests.indexes.platforms: all`, rendered explicitly):
   missing, so the PUT answers 400 MANIFEST_BLOB_UNKNOWN. That push fails and is never
   acknowledged; the client's retry uploads the blob again (a HEAD now says 404).
4. **No stale "it exists" survives the window.** A cached descriptor of a swept blob would make a
   HEAD answer 200 (the client skips the upload) and the manifest check pass: an acknowledged, broken
   image. The private replicas cache no blob descriptors (registry_config.py), and the window ends by
   restarting every replica again (writable) all the same.
5. **Pulls keep working**: replicas are restarted one at a time and nginx retries reads on another
   replica (with one replica, reads fail for the moments it restarts: run two).
6. **Retention deletes inside the window too.** Deleting through the API while clients push has a
   race no check closes: a tag pushed onto a manifest between the plan and its `DELETE` by digest
   would lose that manifest (Distribution also drops every tag naming it). Read-only Distribution
   refuses deletes as well, so the run starts one more private registry of its own, writable, on the
   same storage and config, reachable by nothing but this run, plans and deletes through it while
   every client-facing replica is read-only, and stops it before the GC. The plan thus sees the
   frozen store it acts on. An untagged platform manifest it deletes whose index only arrives after
   the window is the case of point 3: the index is refused, never acknowledged.

Then the caches: each is evicted, least recently pulled first, by the nodes' last-pull records, down to
what `CachePolicy` (cacheTtl, cacheMaxGib) allows (gateway/upkeep/eviction.py; its docstring has why a
pull during the deletions is a refetch). Outside the read-only window: caches keep serving throughout,
and what they fetch meanwhile at worst is fetched again. The run prints, per cache, what went and what
is kept, with sizes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

import yaml

from gateway.local.ports import free_port
from gateway.render.registry_config import READ_ONLY_HEADER
from gateway.upkeep.eviction import CachePolicy, CacheStorage, Eviction, evict, human
from gateway.upkeep.registry_api import Manifest, RegistryApi
from gateway.upkeep.retention import (
    Deletion,
    RetentionRule,
    Tag,
    from_record,
    kept,
    orphans,
    plan,
    referrers_subject,
    unreferred,
)
from gateway.upkeep.store_readers import REPOSITORIES, FilesReader, S3Reader, reader_for

# below DIR/state: what `gateway run` tells `gateway maintenance` and `gateway status`
STATE_FILE = "maintenance.json"
MODE_FILE = "private-mode"  # below DIR/state: the mode the private registries now run in
READ_ONLY_SIGNAL = signal.SIGUSR1
WRITABLE_SIGNAL = signal.SIGUSR2
_EMPTY_STORE = f"Path not found: /{REPOSITORIES}"
_GC_SUMMARY = re.compile(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")


class MaintenanceError(RuntimeError):
    """Maintenance could not run or finish; the message says what to do."""


class Store(Protocol):
    """The private store as maintenance sees it (locally: LocalStore)."""

    api: RegistryApi  # what clients read (the dry run plans through it)
    rules: tuple[RetentionRule, ...]
    cache_policy: CachePolicy

    def writer(self) -> AbstractContextManager[RegistryApi]:
        """A writable private registry only this run reaches (used inside the window)."""
        ...

    def tag_pushed(self, repository: str, tag: str) -> datetime: ...
    def manifest_revisions(self, repository: str) -> set[str]: ...
    def private_bytes(self) -> int: ...
    def cache_bytes(self) -> dict[str, int]: ...
    def cache_storage(self) -> CacheStorage: ...
    def set_read_only(self, read_only: bool) -> None: ...
    def collect_garbage(self, dry_run: bool) -> str: ...


@dataclass
class Report:
    deleted: dict[str, list[str]] = field(default_factory=dict)  # repository -> tags deleted
    untagged: int = 0  # untagged manifests retention deleted
    deletions: list[Deletion] = field(default_factory=list)
    blobs_deleted: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    paused_seconds: float = 0.0
    cache_bytes: dict[str, int] = field(default_factory=dict)  # host -> blob bytes kept
    evictions: dict[str, Eviction] = field(default_factory=dict)  # host -> what went (or would go)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after


def image_size(api: RegistryApi, repository: str, manifest: Manifest) -> tuple[int, set[str]]:
    """Bytes the image references (every platform of an index) and its platform manifests' digests.
    A listed manifest that is gone counts nothing: an untagged referrers index lists referrers that
    retention deleted with their subject."""
    if not manifest.is_index:
        return sum(int(d["size"]) for d in manifest.references()), set()  # type: ignore[arg-type]
    children = {str(d["digest"]) for d in manifest.references()}
    total = 0
    for child in sorted(children):
        sub = api.stored_manifest(repository, child)
        total += sum(int(d["size"]) for d in sub.references()) if sub else 0  # type: ignore[arg-type]
    return total, children


def apply_retention(
    store: Store, api: RegistryApi, report: Report, dry_run: bool, out: TextIO, now: datetime
) -> None:
    repositories = api.repositories()
    for rule in store.rules:
        for repository in (r for r in repositories if rule.covers(r)):
            tags, fallbacks, lists = [], [], {}
            for name in api.tags(repository):
                manifest = api.manifest(repository, name)
                size, lists[name] = image_size(api, repository, manifest)
                tag = Tag(repository, name, manifest.digest, store.tag_pushed(repository, name), size)
                (fallbacks if referrers_subject(name) else tags).append(tag)
            keep = kept(rule, tags, now)
            # What kept indexes list is still wanted, whatever tags name it.
            needed = set().union(*(lists[t.name] for t in tags if t.name in keep))
            deletions = plan(rule, tags, now, needed)
            live = {t.digest for t in tags if t.name in keep} | needed
            deletions += unreferred(fallbacks, live)
            deletions += untagged(store, api, repository, tags + fallbacks, live)
            for deletion in deletions:
                how = ("manifest" if deletion.tags else "untagged") if deletion.by_digest else "tag only"
                verb = "would delete" if dry_run else "deleting"
                what = ",".join(deletion.tags) if deletion.tags else deletion.reference
                print(f"retention: {verb} {repository}:{what} ({how}, {human(deletion.size)})", file=out)
                if not dry_run:
                    api.delete(repository, deletion.reference)
                if deletion.tags:
                    report.deleted.setdefault(repository, []).extend(deletion.tags)
                report.deletions.append(deletion)
            loose = sum(1 for d in deletions if not d.tags)
            print(
                f"retention: {repository}: {len(tags)} tags, {len(keep)} kept; {loose} untagged manifests go",
                file=out,
            )
            report.untagged += loose


def untagged(
    store: Store, api: RegistryApi, repository: str, tags: list[Tag], live: set[str]
) -> list[Deletion]:
    """Deletions (by digest, no tags) of the repository's untagged manifests that nothing kept wants
    (`live`: the kept manifests and what they list)."""
    revisions, tagged = store.manifest_revisions(repository), {t.digest for t in tags}
    documents = {d: api.manifest(repository, d) for d in sorted(revisions - tagged - live)}
    subjects = {d: m.subject for d, m in documents.items()}
    return [
        Deletion(repository, d, (), image_size(api, repository, documents[d])[0])
        for d in orphans(revisions, tagged, live, subjects)
    ]


def run(
    store: Store, *, dry_run: bool = False, out: TextIO = sys.stdout, now: datetime | None = None
) -> Report:
    """Retention, then garbage collection, both in the read-only window (unless `dry_run`, which
    plans through the client-facing registry and changes nothing); then the caches' eviction."""
    report = Report()
    now = now or datetime.now(UTC)
    if dry_run:
        apply_retention(store, store.api, report, True, out, now)
        report.bytes_before = report.bytes_after = store.private_bytes()
        output = store.collect_garbage(dry_run=True)
    else:
        started = time.monotonic()
        store.set_read_only(True)
        try:
            # Measured inside the window, where nothing but this run changes the store.
            report.bytes_before = store.private_bytes()
            with store.writer() as api:
                apply_retention(store, api, report, False, out, now)
            output = store.collect_garbage(dry_run=False)
            report.bytes_after = store.private_bytes()
        finally:
            # Whatever happened, pushes resume (and every replica restarts with an empty cache).
            store.set_read_only(False)
            report.paused_seconds = time.monotonic() - started
    for repository, tags in sorted(report.deleted.items()):
        verb = "would delete" if dry_run else "deleted"
        print(f"retention: {repository}: {verb} {len(tags)} tags: {', '.join(sorted(tags))}", file=out)
    summary = _GC_SUMMARY.search(output)
    if summary is None:
        raise MaintenanceError(f"garbage-collect printed no summary:\n{output[-2000:]}")
    report.blobs_deleted = int(summary[2])
    if dry_run:
        print(
            f"gc (dry run): {report.blobs_deleted} blobs unreferenced now (before the retention above); "
            "pushes not paused",
            file=out,
        )
    else:
        print(
            f"gc: pushes paused {report.paused_seconds:.2f} s; deleted {report.blobs_deleted} blobs and "
            f"{report.untagged} untagged manifests; private storage "
            f"{human(report.bytes_before)} -> {human(report.bytes_after)} "
            f"(freed {human(report.bytes_freed)}, {report.bytes_freed} bytes)",
            file=out,
        )
    caches = store.cache_storage()
    for host in sorted(caches.cache_hosts()):
        eviction = evict(caches, host, store.cache_policy, dry_run=dry_run, out=out, now=now)
        report.evictions[host], report.cache_bytes[host] = eviction, eviction.bytes_after
    return report


# --- the local data plane ---------------------------------------------------------------------------------


class StorageFacts:
    """What a Store reads from storage, through `reader` (gateway/upkeep/store_readers.py)."""

    reader: FilesReader | S3Reader

    def tag_pushed(self, repository: str, tag: str) -> datetime:
        return self.reader.tag_times(repository)[tag]

    def manifest_revisions(self, repository: str) -> set[str]:
        return self.reader.revisions(repository)

    def private_bytes(self) -> int:
        return self.reader.private_bytes()

    def cache_bytes(self) -> dict[str, int]:
        return self.reader.cache_bytes()

    def cache_storage(self) -> CacheStorage:
        # The caches live beside the private root, in the same bucket or below the same storage root.
        return self.reader


def _run_here(argv: list[str]) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True, timeout=3600).stdout


class LocalStore(StorageFacts):
    """The data plane of a `python -m gateway run --data DIR`, found through DIR/state/maintenance.json
    (written by the runner). The read-only switch is a signal to the runner, which owns the registry
    processes and restarts them (SIGUSR1: read-only, SIGUSR2: writable), then writes DIR/state/
    private-mode; garbage-collect runs here, on the private registry's own config, and the storage
    (a directory under DIR, or the bucket of --s3-endpoint) is read as that config says."""

    def __init__(self, data_dir: Path, timeout: float = 120.0) -> None:
        self.state = data_dir.resolve() / "state"
        path = self.state / STATE_FILE
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise MaintenanceError(
                f"{path} not found: start the data plane first (python -m gateway run --data {data_dir} ...)"
            ) from None
        self.pid: int = info["pid"]
        if not _alive(self.pid):
            raise MaintenanceError(f"the runner (pid {self.pid}) of {data_dir} is not running; start it")
        self.api = RegistryApi(info["private_url"])
        self.rules = tuple(from_record(r) for r in info["retention"])
        self.cache_policy = CachePolicy.from_record(info.get("cache_policy"))  # absent: an older runner
        self.registry_bin: str = info["registry_bin"]
        self.config: str = info["private_config"]
        self.replicas: int = info["private_replicas"]
        self.metrics_url: str = info["metrics_url"]  # nginx's metrics server (`gateway status`)
        self.reader = reader_for(yaml.safe_load(Path(self.config).read_text())["storage"], _run_here)
        self.timeout = timeout

    def set_read_only(self, read_only: bool) -> None:
        want = "read-only" if read_only else "writable"
        mode = self.state / MODE_FILE
        mode.unlink(missing_ok=True)
        os.kill(self.pid, READ_ONLY_SIGNAL if read_only else WRITABLE_SIGNAL)
        deadline = time.monotonic() + self.timeout
        while (got := _read(mode)) != want:
            if got.startswith("failed"):
                raise MaintenanceError(f"the runner could not switch to {want}: {got}")
            if time.monotonic() > deadline or not _alive(self.pid):
                raise MaintenanceError(f"the runner did not switch the private registries to {want}")
            time.sleep(0.05)

    def collect_garbage(self, dry_run: bool) -> str:
        return garbage_collect(self.registry_bin, self.config, dry_run=dry_run)

    @contextlib.contextmanager
    def writer(self) -> Iterator[RegistryApi]:
        """The private registry's own config, writable, on a free loopback port: nginx does not know it."""
        config = yaml.safe_load(Path(self.config).read_text())
        port = free_port()
        config["http"]["addr"] = f"127.0.0.1:{port}"
        config["http"].pop("debug", None)  # the running replica's debug server holds that port
        config["http"]["headers"].pop(READ_ONLY_HEADER, None)
        config["storage"]["maintenance"]["readonly"] = {"enabled": False}
        path = self.state / "maintenance-writer.yml"
        path.touch(mode=0o600)  # it holds the storage keys and http.secret
        path.write_text(yaml.safe_dump(config))
        with (self.state / "maintenance-writer.log").open("ab") as log:
            proc = subprocess.Popen(
                [self.registry_bin, "serve", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            api = RegistryApi(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + self.timeout
            while not api.answers():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise MaintenanceError(
                        f"the maintenance registry did not start; see {self.state / 'maintenance-writer.log'}"
                    )
                time.sleep(0.05)
            yield api
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            path.unlink(missing_ok=True)


def garbage_collect(registry_bin: str, config: str, *, dry_run: bool, run: Callable = subprocess.run) -> str:
    argv = [registry_bin, "garbage-collect", config]
    if dry_run:
        argv.insert(2, "--dry-run")
    done = run(argv, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0 and _EMPTY_STORE in done.stderr:
        # Nothing was ever pushed: Distribution's mark phase fails on the missing repositories root.
        return "0 blobs marked, 0 blobs and 0 manifests eligible for deletion (empty store)"
    if done.returncode != 0:
        raise MaintenanceError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
