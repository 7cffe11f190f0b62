"""Suite-wide, in CI (OWNCR_CI=1, set by .ci/run): a skipped test fails, unless it is a declared per-stack
parametrisation (tests/skips.py), and so does the run if a test started a program tests/host_tools.py
does not list (what CI would then lack on a fresh machine). Locally, skips stay skips (no root, no
dockerd) and undeclared programs are only reported. OWNCR_TOOLS_LOG=FILE writes the programs started."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.host_tools import classify
from tests.skips import PER_STACK

CI = os.environ.get("OWNCR_CI") == "1"
STARTED: set[str] = set()  # every program this test process started (audit events)


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        executable, argv = args[0], args[1]
        program = executable if executable else (argv[0] if isinstance(argv, list | tuple) and argv else argv)
        STARTED.add(os.fsdecode(program) if isinstance(program, str | bytes | os.PathLike) else str(program))


sys.addaudithook(_audit)


def _reason(longrepr: object) -> str:
    # A skip's longrepr is (file, line, "Skipped: <reason>").
    return longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)


def _fail_undeclared_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if CI and report.skipped and not _reason(report.longrepr).startswith(PER_STACK):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI ({_reason(report.longrepr)}): CI installs every tool and runs as root, so this "
            "test must run there; only per-stack parametrisations may skip (tests/skips.py)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    outcome = yield
    _fail_undeclared_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object]:
    outcome = yield
    _fail_undeclared_skip(outcome.get_result())  # type: ignore[attr-defined]


def undeclared_programs(started: set[str]) -> list[str]:
    return sorted(p for p in started if classify(p) is None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = os.environ.get("OWNCR_TOOLS_LOG")
    if log:
        Path(log).write_text("".join(f"{p}\t{classify(p)}\n" for p in sorted(STARTED)))
    missing = undeclared_programs(STARTED)
    if missing:
        print(
            f"\ntests started programs tests/host_tools.py does not list: {', '.join(missing)}",
            file=sys.stderr,
        )
        if CI:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
