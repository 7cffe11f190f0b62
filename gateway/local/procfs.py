"""Processes as /proc/<pid>/stat shows them: what the tests use to find (and stop) every process they
started, and what the benchmark sums CPU time over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, the fields after comm) of every process; `fields[0]` is the state, `[1]` the parent,
    `[3]` the session, `[11]`/`[12]` user/system CPU in clock ticks, `[19]` the start time
    (proc(5), numbered from the state field). Processes that exit meanwhile are skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # comm may hold spaces and parentheses: it ends at the last ')'.
        yield (
            int(entry.name),
            stat[stat.index("(") + 1 : stat.rindex(")")],
            stat[stat.rindex(")") + 2 :].split(),
        )
