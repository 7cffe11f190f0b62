"""The caches' eviction (gateway/upkeep/eviction.py): the planner's rules on hand-built caches (ttl, budget
oldest first, shared blobs, indexes, a platform manifest pulled on its own, the stored time when no
record exists, loose blobs), what must never happen on generated caches (something used within the ttl
evicted without a budget; a kept manifest losing a blob or its layer link), and a real directory in
Distribution's layout read and cleaned by FilesReader through this machine's sh, find, stat, grep, cat
and rm, in the safe order."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import FilesystemStorage, SettingsError, go_duration_seconds
from gateway.upkeep.eviction import (
    CacheContents,
    CachePolicy,
    Eviction,
    StoredManifest,
    evict,
    parse_manifest,
    plan,
)
from gateway.upkeep.store_readers import (
    FilesReader,
    Stored,
    blob_data,
    blob_dir,
    layer_dir,
    pulls_prefix,
    record_key,
    revision_dir,
    tag_dir,
    tags_dir,
)
from tests.gateway.client_harness import team_settings

NOW = datetime(2025, 6, 1, tzinfo=UTC)
DAYS = 86400
WEEK = CachePolicy(ttl_seconds=7 * DAYS)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@dataclass
class Cache:
    """A cache built by hand: the planner's input, and the bytes of every blob (to write it to disk)."""

    contents: CacheContents = field(default_factory=lambda: CacheContents({}))
    data: dict[str, bytes] = field(default_factory=dict)

    def blob(self, content: bytes, days: float, repository: str = "") -> str:
        d = digest(content)
        self.data[d] = content
        self.contents.blobs[d] = Stored(len(content), ago(days))
        if repository:
            self.contents.layers.setdefault(repository, set()).add(d)
        return d

    def _manifest(self, repository: str, document: dict, days: float, pulled: float | None, tag: str) -> str:
        body = json.dumps(document).encode()
        d = self.blob(body, days)
        self.contents.manifests.setdefault(repository, {})[d] = parse_manifest(body, ago(days), present=True)
        if pulled is not None:
            self.contents.pulls[(repository, d)] = ago(pulled)
        if tag:
            self.contents.tags.setdefault(repository, {})[tag] = d
        return d

    def image(
        self,
        repository: str,
        layers: list[bytes],
        days: float,
        pulled: float | None = None,
        tag: str = "",
    ) -> str:
        """An image fetched `days` ago (its blobs too), last pulled `pulled` days ago (None: no record)."""
        config = self.blob(json.dumps({"layers": len(layers), "of": repository}).encode(), days, repository)
        named = [self.blob(layer, days, repository) for layer in layers]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": config, "size": 1},
            "layers": [{"digest": d, "size": 1} for d in named],
        }
        return self._manifest(repository, document, days, pulled, tag)

    def index(self, repository: str, children: list[str], days: float, pulled: float | None, tag: str) -> str:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"digest": c} for c in children],
        }
        return self._manifest(repository, document, days, pulled, tag)

    def blobs_of(self, repository: str, manifest: str) -> set[str]:
        return {manifest} | set(self.contents.manifests[repository][manifest].references or ())


def gone_manifests(eviction: Eviction) -> set[tuple[str, str]]:
    return set(eviction.evicted)


def test_ttl_evicts_what_nobody_pulled_and_everything_it_alone_names() -> None:
    cache = Cache()
    old = cache.image("library/old", [b"old layer" * 100], days=30, pulled=10, tag="1")
    fresh = cache.image("library/fresh", [b"fresh layer"], days=30, pulled=1, tag="1")
    eviction = plan(cache.contents, WEEK, NOW)
    assert gone_manifests(eviction) == {("library/old", old)}
    assert (eviction.kept, eviction.expired, eviction.over_budget) == (1, 1, 0)
    assert set(eviction.manifests) == {revision_dir("library/old", old), tag_dir("library/old", "1")}
    old_blobs = cache.blobs_of("library/old", old)
    assert set(eviction.blobs) == {blob_dir(b) for b in old_blobs}
    assert set(eviction.layers) == {layer_dir("library/old", b) for b in old_blobs - {old}}
    assert eviction.records == (("library/old", old),)
    assert eviction.bytes_after == sum(
        cache.contents.blobs[b].size for b in cache.blobs_of("library/fresh", fresh)
    )
    assert eviction.bytes_before == sum(b.size for b in cache.contents.blobs.values())


