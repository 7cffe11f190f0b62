"""Tag retention of the private namespaces: which tags a rule keeps, and the plan that deletes the rest
through the registry API.

A rule applies to every repository of one private namespace (`team` covers `team/app`, `team/x/y`). In
each repository a tag is kept if ANY of these holds, and deleted otherwise:

- it is one of the `keep` newest tags (by push time: when the tag last moved),
- it was pushed within the last `days` days,
- it matches one of the `protect` globs (fnmatch: `latest`, `v*`, `release-?.*`).

Deletion goes through the registry API, never by editing storage: a manifest whose every tag goes is
deleted by digest (`DELETE /v2/<name>/manifests/<digest>`, which also drops its tags); a tag whose
manifest is still wanted (another kept tag names it, or a kept image index lists it) is only untagged
(`DELETE /v2/<name>/manifests/<tag>`, Distribution >= 3.0), so a kept image never loses its manifest.
Untagged manifests of the namespace go too (by digest: the tags of a pushed `latest` moved on, a
platform manifest of an index that is gone), except those a kept index lists and referrers (a
signature, an SBOM) whose `subject` is a kept manifest: `orphans`. Unreferenced blobs are then removed
by the garbage collection (gateway/upkeep/maintenance.py); namespaces without a rule are never touched.

Referrers indexes (the tags `<alg>-<hex>` the registry door keeps for the OCI referrers API,
gateway/render/njs/referrers.js) are not images: no rule counts or keeps them. Each one stays while its
subject is kept and is deleted with its subject (by digest), like the referrers whose subject is gone.

Config: `retention` in the stack config (settings.py) and `--retention NAMESPACE=keep:N[,days:D]
[,protect:GLOB]...` on `python -m gateway run`; both end up as `RetentionRule`s checked here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.config import SettingsError

_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")
EXAMPLE = "keep: 10, days: 30, protect: [latest, v*]"


@dataclass(frozen=True)
class RetentionRule:
    """What to keep in every repository of `namespace`; at least one of keep and days is set."""

    namespace: str
    keep: int | None = None
    days: int | None = None
    protect: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"retention.{self.namespace}"
        for key, value in (("keep", self.keep), ("days", self.days)):
            if value is not None and (type(value) is not int or value < 0):
                raise SettingsError(f"{where}.{key} = {value!r}: a whole number >= 0 (e.g. {EXAMPLE})")
        if self.keep is None and self.days is None:
            raise SettingsError(
                f"{where}: set keep (newest tags kept) or days (tags pushed within them kept), "
                f"or both (e.g. {EXAMPLE}); protect alone would delete every other tag"
            )
        if not isinstance(self.protect, tuple):
            raise SettingsError(f"{where}.protect: a list of tag globs (e.g. [latest, v*])")
        for glob in self.protect:
            if not isinstance(glob, str) or not _GLOB.match(glob):
                raise SettingsError(
                    f"{where}.protect: {glob!r} is no tag glob (tag characters plus * ? [ ], "
                    "e.g. latest or v*)"
                )

    def protects(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, glob) for glob in self.protect)

    def covers(self, repository: str) -> bool:
        return repository == self.namespace or repository.startswith(self.namespace + "/")


def check_rules(rules: Iterable[RetentionRule], namespaces: tuple[str, ...]) -> tuple[RetentionRule, ...]:
    """Every rule names a private namespace, each at most once."""
    rules = tuple(rules)
    seen: set[str] = set()
    for rule in rules:
        if rule.namespace not in namespaces:
            raise SettingsError(
                f"retention.{rule.namespace}: not a private namespace; retention applies to one of "
                f"{list(namespaces)} (privateNamespaces)"
            )
        if rule.namespace in seen:
            raise SettingsError(f"retention.{rule.namespace}: given twice; give each namespace one rule")
        seen.add(rule.namespace)
    return rules


def rule_from_mapping(namespace: str, value: object) -> RetentionRule:
    """A rule from the stack config's `retention: {NAMESPACE: {keep: N, days: D, protect: [GLOB]}}`."""
    where = f"retention.{namespace}"
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where}: an object such as {{{EXAMPLE}}}")
    unknown = sorted(set(value) - {"keep", "days", "protect"})
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; the keys are keep, days and protect")
    protect = value.get("protect", [])
    if not isinstance(protect, list):
        raise SettingsError(f"{where}.protect: a list of tag globs (e.g. [latest, v*])")
    return RetentionRule(
        namespace=namespace, keep=value.get("keep"), days=value.get("days"), protect=tuple(protect)
    )


def record(rule: RetentionRule) -> dict[str, object]:
    """A rule as JSON-ready data: how the local runner and the stack output `maintenance` hand rules to
    maintenance (`from_record` reads it back)."""
    return {"namespace": rule.namespace, "keep": rule.keep, "days": rule.days, "protect": list(rule.protect)}


