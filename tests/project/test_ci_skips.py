"""CI cannot skip a test by accident: with OWNCR_CI=1 (what .ci/run sets) a skip fails the run unless it is
a declared per-stack parametrisation; without it, skips stay skips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import ROOT, sample_suite

SAMPLE = """
import pytest
from tests.skips import skip_for_stack

@pytest.mark.skipif(True, reason="needs a tool this machine lacks")
def test_tool_missing():
    pass

def test_not_root():
    pytest.skip("needs root")

def test_stack_parametrisation():
    skip_for_stack("NFS stack")

def test_runs():
    pass
"""

MODULE_SKIP = """
import pytest
pytest.skip("whole module needs dockerd", allow_module_level=True)
"""


def run_sample(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess[str]:
    return sample_suite.run_sample(source, tmp_path, ci=ci)


def test_in_ci_a_skip_fails_unless_per_stack(tmp_path: Path) -> None:
    result = run_sample(tmp_path, SAMPLE, ci=True)
    assert result.returncode == 1, result.stdout
    # A skipif mark fires at setup (reported as an error), pytest.skip() in the test body as a failure.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in result.stdout, result.stdout
    assert "skipped in CI (needs a tool this machine lacks)" in result.stdout
    assert "skipped in CI (needs root)" in result.stdout
    assert "per-stack: NFS stack" in result.stdout


def test_in_ci_a_skipped_module_fails(tmp_path: Path) -> None:
    result = run_sample(tmp_path, MODULE_SKIP, ci=True)
    assert result.returncode != 0
    assert "skipped in CI (whole module needs dockerd)" in result.stdout, result.stdout


@pytest.mark.parametrize("source", [SAMPLE, MODULE_SKIP], ids=["tests", "module"])
def test_outside_ci_skips_stay_skips(tmp_path: Path, source: str) -> None:
    result = run_sample(tmp_path, source, ci=False)
    assert result.returncode in (0, 5), result.stdout  # 5: nothing ran (the whole module skipped)
    assert "failed" not in result.stdout and "error" not in result.stdout
    assert "skipped" in result.stdout


def test_ci_sets_the_flag() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert "export OWNCR_CI=1" in run
    assert run.index("export OWNCR_CI=1") < run.index("exec ./scripts/test.sh")