def test_without_a_record_the_stored_time_counts() -> None:
    cache = Cache()
    recent = cache.image("library/a", [b"a"], days=2)  # fetched before records existed, or not flushed
    old = cache.image("library/b", [b"b"], days=9)
    # A record older than the stored time (a refetch since): the refetch counts.
    refetched = cache.image("library/c", [b"c"], days=1, pulled=20)
    eviction = plan(cache.contents, WEEK, NOW)
    assert gone_manifests(eviction) == {("library/b", old)}
    assert recent and refetched


def test_budget_evicts_oldest_use_first_until_the_rest_fits() -> None:
    cache = Cache()
    images = {
        age: cache.image(f"library/i{age}", [bytes([age]) * 1000], days=6, pulled=age) for age in (1, 2, 3, 4)
    }
    each = sum(cache.contents.blobs[b].size for b in cache.blobs_of("library/i1", images[1]))
    eviction = plan(cache.contents, CachePolicy(7 * DAYS, budget_bytes=2 * each + 10), NOW)
    assert gone_manifests(eviction) == {("library/i4", images[4]), ("library/i3", images[3])}
    assert (eviction.kept, eviction.expired, eviction.over_budget) == (2, 0, 2)
    assert eviction.bytes_after <= 2 * each + 10


def test_a_shared_blob_counts_once_and_goes_only_with_its_last_image() -> None:
    cache = Cache()
    shared = b"base layer" * 1000
    old = cache.image("library/app", [shared, b"old top"], days=20, pulled=20, tag="old")
    cache.image("library/app", [shared, b"new top"], days=1, pulled=1, tag="new")
    other = cache.image("library/other", [shared], days=20, pulled=20)
    eviction = plan(cache.contents, WEEK, NOW)
    assert gone_manifests(eviction) == {("library/app", old), ("library/other", other)}
    base = digest(shared)
    assert blob_dir(base) not in eviction.blobs  # `new` names it
    assert layer_dir("library/app", base) not in eviction.layers  # ... in this repository
    assert layer_dir("library/other", base) in eviction.layers  # no kept manifest of library/other does
    assert blob_dir(digest(b"old top")) in eviction.blobs
    assert tag_dir("library/app", "old") in eviction.manifests
    assert tag_dir("library/app", "new") not in eviction.manifests
    # Counted once: a budget of exactly the bytes stored (the shared layer once) keeps all three.
    budget = CachePolicy(30 * DAYS, sum(b.size for b in cache.contents.blobs.values()))
    assert plan(cache.contents, budget, NOW).evicted == ()


def test_an_index_is_kept_or_evicted_with_its_platform_manifests() -> None:
    cache = Cache()
    amd64 = cache.image("library/multi", [b"amd64"], days=20)
    arm64 = cache.image("library/multi", [b"arm64"], days=20)
    index = cache.index("library/multi", [amd64, arm64], days=20, pulled=1, tag="1")
    kept = plan(cache.contents, WEEK, NOW)
    assert kept.evicted == () and kept.kept == 1  # one image: the index with its platforms
    cache.contents.pulls[("library/multi", index)] = ago(8)
    gone = plan(cache.contents, WEEK, NOW)
    assert gone_manifests(gone) == {("library/multi", d) for d in (index, amd64, arm64)}
    assert gone.expired == 1
    # A platform manifest pulled recently keeps the whole image (its last use is the latest of all).
    cache.contents.pulls[("library/multi", arm64)] = ago(1)
    assert plan(cache.contents, WEEK, NOW).evicted == ()


