"""Watching nginx for request bodies it stores: the temp files it holds open and the bytes it writes.

nginx unlinks a request-body temp file right after creating it, so the directory itself always looks
empty: the open descriptors show it (as `... (deleted)`), and /proc/<pid>/io shows what reached storage.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def nginx_processes(master: int) -> list[int]:
    """The master and its workers (children), by /proc."""
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(entry.name))
    return pids


def written_to_disk(pid: int) -> int:
    """Bytes the process caused to be written to storage (not to sockets): /proc/<pid>/io write_bytes."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"])


class SpoolWatch:
    """Watches nginx while a push runs: the temp files it holds open under `temp_dir` (nginx unlinks a
    request-body temp file right after creating it, so the directory itself always looks empty: the
    open descriptors show it, as `... (deleted)`), and the bytes its processes write to disk."""

    def __init__(self, pids: list[int], temp_dir: Path) -> None:
        self.pids = pids
        self.temp_dir = str(temp_dir)
        self.spool_files: set[str] = set()
        self.samples = 0
        self.written = 0
        self._before = {pid: written_to_disk(pid) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.written = sum(written_to_disk(pid) - before for pid, before in self._before.items())

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    for fd in Path(f"/proc/{pid}/fd").iterdir():
                        with contextlib.suppress(OSError):
                            target = os.readlink(fd)
                            if target.startswith(self.temp_dir):
                                self.spool_files.add(target)
            self.samples += 1
            self._stop.wait(0.02)
