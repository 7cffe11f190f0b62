"""The chain from a pull request to pytest cannot be cut by accident: each workflow that deploys or
previews needs the test job; the test job's last step runs `.ci/run`; `.ci/run` ends in the README's
test command, `scripts/test.sh`, with no arguments; that script lints, type-checks and runs pytest with
only the arguments it was given; and nothing on the way deselects, ignores or tolerates a failure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
TEST_WORKFLOW = "./.github/workflows/test.yml"
# Ways a shell line or pytest option silences failures or narrows the run.
TOLERATES = re.compile(r"\|\|\s*(true|:|exit 0)|;\s*true\b|set \+e|continue-on-error")
NARROWS = re.compile(
    r"(^|\s)(-k|-m|--deselect|--ignore|--ignore-glob|--co|--collect-only|--lf|--last-failed)\b"
)


def workflow(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def commands(path: Path) -> list[str]:
    """The script's command lines (comments, blank lines and continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_deploys_and_previews_need_the_test_job() -> None:
    for name in ("pull-request.yml", "deploy.yml"):
        jobs = workflow(name)["jobs"]
        assert jobs["test"]["uses"] == TEST_WORKFLOW, name
        for job_id in jobs:
            if job_id != "test":
                assert "test" in _needs_closure(jobs, job_id), f"{name}: job {job_id} must need the tests"


def _needs_closure(jobs: dict[str, Any], job_id: str) -> set[str]:
    needs = jobs[job_id].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(_needs_closure(jobs, n) for n in direct)) if direct else set()


def test_the_test_workflow_runs_ci_run_and_nothing_softens_it() -> None:
    [job] = workflow("test.yml")["jobs"].values()
    assert "continue-on-error" not in job and "if" not in job
    last = job["steps"][-1]
    assert last["run"].strip() == ".ci/run", last
    assert set(last) <= {"name", "run"}, f"no if/continue-on-error/shell override on the test step: {last}"


def test_ci_run_ends_in_the_readme_test_command() -> None:
    lines = commands(ROOT / ".ci" / "run")
    assert "set -euo pipefail" in lines
    assert lines[-1] == "exec ./scripts/test.sh", "the README's test command, with no arguments"
    assert not [line for line in lines if TOLERATES.search(line)]
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"```sh\n\.ci/run\n```", readme), "the README tells users to run .ci/run"


def test_test_sh_lints_type_checks_and_runs_all_of_pytest() -> None:
    lines = commands(ROOT / "scripts" / "test.sh")
    assert "set -euo pipefail" in lines
    for step in ("ruff check .", "ruff format --check .", "pyright"):
        assert step in lines, step
    assert lines[-1] == 'exec python -m pytest "$@"', "pytest gets only the caller's arguments"
    assert not [line for line in lines if TOLERATES.search(line)]


def test_pytest_configuration_selects_every_test() -> None:
    import tomllib

    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]
    assert not NARROWS.search(" " + options.get("addopts", "")), options["addopts"]
    for conftest in ROOT.glob("tests/**/conftest.py"):
        text = conftest.read_text()
        for hook in ("collect_ignore", "pytest_collection_modifyitems", "pytest_ignore_collect", "deselect"):
            assert hook not in text, f"{conftest.relative_to(ROOT)} narrows the run with {hook}"


def test_every_test_file_is_collected() -> None:
    # Collection only: imports every test module once (a few seconds).
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:]
    collected = {line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line}
    on_disk = {str(p.relative_to(ROOT)) for p in ROOT.glob("tests/**/test_*.py")}
    assert collected == on_disk, f"not collected: {sorted(on_disk - collected)}"
