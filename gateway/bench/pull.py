"""Benchmark of the gateway against a registry reached directly, measured side by side in one run.

    python -m gateway.bench [--layer-mib 1024] [--requests 400] [--rounds 3] [--tag-seconds 25]

(Blob redirects on S3 storage: `python -m gateway.bench.redirect`; a fleet on the mirror:
`python -m gateway.bench.fleet`. Both use the stand-ins and steps defined here.)

Starts its own processes on loopback ports: a Docker Hub stand-in (a plain Distribution registry behind a
small proxy that delays every upstream request, as a distant Docker Hub would), the gateway (the local
runner: nginx, njs, private registry and cache), and a second plain registry for the direct numbers. Then:

- pushes and pulls one layer of `--layer-mib` MiB the way docker and containerd do (POST, one streamed
  PATCH, PUT ?digest; GET) through the registry door and directly, `--rounds` times, interleaved;
- times manifest HEAD and GET by tag (p50/p95 over `--requests` each, keep-alive like real clients);
- counts the requests the upstream received for private names (target: none at all);
- reads a cached upstream tag through the mirror door for `--tag-seconds` and counts how many reads had to
  wait for the (delayed) upstream: at most one per revalidation of the tag.

Prints a table of ratios with the targets the gateway is held to (throughput >= 0.95x direct both ways:
the gateway must not cost a push or pull more than 5%; manifest p50 <= 1.25x direct: a tag read may
cost at most a quarter more than asking the registry itself). A benchmark, not a test: it reports, it
does not assert (exit status 0 unless a step fails outright).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import math
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from gateway.bench.images import Image, Layer, MiB, build_image
from gateway.config import DOCKER_HUB, FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local import binaries
from gateway.local.plain_registry import DelayProxy, PlainRegistry, StartError
from gateway.local.ports import free_port
from gateway.local.runner import GatewayError, LocalGateway

CHUNK = MiB
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One registry endpoint as a client sees it."""

    label: str
    host: str  # 127.0.0.1:port
    auth: str | None = None  # "name:password" for Basic auth

    def connect(self) -> http.client.HTTPConnection:
        address, port = self.host.rsplit(":", 1)
        return http.client.HTTPConnection(address, int(port), timeout=300, blocksize=CHUNK)

    def headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        return headers


class BenchError(StartError):
    pass


