"""`python -m gateway.bench` runs end to end at a tiny size (the full-size numbers are in
docs/benchmarks.md), and its verdicts are computed the right way round."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from client_harness import REPO_ROOT

from gateway.bench import Row, percentile


def test_bench_smoke(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "gateway.bench", "--layer-mib", "4", "--rounds", "1", "--requests", "20"]
    argv += ["--tag-seconds", "1", "--workdir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for what in ("blob push MiB/s", "blob pull MiB/s", "manifest HEAD p50 ms", "manifest GET p95 ms"):
        assert what in out, out
    assert "upstream requests for private names: 0 (target 0) ok" in out, out
    assert "cached tag reads through the mirror:" in out, out
    assert list(tmp_path.iterdir()) == [], "the bench removes its work directory"


def test_verdicts() -> None:
    assert Row("push", 100.0, 96.0, ">= 0.95").met
    assert not Row("push", 100.0, 90.0, ">= 0.95").met
    assert Row("p50", 1.0, 1.2, "<= 1.25").met
    assert not Row("p50", 1.0, 1.3, "<= 1.25").met
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(i) for i in range(100)], 0.95) == 95.0
