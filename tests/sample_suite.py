"""Runs a small sample test file under this suite's own hooks (tests/conftest.py), in or out of CI mode:
how the tests of those hooks see what a real run would do with a skip or an undeclared program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import ROOT


def run_sample(source: str, directory: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    """Writes `source` as `directory`/test_sample.py and runs pytest on it with the suite's conftest as a
    plugin, OWNCR_CI set (ci) or unset; every outcome reported (-rA)."""
    test = directory / "test_sample.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "OWNCR_CI"} | ({"OWNCR_CI": "1"} if ci else {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rA", str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
