"""What the mirror does, for a person: the counters of gateway/render/njs/metrics.js (one node's gateway,
Prometheus text format) and the storage used, as a short table. `python -m gateway status --data DIR`
prints it for a local run; `python -m components.cli.status` for a deployed stack (summed over its nodes).

Definitions (the same in the Grafana dashboard, dashboards/owncr.json):
- a blob or manifest *asked* is a request for upstream content on either door;
- *fetched* is a GET that brought it from the upstream (2xx: a blob redirected to a CDN counts once, as its
  download);
- the *hit ratio* is the share of asked blobs that were not fetched.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.upkeep.eviction import human

SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
FETCHED = {"kind": ("blob", "download"), "method": "GET"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Prometheus text format; a line that is not a sample (comments, blanks) is skipped."""
    samples = []
    for line in text.splitlines():
        m = SAMPLE.match(line.strip())
        if m is None or line.startswith("#"):
            continue
        samples.append(Sample(m[1], dict(LABEL.findall(m[2] or "")), float(m[3])))
    return samples


def scrape(url: str, timeout: float = 10.0) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the gateway's metrics URL
        return parse(resp.read().decode())


class Figures:
    """Sums over samples (of one node, or of every node's gateway together)."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def total(self, name: str, status_class: str = "", **match: str | tuple[str, ...]) -> float:
        """Sum of `name`'s samples with these labels; `status_class` "4": statuses 4xx only."""

        def wanted(s: Sample) -> bool:
            if not s.labels.get("status", "").startswith(status_class):
                return False
            return all(
                s.labels.get(key, "") in (want if isinstance(want, tuple) else (want,))
                for key, want in match.items()
            )

        return sum(s.value for s in self.samples if s.name == name and wanted(s))

    def upstreams(self) -> list[str]:
        gauge = "owncr_upstream_retry_after_seconds"  # one sample per upstream, from the first request on
        return sorted({s.labels["upstream"] for s in self.samples if s.name == gauge})


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _ratio(asked: float, fetched: float) -> str:
    return "-" if asked == 0 else f"{max(0.0, 1 - fetched / asked):.0%}"


def _state(f: Figures, upstream: str) -> str:
    retry = f.total("owncr_upstream_retry_after_seconds", upstream=upstream)
    for reason, words in (("rate_limited", "rate limiting"), ("down", "not answering")):
        if f.total("owncr_upstream_unavailable", upstream=upstream, reason=reason) > 0:
            return f"{words}: asked again in {retry:.0f} s (answered from storage meanwhile)"
    return "answering"


def table(rows: list[tuple[str, ...]]) -> str:
    """First column left-aligned, the figures right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(r) for r in rows)


def report(f: Figures, storage: Mapping[str, int] | None) -> str:
    """The table: per door, per upstream, and the storage used (None: not read)."""
    doors = ("registry", "mirror")
    requests = "owncr_requests_total"
    rows: list[tuple[str, ...]] = [
        ("", *doors),
        ("requests", *(_count(f.total(requests, door=d)) for d in doors)),
        ("  refused (4xx)", *(_count(f.total(requests, "4", door=d)) for d in doors)),
        ("  failed (5xx)", *(_count(f.total(requests, "5", door=d)) for d in doors)),
        ("bytes served", *(human(f.total("owncr_sent_bytes_total", door=d)) for d in doors)),
    ]
    parts = [table(rows)]
    for up in f.upstreams():
        asked = f.total("owncr_mirror_requests_total", upstream=up, kind="blob")
        fetched = f.total("owncr_upstream_requests_total", "2", upstream=up, **FETCHED)
        manifests = f.total("owncr_mirror_requests_total", upstream=up, kind="manifest")
        manifests_fetched = f.total(
            "owncr_upstream_requests_total", "2", upstream=up, kind="manifest", method="GET"
        )
        upstream_total = "owncr_upstream_requests_total"
        rows = [
            (f"upstream {up}", _state(f, up)),
            ("blobs asked / fetched", f"{_count(asked)} / {_count(fetched)}"),
            ("blob hit ratio", _ratio(asked, fetched)),
            ("manifests asked / fetched", f"{_count(manifests)} / {_count(manifests_fetched)}"),
            ("bytes fetched", human(f.total("owncr_upstream_received_bytes_total", upstream=up))),
            ("requests to it", _count(f.total(upstream_total, upstream=up))),
            ("  rate limited (429)", _count(f.total(upstream_total, upstream=up, status="429"))),
            ("  failed (5xx)", _count(f.total(upstream_total, "5", upstream=up))),
            ("  timed out (504)", _count(f.total(upstream_total, upstream=up, status="504"))),
            ("not asked while failing", _count(f.total("owncr_upstream_spared_total", upstream=up))),
        ]
        parts.append(table(rows))
    if storage is not None:
        parts.append(table([("storage used", ""), *((f"  {k}", human(v)) for k, v in storage.items())]))
    return "\n\n".join(parts) + "\n"


def storage_used(private: int, caches: Mapping[str, int]) -> dict[str, int]:
    return {"private": private, **{f"cache {host}": n for host, n in sorted(caches.items())}}