def from_record(data: Mapping[str, object]) -> RetentionRule:
    values = {k: v for k, v in data.items() if k != "namespace" and v is not None}
    return rule_from_mapping(str(data["namespace"]), values)


def rule_from_cli(spec: str) -> RetentionRule:
    """`NAMESPACE=keep:N[,days:D][,protect:GLOB]...` (protect may repeat)."""
    namespace, sep, rest = spec.partition("=")
    if not sep or not namespace:
        raise SettingsError(f"--retention {spec!r}: expected NAMESPACE=keep:N[,days:D][,protect:GLOB]")
    numbers: dict[str, int] = {}
    protect: list[str] = []
    for part in rest.split(","):
        key, sep, value = part.partition(":")
        if key == "protect" and sep:
            protect.append(value)
        elif key in ("keep", "days") and sep and value.isdigit() and key not in numbers:
            numbers[key] = int(value)
        else:
            raise SettingsError(
                f"--retention {spec!r}: {part!r} is not keep:N, days:D or protect:GLOB "
                "(keep and days once each, whole numbers)"
            )
    return RetentionRule(namespace=namespace, protect=tuple(protect), **numbers)


@dataclass(frozen=True)
class Tag:
    repository: str
    name: str
    digest: str
    pushed: datetime  # when the tag last moved (its link in storage)
    size: int  # bytes the image references (config + layers, every platform of an index)


_FALLBACK_TAG = re.compile(r"^([a-z0-9]{1,32})-([0-9a-f]{64})$")  # the spec's referrers tag schema (sha256)


def referrers_subject(tag: str) -> str | None:
    """The subject digest a referrers index tag names (`sha256-<hex>` -> `sha256:<hex>`), else None."""
    match = _FALLBACK_TAG.match(tag)
    return f"{match[1]}:{match[2]}" if match else None


def unreferred(fallbacks: Iterable[Tag], live: set[str]) -> list[Deletion]:
    """Delete (by digest) the referrers indexes whose subject is not `live` (kept manifests and what
    they list). Only an empty index can be another subject's too, and an empty index lists nothing."""
    return by_digest(t for t in fallbacks if referrers_subject(t.name) not in live)


def by_digest(tags: Iterable[Tag]) -> list[Deletion]:
    """One deletion by digest per manifest the `tags` name, with all of those tags."""
    groups: dict[str, list[Tag]] = {}
    for tag in tags:
        groups.setdefault(tag.digest, []).append(tag)
    return [
        Deletion(group[0].repository, digest, tuple(sorted(t.name for t in group)), group[0].size)
        for digest, group in groups.items()
    ]


def kept(rule: RetentionRule, tags: Iterable[Tag], now: datetime) -> set[str]:
    """Names of the tags of ONE repository that `rule` keeps."""
    tags = sorted(tags, key=lambda t: (t.pushed, t.name), reverse=True)
    keep = set()
    if rule.keep is not None:
        keep |= {t.name for t in tags[: rule.keep]}
    if rule.days is not None:
        since = now - timedelta(days=rule.days)
        keep |= {t.name for t in tags if t.pushed >= since}
    keep |= {t.name for t in tags if rule.protects(t.name)}
    return keep


@dataclass(frozen=True)
class Deletion:
    """One API call: a manifest by digest (with `tags`, all of its tags) or one tag only (untag)."""

    repository: str
    reference: str  # a digest or a tag
    tags: tuple[str, ...]
    size: int

    @property
    def by_digest(self) -> bool:
        return self.reference.startswith("sha256:")


def plan(
    rule: RetentionRule, tags: list[Tag], now: datetime, still_needed: set[str] | None = None
) -> list[Deletion]:
    """The deletions of ONE repository. `still_needed`: digests kept images reference (an index's
    platform manifests); they lose tags but are never deleted by digest."""
    keep = kept(rule, tags, now)
    needed = {t.digest for t in tags if t.name in keep} | (still_needed or set())
    doomed = [t for t in tags if t.name not in keep]
    untags = [Deletion(t.repository, t.name, (t.name,), t.size) for t in doomed if t.digest in needed]
    deletions = untags + by_digest(t for t in doomed if t.digest not in needed)
    return sorted(deletions, key=lambda d: d.tags)


def orphans(
    revisions: set[str], tagged: set[str], live: set[str], subjects: dict[str, str | None]
) -> list[str]:
    """Untagged manifests of ONE repository that go: neither named by a tag (`tagged`, before any
    deletion), nor listed by a kept index (`live` holds the kept manifests and what they list), nor a
    referrer of a live manifest (`subjects`: each candidate's `subject` digest, or None)."""
    candidates = revisions - tagged - live
    return sorted(d for d in candidates if subjects.get(d) not in live)