def test_a_platform_manifest_pulled_by_digest_is_kept_alone_when_its_index_goes() -> None:
    cache = Cache()
    amd64 = cache.image("library/multi", [b"amd64" * 1000], days=3, pulled=3)
    arm64 = cache.image("library/multi", [b"arm64" * 1000], days=3, pulled=1)
    index = cache.index("library/multi", [amd64, arm64], days=3, pulled=3, tag="1")
    alone = cache.blobs_of("library/multi", arm64)
    budget = CachePolicy(7 * DAYS, sum(cache.contents.blobs[b].size for b in alone))
    eviction = plan(cache.contents, budget, NOW)
    assert gone_manifests(eviction) == {("library/multi", index), ("library/multi", amd64)}
    assert eviction.over_budget == 1
    assert not {blob_dir(b) for b in alone} & set(eviction.blobs)
    assert not {layer_dir("library/multi", b) for b in alone} & set(eviction.layers)
    assert revision_dir("library/multi", arm64) not in eviction.manifests


def test_a_blob_without_a_manifest_stays_for_the_ttl_after_it_was_stored() -> None:
    cache = Cache()
    recent = cache.blob(b"fetched by digest alone", days=2, repository="library/x")
    old = cache.blob(b"fetched by digest long ago", days=8, repository="library/x")
    eviction = plan(cache.contents, WEEK, NOW)
    assert eviction.blobs == (blob_dir(old),)
    assert eviction.layers == (layer_dir("library/x", old),)
    assert recent not in eviction.blobs


def test_a_kept_manifest_this_run_cannot_read_spares_every_blob() -> None:
    cache = Cache()
    cache.image("library/old", [b"old"], days=30)
    unread = digest(b"not json")
    cache.contents.blobs[unread] = Stored(8, ago(1))
    cache.contents.manifests["library/odd"] = {unread: parse_manifest(b"not json", ago(1), present=True)}
    eviction = plan(cache.contents, WEEK, NOW)
    assert len(eviction.evicted) == 1 and eviction.blobs == () and eviction.layers == ()
    assert "kept manifests unread" in eviction.spared
    # Its data gone, a manifest names nothing (Distribution fetches it again): no reason to spare.
    assert parse_manifest(None, ago(1), present=False) == StoredManifest(ago(1), frozenset())


def test_records_of_manifests_no_longer_stored_go_after_the_ttl() -> None:
    cache = Cache()
    cache.contents.pulls[("library/a", digest(b"evicted long ago"))] = ago(8)
    cache.contents.pulls[("library/a", digest(b"a pull on its way"))] = ago(0.01)
    assert plan(cache.contents, WEEK, NOW).records == (("library/a", digest(b"evicted long ago")),)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("168h", 604800), ("1h30m", 5400), ("90s", 90), ("1500ms", 1), ("999999us", 0), ("2h0m1s", 7201)],
)
def test_go_duration_seconds_reads_every_unit_and_truncates(text: str, seconds: int) -> None:
    assert go_duration_seconds(text) == seconds


def test_the_settings_refuse_a_budget_below_one_gib_and_a_ttl_go_cannot_read() -> None:
    settings = team_settings(FilesystemStorage("/srv/owncr"), "http://127.0.0.1:5000")
    with pytest.raises(SettingsError, match="cache_max_gib 0 must be at least 1"):
        replace(settings, cache_max_gib=0)
    assert replace(settings, cache_max_gib=1).cache_max_gib == 1
    with pytest.raises(SettingsError, match="no Go duration"):
        go_duration_seconds("7 days")


