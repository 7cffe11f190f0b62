"""`python -m gateway.bench`, `gateway.bench.redirect` and `gateway.bench.fleet` run end to end at a tiny
size (the full-size numbers are in docs/benchmarks.md), and their verdicts are computed the right way
round."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.bench.pull import Row, interleaved, percentile
from tests import ROOT


def test_bench_smoke(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "gateway.bench", "--layer-mib", "4", "--rounds", "1", "--requests", "20"]
    argv += ["--tag-seconds", "1", "--workdir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for what in ("blob push MiB/s", "blob pull MiB/s", "manifest HEAD p50 ms", "manifest GET p95 ms"):
        assert what in out, out
    assert "upstream requests for private names: 0 (target 0) ok" in out, out
    assert "cached tag reads through the mirror:" in out, out
    assert list(tmp_path.iterdir()) == [], "the bench removes its work directory"


def test_bench_fleet_smoke(tmp_path: Path) -> None:
    """Five clients at once: through the mirror door the upstream sends each blob once (1.0x the image),
    to Distribution alone once per client (5.0x)."""
    argv = [sys.executable, "-m", "gateway.bench.fleet", "--clients", "1,5", "--layers-mib", "2,1"]
    argv += ["--workdir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        (m["side"], m["temp"], int(m["clients"])): m
        for m in re.finditer(
            r"^(?P<side>owncr mirror door|Distribution alone) +(?P<temp>cold|warm) +(?P<clients>\d+) +"
            r"(?P<failed>\d+) +(?P<requests>\d+) +(?P<gets>\d+) +[\d.]+ +(?P<times>[\d.]+)x",
            result.stdout,
            re.M,
        )
    }
    assert len(rows) == 8, result.stdout
    assert all(m["failed"] == "0" for m in rows.values()), result.stdout
    assert rows["owncr mirror door", "cold", 5]["times"] == "1.0", result.stdout
    # Distribution alone fetches per client (about 5.0x; two pulls that start together may share a fetch).
    assert float(rows["Distribution alone", "cold", 5]["times"]) >= 3.0, result.stdout
    assert rows["owncr mirror door", "warm", 5]["gets"] == "0", result.stdout
    assert list(tmp_path.iterdir()) == [], "the bench removes its work directory"


def test_bench_s3_redirect_smoke(tmp_path: Path) -> None:
    """The S3 mode prints its three figures for both sides; with redirects nginx carries a few KiB per
    GiB (the 307s), without it carries every byte."""
    argv = [sys.executable, "-m", "gateway.bench.redirect", "--layer-mib", "8", "--rounds", "1"]
    argv += ["--workdir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for what in ("pull MiB/s through the registry door", "pull MiB/s straight from the S3 server"):
        assert what in out, out
    assert "CPU s nginx + registries per GiB" in out, out
    (moved,) = [line for line in out.splitlines() if line.startswith("bytes through nginx per GiB")]
    words = moved.split()  # ... pulled <on> KiB <off> MiB ...
    assert words[7] == "KiB" and words[9] == "MiB" and float(words[8]) >= 1024, moved
    assert "target on: < 1 MiB ok" in moved, moved
    assert list(tmp_path.iterdir()) == [], "the bench removes its work directory"


def test_interleaving_puts_every_side_at_every_position() -> None:
    order: list[str] = []
    interleaved(6, {k: (lambda _i, k=k: order.append(k)) for k in "abc"})
    rounds = ["".join(order[i : i + 3]) for i in range(0, 18, 3)]
    assert rounds == ["abc", "bca", "cab", "abc", "bca", "cab"]
    two: list[str] = []
    interleaved(2, {k: (lambda _i, k=k: two.append(k)) for k in "ab"})
    assert two == ["a", "b", "b", "a"]


def test_verdicts() -> None:
    assert Row("push", 100.0, 96.0, ">= 0.95").met
    assert not Row("push", 100.0, 90.0, ">= 0.95").met
    assert Row("p50", 1.0, 1.2, "<= 1.25").met
    assert not Row("p50", 1.0, 1.3, "<= 1.25").met
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(i) for i in range(100)], 0.95) == 95.0
