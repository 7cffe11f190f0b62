"""CI installs every program the tests start: each listed program's Debian package is in .ci/run's apt
list (or Essential), and a test that starts an unlisted program fails the run in CI (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import sample_suite
from tests.host_tools import ESSENTIAL, FROM_ELSEWHERE, HOST_TOOLS, ROOT, classify


def ci_apt_packages() -> set[str]:
    run = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"apt_packages=\(([^)]*)\)", run)
    assert match, "the apt package list in .ci/run"
    return set(match[1].split())


def test_ci_installs_the_package_of_every_listed_program() -> None:
    needed = set(HOST_TOOLS.values()) - ESSENTIAL
    assert needed <= ci_apt_packages(), f".ci/run must install {sorted(needed - ci_apt_packages())}"


def test_programs_from_elsewhere_are_what_install_tools_needs_too() -> None:
    install_tools = (ROOT / "scripts" / "install-tools").read_text()
    for program in FROM_ELSEWHERE:
        assert f"command -v {program}" in install_tools, program


def test_programs_are_classified_by_where_they_live(tmp_path: Path) -> None:
    assert classify(str(ROOT / ".tools" / "bin" / "nginx")) == "tools"
    assert classify(str(ROOT / "scripts" / "install-tools")) == "repo"
    assert classify(sys.executable) == "venv"
    assert classify("skopeo") == "skopeo"
    assert classify("/usr/local/go/bin/go") == "go"
    assert classify("/usr/sbin/iptables") == "iptables"
    assert classify(str(tmp_path / "some-tool")) is None
    assert classify("nmap") is None


SAMPLE = """
import subprocess

def test_calls_a_program_nobody_declared():
    subprocess.run([{tool!r}], check=True)
"""


def run_sample(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    tool = tmp_path / "undeclared-tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    return sample_suite.run_sample(SAMPLE.format(tool=str(tool)), tmp_path, ci=ci)


def test_in_ci_an_undeclared_program_fails_the_run(tmp_path: Path) -> None:
    result = run_sample(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout  # the test itself passed: the run failed for the program
    assert f"does not list: {tmp_path / 'undeclared-tool'}" in result.stderr, result.stderr


def test_outside_ci_an_undeclared_program_is_only_reported(tmp_path: Path) -> None:
    result = run_sample(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "undeclared-tool" in result.stderr
