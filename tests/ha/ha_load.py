"""The drill's load: registry API requests through the load balancer, each one recorded.

Three workers, each bounded in count and time, speak the registry API over plain HTTP to the load
balancer's address (loopback), naming the door by Host header as a client of cr.example.com would:
- private pull: the registry door, Basic auth, a private image's manifest by tag, then its blobs;
- mirror pull: the mirror door, anonymous, an upstream image's manifest by tag (alternately a tag the
  cache already holds and one it has never fetched), then its blobs;
- push: the registry door, a new tag of a new image each time (two monolithic blob uploads, POST + PUT,
  then the manifest); the digest the registry acknowledged is kept to check afterwards that the tag
  still pulls with exactly it.
Every request opens its own connection (the load balancer balances connections, not requests), so
what a node's loss or drain does to new connections shows in every request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REQUEST_TIMEOUT = 30.0
PAUSE = 0.25  # between two operations of one worker: the machine is shared
LAYER_BYTES = 64 << 10


@dataclass(frozen=True)
class Record:
    worker: str  # "private", "mirror", "push"
    what: str  # e.g. "GET manifest", "PUT blob"
    start: float  # monotonic seconds
    end: float
    status: int  # HTTP status, 0 when no answer came (connection refused, reset, timeout)
    ok: bool
    detail: str = ""
    port: int = 0  # the client's port of its connection (0: none was made): the load balancer logs it
    wall: float = 0.0  # epoch seconds at `start`


class RequestFailed(Exception):
    pass


@dataclass(frozen=True)
class Door:
    """One front door through the load balancer: where to connect, which Host, which credentials."""

    host: str  # the load balancer's address
    port: int
    name: str  # Host header
    auth: tuple[str, str] | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Host": self.name}
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return headers


@dataclass(frozen=True)
class Tap:
    """Where a worker's requests are recorded, under its name."""

    worker: str
    add: Callable[[Record], None]


@dataclass
class Recorder:
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def snapshot(self) -> list[Record]:
        with self.lock:
            return list(self.records)


def request(
    door: Door,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    expect: tuple[int, ...],
    tap: Tap | None = None,
    what: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; raises RequestFailed on an unexpected answer or none."""
    start, wall = time.monotonic(), time.time()
    status, answer, data, detail, port = 0, {}, b"", "", 0
    conn = http.client.HTTPConnection(door.host, door.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.connect()
        port = conn.sock.getsockname()[1]
        conn.request(method, path, body=body, headers={**door.headers(), **(headers or {})})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
        answer = {k.lower(): v for k, v in resp.getheaders()}
        if status not in expect:
            detail = data[:200].decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        detail = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
    ok = status in expect
    if tap is not None:
        end = time.monotonic()
        tap.add(Record(tap.worker, what or f"{method} {path}", start, end, status, ok, detail, port, wall))
    if not ok:
        raise RequestFailed(f"{method} {path}: {status} {detail}")
    return status, answer, data


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> content

    @property
    def digest(self) -> str:
        return digest(self.manifest)


def make_image(seed: str) -> Image:
    """A small OCI image whose layer is unique to `seed` (the registry checks digests, not tar content)."""
    layer = hashlib.sha256(seed.encode()).digest() * (LAYER_BYTES // 32)
    config = json.dumps({"architecture": "amd64", "os": "linux", "owncr-seed": seed}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest(layer), "size": len(layer)}],
        }
    ).encode()
    return Image(manifest, {digest(config): config, digest(layer): layer})


def push(door: Door, repo: str, tag: str, image: Image, tap: Tap | None = None) -> str:
    """Push `image` as repo:tag (monolithic uploads); returns the digest the registry acknowledged."""
    for blob_digest, content in image.blobs.items():
        _, headers, _ = request(
            door, "POST", f"/v2/{repo}/blobs/uploads/", expect=(202,), what="POST upload", tap=tap
        )
        location = headers["location"]
        sep = "&" if "?" in location else "?"
        request(
            door,
            "PUT",
            f"{location}{sep}digest={blob_digest}",
            body=content,
            headers={"Content-Type": "application/octet-stream"},
            expect=(201,),
            what="PUT blob",
            tap=tap,
        )
    _, headers, _ = request(
        door,
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        body=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
        expect=(201,),
        what="PUT manifest",
        tap=tap,
    )
    return headers.get("docker-content-digest", "")


def pull(door: Door, repo: str, reference: str, *, blobs: bool = True, tap: Tap | None = None) -> str:
    """GET the manifest (and its blobs, digests checked); returns the manifest's digest."""
    _, _, manifest = request(
        door,
        "GET",
        f"/v2/{repo}/manifests/{reference}",
        headers={"Accept": OCI_MANIFEST},
        expect=(200,),
        what="GET manifest",
        tap=tap,
    )
    parsed = json.loads(manifest)
    if blobs:
        for ref in [parsed["config"], *parsed["layers"]]:
            _, _, content = request(
                door, "GET", f"/v2/{repo}/blobs/{ref['digest']}", expect=(200,), what="GET blob", tap=tap
            )
            if digest(content) != ref["digest"]:
                raise RequestFailed(f"blob {ref['digest']} came back as {digest(content)}")
    return digest(manifest)


@dataclass
class Load:
    """The three workers; `run` until `stop()` or the bounds, `records` as they complete."""

    registry: Door
    mirror: Door
    private_repo: str  # repo:tag of the seeded private image
    mirror_cached: str  # repo:tag the cache already holds
    mirror_fresh: Iterator[str]  # repo:tag the cache has never fetched, one per mirror pull
    push_repo: str
    max_seconds: float
    max_operations: int  # per worker
    recorder: Recorder = field(default_factory=Recorder)
    acknowledged: dict[str, str] = field(default_factory=dict)  # tag -> digest
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for name, op in (("private", self._private), ("mirror", self._mirror), ("push", self._push)):
            thread = threading.Thread(target=self._loop, args=(name, op), name=f"load-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT * 2)

    def _loop(self, name: str, op: Callable[[int], None]) -> None:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.max_operations):
            if self.stopping.is_set() or time.monotonic() > deadline:
                return
            # A failed request is recorded already; the next operation starts afresh.
            with contextlib.suppress(RequestFailed):
                op(i)
            self.stopping.wait(PAUSE)

    def _tap(self, worker: str) -> Tap:
        return Tap(worker, self.recorder.add)

    def _private(self, _: int) -> None:
        repo, tag = self.private_repo.split(":")
        pull(self.registry, repo, tag, tap=self._tap("private"))

    def _mirror(self, i: int) -> None:
        # Even operations pull what the cache holds; odd ones a tag it must fetch from upstream first.
        worker = "mirror" if i % 2 == 0 else "mirror-uncached"
        ref = self.mirror_cached if i % 2 == 0 else next(self.mirror_fresh)
        repo, tag = ref.split(":")
        pull(self.mirror, repo, tag, tap=self._tap(worker))

    def _push(self, i: int) -> None:
        tag = f"t{i}-{os.getpid()}"
        acked = push(
            self.registry, self.push_repo, tag, make_image(f"{tag}-{time.time()}"), tap=self._tap("push")
        )
        self.acknowledged[tag] = acked