def test_policy_records_and_settings() -> None:
    policy = CachePolicy.of("1h30m", 5)
    assert policy == CachePolicy(5400, 5 * 1024**3)
    assert CachePolicy.from_record(policy.record()) == policy
    assert CachePolicy.from_record(None) == CachePolicy(7 * DAYS, None)
    assert CachePolicy.of("500ms", None).ttl_seconds == 1
    assert str(CachePolicy.of("168h", 10)) == "ttl 168h, budget 10.0 GiB"
    with pytest.raises(ValueError, match="budget_bytes"):
        CachePolicy(60, 0)


# ---- what must never happen, on generated caches --------------------------------------------------------


def generated(seed: int) -> Cache:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    cache = Cache()
    shared = [f"shared {seed} {i}".encode() * rng.randint(1, 50) for i in range(4)]
    for n in range(rng.randint(1, 12)):
        repository = f"library/r{rng.randint(0, 3)}"
        layers = rng.sample(shared, rng.randint(0, 2)) + [f"own {seed} {n}".encode() * rng.randint(1, 80)]
        days = rng.uniform(0, 20)
        pulled = rng.choice([None, rng.uniform(0, days)])
        image = cache.image(repository, layers, days, pulled, tag=rng.choice(["", f"t{n}"]))
        if rng.random() < 0.3:
            sibling = cache.image(repository, [f"sibling {seed} {n}".encode()], days, rng.choice([None, 1.0]))
            cache.index(repository, [image, sibling], days, rng.choice([None, rng.uniform(0, days)]), f"i{n}")
    for n in range(rng.randint(0, 3)):
        cache.blob(f"loose {seed} {n}".encode(), rng.uniform(0, 20), f"library/r{n}")
    return cache


def last_use(cache: Cache, repository: str, manifest: str) -> datetime:
    stored = cache.contents.manifests[repository][manifest].stored
    return max(stored, cache.contents.pulls.get((repository, manifest), stored))


@pytest.mark.parametrize("seed", range(200))
def test_nothing_used_within_the_ttl_goes_and_no_kept_manifest_loses_a_blob(seed: int) -> None:
    cache = generated(seed)
    rng = random.Random(-seed)  # noqa: S311 - reproducible test data
    budget = rng.choice([None, rng.randint(1, sum(b.size for b in cache.contents.blobs.values()) + 1)])
    policy = CachePolicy(7 * DAYS, budget)
    eviction = plan(cache.contents, policy, NOW)
    going = set(eviction.evicted)
    oldest = NOW - timedelta(days=7)
    if budget is None:
        for repository, manifests in cache.contents.manifests.items():
            for manifest in manifests:
                if last_use(cache, repository, manifest) >= oldest:
                    assert (repository, manifest) not in going
        for d, blob in cache.contents.blobs.items():
            if blob.time >= oldest:
                assert blob_dir(d) not in eviction.blobs
    else:
        assert eviction.bytes_after <= budget
    for repository, manifests in cache.contents.manifests.items():
        for manifest in manifests:
            if (repository, manifest) in going:
                continue
            for blob in cache.blobs_of(repository, manifest):
                assert blob_dir(blob) not in eviction.blobs, (repository, manifest, blob)
                assert layer_dir(repository, blob) not in eviction.layers, (repository, manifest, blob)
            assert revision_dir(repository, manifest) not in eviction.manifests
            for child in manifests[manifest].children:  # a kept index keeps what it lists
                assert (repository, child) not in going
    kept_tags = {
        tag_dir(r, t)
        for r, tags in cache.contents.tags.items()
        for t, d in tags.items()
        if (r, d) not in going
    }
    assert not kept_tags & set(eviction.manifests)


# ---- a real directory, through FilesReader -----------------------------------------------------------


