"""Watching nginx for request bodies it stores, wherever they could land.

A body nginx buffers goes to a temp file (any directory its config names, on disk or on a tmpfs, which
/proc/<pid>/io does not count as a write) that it unlinks right after creating it, so no directory
listing ever shows it; or, below `client_body_buffer_size`, to memory. So the watch samples, for every
nginx process: each regular file it holds open that it did not hold at the start (the open descriptor
shows it even once deleted, as `... (deleted)`, with its size), the bytes it wrote to storage, and its
peak resident memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from gateway.local import procfs

MiB = 1 << 20


def nginx_processes(master: int) -> list[int]:
    """The master and its workers (children), by /proc."""
    return [master, *(pid for pid, _, fields in procfs.stats() if int(fields[1]) == master)]


def written_to_disk(pid: int) -> int:
    """Bytes the process caused to be written to storage (not to sockets): /proc/<pid>/io write_bytes."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"])


def peak_memory(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for {pid}")


def open_regular_files(pid: int) -> dict[str, int]:
    """Regular files the process holds open: target (with ` (deleted)` if unlinked) -> size now."""
    files: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                info = os.stat(fd)  # follows the descriptor, so works for deleted files too
                if stat.S_ISREG(info.st_mode):
                    files[os.readlink(fd)] = info.st_size
    return files


class SpoolWatch:
    """Samples nginx while a request body passes (a push, a refused upload) and keeps what it finds:
    `spool_files` (files opened meanwhile, with the largest size seen), `written` (bytes written to
    storage) and `memory_growth` (the largest rise of a process's peak resident set)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.spool_files: dict[str, int] = {}
        self.samples = 0
        self.written = 0
        self.memory_growth = 0
        self._held = {pid: set(open_regular_files(pid)) for pid in pids}  # logs, config: opened before
        self._before = {pid: written_to_disk(pid) for pid in pids}
        self._peak = {pid: peak_memory(pid) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()
        self.written = sum(written_to_disk(pid) - before for pid, before in self._before.items())
        self.memory_growth = max(peak_memory(pid) - before for pid, before in self._peak.items())

    def assert_streamed(self, body: int, *, allowance: int = 16 * MiB) -> None:
        """Nothing of a `body`-byte request landed in nginx: no file, no disk write, no memory beyond
        `allowance` (logs and the login cache write a little; buffers are a few MiB)."""
        assert allowance < body / 2, "the allowance must be far below the body, or a spool could hide in it"
        assert self.samples >= 2, "sampled at the start and the end at least"
        # nginx unlinks its body temp files at once (`client_body_in_file_only` keeps them, whole):
        # the password file and login-cache entries it opens meanwhile are neither.
        spooled = {f: n for f, n in self.spool_files.items() if f.endswith(" (deleted)") or n >= allowance}
        assert spooled == {}, f"nginx stored the body in {spooled}"
        assert self.written < allowance, f"nginx wrote {self.written / MiB:.1f} MiB to storage"
        assert self.memory_growth < allowance, f"nginx's memory grew by {self.memory_growth / MiB:.1f} MiB"

    def _sample(self) -> None:
        for pid in self.pids:
            for target, size in open_regular_files(pid).items():
                if target not in self._held[pid]:
                    self.spool_files[target] = max(size, self.spool_files.get(target, 0))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.02)