def _expect(response: http.client.HTTPResponse, *statuses: int) -> None:
    if response.status not in statuses:
        body = response.read(2000).decode(errors="replace")
        raise BenchError(f"{response.status} {response.reason}: {body}")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def push_blob(target: Target, name: str, path: Path, digest: str) -> float:
    """Upload one blob as docker and containerd do (POST, one PATCH with the whole body, PUT ?digest);
    returns the seconds taken."""
    size = path.stat().st_size
    conn = target.connect()
    try:
        started = time.perf_counter()
        conn.request("POST", f"/v2/{name}/blobs/uploads/", headers=target.headers(**{"Content-Length": "0"}))
        response = conn.getresponse()
        _expect(response, 202)
        response.read()
        location = response.headers["Location"]
        conn.request(
            "PATCH",
            _path_of(location),
            body=_file_chunks(path),
            headers=target.headers(
                **{"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            ),
        )
        response = conn.getresponse()
        _expect(response, 202)
        response.read()
        location = _path_of(response.headers["Location"])
        separator = "&" if "?" in location else "?"
        conn.request(
            "PUT", f"{location}{separator}digest={digest}", headers=target.headers(**{"Content-Length": "0"})
        )
        response = conn.getresponse()
        _expect(response, 201)
        response.read()
        return time.perf_counter() - started
    finally:
        conn.close()


def _path_of(location: str) -> str:
    """Upload Locations may be absolute URLs or (relativeurls) paths: keep path and query."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def pull_blob(target: Target, name: str, digest: str, size: int) -> float:
    """Download one blob, hashing it as clients do; returns the seconds taken."""
    conn = target.connect()
    try:
        started = time.perf_counter()
        conn.request("GET", f"/v2/{name}/blobs/{digest}", headers=target.headers())
        read_verified(conn.getresponse(), digest, size, target.label)
        return time.perf_counter() - started
    finally:
        conn.close()


def read_verified(response: http.client.HTTPResponse, digest: str, size: int, label: str) -> None:
    """Read a 200 blob answer to the end, hashing it as clients do; raise unless it is the blob."""
    _expect(response, 200)
    sha = hashlib.sha256()
    received = 0
    while chunk := response.read(CHUNK):
        sha.update(chunk)
        received += len(chunk)
    if received != size or f"sha256:{sha.hexdigest()}" != digest:
        raise BenchError(f"{label}: pulled {received} bytes, digest sha256:{sha.hexdigest()}")


def put_manifest(target: Target, name: str, tag: str, image: Image) -> None:
    conn = target.connect()
    try:
        for blob in (image.config, *image.layers):
            conn.request("HEAD", f"/v2/{name}/blobs/{blob.digest}", headers=target.headers())
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                conn.close()
                push_blob(target, name, image.blob_path(blob), blob.digest)
        conn.request(
            "PUT",
            f"/v2/{name}/manifests/{tag}",
            body=image.manifest_bytes,
            headers=target.headers(**{"Content-Type": image.manifest.media_type}),
        )
        response = conn.getresponse()
        _expect(response, 201)
        response.read()
    finally:
        conn.close()


def manifest_latencies(target: Target, name: str, tag: str, method: str, count: int) -> list[float]:
    """`count` sequential manifest requests by tag on one keep-alive connection; seconds each."""
    conn = target.connect()
    headers = target.headers(Accept=MANIFEST_ACCEPT)
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request(method, f"/v2/{name}/manifests/{tag}", headers=headers)
            response = conn.getresponse()
            _expect(response, 200)
            response.read()
            samples.append(time.perf_counter() - started)
    finally:
        conn.close()
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def interleaved(rounds: int, steps: dict[str, Callable[[int], T]]) -> dict[str, list[T]]:
    """Run each step once per round, rotating the order (a, b, c; b, c, a; c, a, b; ...), so drift (other
    load on the machine, page cache, what the step before leaves behind) hits every side alike: over a
    multiple of len(steps) rounds each step runs at each position equally often (two steps alternate)."""
    results: dict[str, list[T]] = {label: [] for label in steps}
    labels = list(steps)
    for i in range(rounds):
        shift = i % len(labels)
        for label in labels[shift:] + labels[:shift]:
            results[label].append(steps[label](i))
    return results


# --- processes the benchmark starts ---------------------------------------------------------------------

BENCH_USER = "bench"
PRIVATE_NS = "team"
UPSTREAM_NAME = "library/bench-base"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Row:
    what: str
    direct: float
    gateway: float
    target: str  # ">= 0.95" or "<= 1.25": the ratio gateway/direct the gateway is held to

    @property
    def ratio(self) -> float:
        return self.gateway / self.direct

    @property
    def met(self) -> bool:
        bound = float(self.target.split()[1])
        return self.ratio >= bound if self.target.startswith(">=") else self.ratio <= bound


@dataclass(frozen=True)
class TagReads:
    reads: int
    waited: int  # reads that took at least the upstream's delay: they waited on the upstream
    upstream_requests: int  # manifest requests the upstream received meanwhile
    windows: int  # tag-cache validity windows the reads spanned: at most one revalidation each
    seconds: float


def measure_throughput(args: argparse.Namespace, direct: Target, gateway: Target, image: Image) -> list[Row]:
    layer = image.layers[0]
    path = image.blob_path(layer)
    mib = layer.size / MiB
    pushes = interleaved(
        args.rounds,
        {
            t.label: (lambda i, t=t: mib / push_blob(t, f"{PRIVATE_NS}/bench{i}", path, layer.digest))
            for t in (direct, gateway)
        },
    )
    pulls = interleaved(
        args.rounds,
        {
            t.label: (lambda i, t=t: mib / pull_blob(t, f"{PRIVATE_NS}/bench{i}", layer.digest, layer.size))
            for t in (direct, gateway)
        },
    )
    return [
        Row("blob push MiB/s", _median(pushes, "direct"), _median(pushes, "gateway"), ">= 0.95"),
        Row("blob pull MiB/s", _median(pulls, "direct"), _median(pulls, "gateway"), ">= 0.95"),
    ]


def _median(results: dict[str, list[float]], label: str) -> float:
    return statistics.median(results[label])


def measure_manifests(args: argparse.Namespace, direct: Target, gateway: Target, image: Image) -> list[Row]:
    """Manifest HEAD and GET by tag, in blocks of keep-alive requests alternating between the sides."""
    name = f"{PRIVATE_NS}/latency"
    for target in (direct, gateway):
        put_manifest(target, name, "1.0", image)
    block = max(1, min(50, args.requests // 4))
    rows = []
    for method in ("HEAD", "GET"):
        blocks = interleaved(
            max(1, args.requests // block),
            {
                t.label: (lambda _, t=t, m=method: manifest_latencies(t, name, "1.0", m, block))
                for t in (direct, gateway)
            },
        )
        ms = {label: [s * 1000 for samples in runs for s in samples] for label, runs in blocks.items()}
        for what, fraction in (("p50", 0.5), ("p95", 0.95)):
            rows.append(
                Row(
                    f"manifest {method} {what} ms",
                    percentile(ms["direct"], fraction),
                    percentile(ms["gateway"], fraction),
                    "<= 1.25",
                )
            )
    return rows


def measure_tag_reads(
    args: argparse.Namespace, mirror: Target, upstream: PlainRegistry, settings: GatewaySettings
) -> TagReads:
    """Read a cached upstream tag through the mirror door for `--tag-seconds`, one read every 50 ms.
    The upstream answers only after `--upstream-delay-ms`: a read that took that long waited on it."""
    name = UPSTREAM_NAME
    manifest_latencies(mirror, name, "1.0", "GET", 1)  # warm: the tag is cached from here
    since = len(upstream.requests())
    delay = args.upstream_delay_ms / 1000
    started = time.monotonic()
    samples: list[float] = []
    while time.monotonic() - started < args.tag_seconds:
        samples += manifest_latencies(mirror, name, "1.0", "GET", 1)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    asked = [r for r in upstream.requests()[since:] if r.path.startswith(f"/v2/{name}/manifests/")]
    return TagReads(
        reads=len(samples),
        waited=sum(s >= delay for s in samples),
        upstream_requests=len(asked),
        windows=math.ceil(seconds / settings.tag_cache_seconds),
        seconds=seconds,
    )


def _settings(work: Path, upstream_url: str, password: str) -> GatewaySettings:
    return GatewaySettings(
        namespaces=(PRIVATE_NS,),
        users=(User(BENCH_USER, password, pull=(PRIVATE_NS,), push=(PRIVATE_NS,)),),
        upstreams=(Upstream(DOCKER_HUB, upstream_url),),
        storage=FilesystemStorage(str(work / "gateway" / "storage")),
        http_secret=secrets.token_hex(32),
    )


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"owncr bench: building a {args.layer_mib} MiB layer under {work}", flush=True)
    big = build_image(work / "image", [Layer(args.layer_mib * MiB, 1)], tag="bench")
    small = build_image(work / "small", [Layer(64 * 1024, 2)], tag="1.0")
    password = secrets.token_urlsafe(16)
    with contextlib.ExitStack() as stack:
        upstream = PlainRegistry(work, "dockerhub").start()
        stack.callback(upstream.stop)
        direct_registry = PlainRegistry(work, "direct").start()
        stack.callback(direct_registry.stop)
        put_manifest(Target("seed", upstream.host), UPSTREAM_NAME, "1.0", small)
        delayed = DelayProxy(upstream.port, args.upstream_delay_ms / 1000)
        stack.callback(delayed.close)
        settings = _settings(work, delayed.url, password)
        gateway = LocalGateway(
            settings, data_dir=work / "gateway", registry_port=free_port(), mirror_port=free_port()
        )
        stack.enter_context(gateway)
        direct = Target("direct", direct_registry.host)
        through = Target("gateway", gateway.registry_url.removeprefix("http://"), f"{BENCH_USER}:{password}")
        mirror = Target("mirror", gateway.mirror_url.removeprefix("http://"))
        since = len(upstream.requests())

        print("owncr bench: blob push and pull", flush=True)
        rows = measure_throughput(args, direct, through, big)
        print("owncr bench: manifest HEAD and GET", flush=True)
        rows += measure_manifests(args, direct, through, small)
        private_upstream = len(upstream.requests_for(PRIVATE_NS, since))
        print(f"owncr bench: cached tag reads through the mirror for {args.tag_seconds:.0f}s", flush=True)
        tags = measure_tag_reads(args, mirror, upstream, settings)
    print(report(args, rows, private_upstream, tags, gateway.versions))


def report(
    args: argparse.Namespace,
    rows: list[Row],
    private_upstream: int,
    tags: TagReads,
    versions: binaries.Versions | None,
) -> str:
    lines = [
        "",
        f"owncr gateway vs direct registry (layer {args.layer_mib} MiB, {args.rounds} rounds, "
        f"{args.requests} manifest requests per method and side; {versions})",
        f"{'':24}{'direct':>10}{'gateway':>10}{'ratio':>9}  target",
    ]
    for row in rows:
        mark = "ok" if row.met else "MISSED"
        lines.append(
            f"{row.what:24}{row.direct:>10.2f}{row.gateway:>10.2f}{row.ratio:>8.2f}x  {row.target}x {mark}"
        )
    lines.append(
        f"upstream requests for private names: {private_upstream} (target 0) "
        + ("ok" if private_upstream == 0 else "MISSED")
    )
    met = tags.waited <= tags.windows
    lines.append(
        f"cached tag reads through the mirror: {tags.reads} in {tags.seconds:.0f}s, "
        f"{tags.waited} waited on the upstream ({args.upstream_delay_ms} ms away), "
        f"{tags.upstream_requests} upstream manifest requests, "
        f"{tags.windows} revalidation windows (target: waits <= windows) " + ("ok" if met else "MISSED")
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--layer-mib", type=int, default=1024, help="size of the pushed/pulled layer")
    parser.add_argument("--rounds", type=int, default=3, help="pushes and pulls per side (median taken)")
    parser.add_argument("--requests", type=int, default=400, help="manifest requests per method and side")
    parser.add_argument("--tag-seconds", type=float, default=25.0, help="how long to read a cached tag")
    parser.add_argument("--upstream-delay-ms", type=int, default=100, help="delay added to upstream requests")
    add_workdir(parser)
    return parser.parse_args(argv)


def add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=None, help="where to put images and data (temp dir)")


def command(run: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace) -> int:
    """A benchmark's exit status: `run` in a temporary work directory (removed after), 1 if a step failed."""
    with tempfile.TemporaryDirectory(prefix="owncr-bench-", dir=args.workdir) as tmp:
        try:
            run(args, Path(tmp))
        except (StartError, GatewayError) as e:
            print(f"owncr bench: failed: {e}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