def write(path: Path, content: bytes, days: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    when = (ago(days)).timestamp()
    os.utime(path, (when, when))


def to_disk(cache: Cache, root: Path, host: str) -> None:
    """The cache in Distribution's layout below `root/cache/host`, records below `root/owncr/pulls`."""
    base = root / "cache" / host
    for d, blob in cache.contents.blobs.items():
        write(base / blob_data(d), cache.data[d], (NOW - blob.time).total_seconds() / DAYS)
    for repository, manifests in cache.contents.manifests.items():
        for d, manifest in manifests.items():
            days = (NOW - manifest.stored).total_seconds() / DAYS
            write(base / revision_dir(repository, d) / "link", d.encode(), days)
    for repository, linked in cache.contents.layers.items():
        for d in linked:
            write(base / layer_dir(repository, d) / "link", d.encode(), 1)
    for repository, tags in cache.contents.tags.items():
        for tag, d in tags.items():
            write(base / tags_dir(repository) / tag / "current/link", d.encode(), 1)
            write(
                base / tags_dir(repository) / tag / "index/sha256" / d.removeprefix("sha256:") / "link",
                d.encode(),
                1,
            )
    for (repository, d), pulled in cache.contents.pulls.items():
        days = (NOW - pulled).total_seconds() / DAYS
        write(root / pulls_prefix(host) / record_key(repository, d), b"", days)


def test_files_reader_reads_the_layout_and_removes_in_the_safe_order(tmp_path: Path) -> None:
    cache = Cache()
    old = cache.image("library/old", [b"old layer"], days=10, pulled=9, tag="1.0")
    fresh = cache.image("library/fresh", [b"fresh layer"], days=10, pulled=1, tag="latest")
    loose = cache.blob(b"loose and old", days=9, repository="library/fresh")
    to_disk(cache, tmp_path, "registry-1.docker.io")
    (tmp_path / "private").mkdir()
    commands: list[list[str]] = []

    def run(argv: list[str]) -> bytes:
        commands.append(argv)
        return subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout

    reader = FilesReader(str(tmp_path / "private"), run)
    assert reader.cache_hosts() == ["registry-1.docker.io"]
    files = reader.cache_files("registry-1.docker.io")
    assert reader.tags(files) == cache.contents.tags
    assert reader.pull_records("registry-1.docker.io") == cache.contents.pulls
    out = io.StringIO()
    dry = evict(reader, "registry-1.docker.io", WEEK, dry_run=True, out=out, now=NOW)
    assert not [c for c in commands if c[0] == "rm"], "the dry run removed something"
    assert f"cache registry-1.docker.io: would evict library/old@{old} (1.0, last used " in out.getvalue()
    commands.clear()
    done = evict(reader, "registry-1.docker.io", WEEK, dry_run=False, out=out, now=NOW)
    assert done == dry
    listing = [c for c in commands if c[0] == "sh"]
    assert len(listing) <= 6, listing  # a few commands per cache, not one per file
    removed = [c[3:] for c in commands if c[0] == "rm"]
    base = f"{tmp_path}/cache/registry-1.docker.io"
    assert removed == [
        [f"{base}/{p}" for p in sorted([revision_dir("library/old", old), tag_dir("library/old", "1.0")])],
        sorted(
            [f"{base}/{layer_dir('library/old', b)}" for b in cache.blobs_of("library/old", old) - {old}]
            + [f"{base}/{layer_dir('library/fresh', loose)}"]
        ),
        sorted(f"{base}/{blob_dir(b)}" for b in cache.blobs_of("library/old", old) | {loose}),
        [f"{tmp_path}/{pulls_prefix('registry-1.docker.io')}/{record_key('library/old', old)}"],
    ]
    again = reader.cache_files("registry-1.docker.io")
    assert set(again.blobs) == cache.blobs_of("library/fresh", fresh)
    assert again.revisions == {
        "library/fresh": {fresh: cache.contents.manifests["library/fresh"][fresh].stored}
    }
    assert reader.pull_records("registry-1.docker.io") == {("library/fresh", fresh): ago(1)}
    last = out.getvalue().splitlines()[-2:]
    assert last[0].startswith(
        "cache registry-1.docker.io: 1 images evicted (not pulled for 168h), 0 over budget; "
    )
    assert last[1].startswith("cache registry-1.docker.io: 1 images kept, ")
