"""gateway/render/drain.sh, the production entrypoint of nginx and the registries, as a process: on the stop
signal Swarm sends (SIGQUIT from the official nginx image, or SIGTERM) it creates the drain flag at once
(nginx; a registry has none), keeps its child running for OWNCR_DRAIN_SECONDS, then sends it the given
signal (QUIT for nginx, TERM for Distribution) and exits with the child's status. The child here records
the signal it got; what nginx and Distribution then do is theirs (the HA drill measures the whole)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.render.nginx import DRAIN_SH

# A stand-in for nginx or Distribution: says it is ready, and on SIGQUIT or SIGTERM writes "quit" or
# "term" and exits 0. Like them it installs its own handlers: sh starts a background command with
# SIGQUIT ignored, which a handler replaces (and a child `sh` trap could not).
CHILD = """
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
def stop(signum, _):
    marker.write_text("quit\\n" if signum == signal.SIGQUIT else "term\\n")
    sys.exit(0)
signal.signal(signal.SIGQUIT, stop)
signal.signal(signal.SIGTERM, stop)
marker.write_text("ready\\n")
while True:
    time.sleep(0.1)
"""


def default_signals() -> None:
    """A container's first process starts with every signal at its default disposition. A test run
    started in the background of a shell (`.ci/run &`) inherits SIGINT and SIGQUIT ignored, and a
    shell cannot trap a signal ignored when it started: the drain would never begin."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def start(
    tmp_path: Path, drain: str, stop: str = "QUIT", flag_arg: str = ""
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    flag, marker = tmp_path / "draining", tmp_path / "child"
    flag.write_text("stale")  # left by a previous task on the same tmpfs: must be cleared at start
    proc = subprocess.Popen(
        ["sh", str(DRAIN_SH), flag_arg or str(flag), stop, sys.executable, "-c", CHILD, str(marker)],
        env={"PATH": os.environ["PATH"], "OWNCR_DRAIN_SECONDS": drain},
        cwd=tmp_path,
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text() == "ready\n"):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    if not flag_arg:
        assert not flag.exists(), "a stale drain flag survived the start"
    return proc, flag, marker


@pytest.mark.parametrize("stop_signal", [signal.SIGQUIT, signal.SIGTERM], ids=["SIGQUIT", "SIGTERM"])
def test_stop_signal_drains_then_quits_the_child(tmp_path: Path, stop_signal: signal.Signals) -> None:
    proc, flag, marker = start(tmp_path, "2")
    sent = time.monotonic()
    proc.send_signal(stop_signal)
    deadline = time.monotonic() + 1
    while not flag.exists():
        assert time.monotonic() < deadline, "no drain flag 1 s after the stop signal"
        time.sleep(0.02)
    time.sleep(1)  # the drain (2 s) started with the flag
    assert proc.poll() is None and marker.read_text() == "ready\n", "the child stopped before the drain ended"
    assert proc.wait(timeout=10) == 0
    assert marker.read_text() == "quit\n"  # SIGQUIT, nginx's graceful shutdown
    assert 2 <= time.monotonic() - sent < 5


def test_registry_mode_drains_without_a_flag_then_sends_term(tmp_path: Path) -> None:
    proc, flag, marker = start(tmp_path, "1", "TERM", flag_arg="-")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert marker.read_text() == "ready\n", "the child stopped before the drain ended"
    assert proc.wait(timeout=10) == 0 and marker.read_text() == "term\n"
    assert 1 <= time.monotonic() - sent < 4
    # "-" means no flag: neither a file named "-" nor the (stale) flag file is touched.
    assert not (tmp_path / "-").exists() and flag.read_text() == "stale"


def test_without_a_drain_time_the_child_quits_at_once(tmp_path: Path) -> None:
    proc, _, marker = start(tmp_path, "0")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0 and marker.read_text() == "quit\n"
    assert time.monotonic() - sent < 1.5


def test_a_child_that_dies_on_its_own_ends_the_wrapper_with_its_status(tmp_path: Path) -> None:
    flag = tmp_path / "draining"
    done = subprocess.run(
        ["sh", str(DRAIN_SH), str(flag), "QUIT", "sh", "-c", "exit 7"],
        env={"PATH": os.environ["PATH"]},
        timeout=10,
        check=False,
    )
    assert done.returncode == 7 and not flag.exists()


def test_the_script_is_posix_sh_and_shellcheck_clean() -> None:
    """The official images run it with busybox sh (Alpine), the stand-ins with dash: POSIX sh only."""
    done = subprocess.run(
        ["shellcheck", "-s", "sh", str(DRAIN_SH)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
