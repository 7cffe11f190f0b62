"""A fleet pulling one image through the mirror at once: what it costs the upstream, and how long the last
machine waits, side by side with Distribution's own pull-through cache.

    python -m gateway.bench.fleet [--clients 1,10,50,100] [--layers-mib 20,20,10] [--upstream-delay-ms 20]

Starts a Docker Hub stand-in (a plain Distribution registry behind a proxy that delays every request, as a
distant Docker Hub would), the gateway (the local runner: nginx and its egress, the cache) and, for
comparison, a bare Distribution 3.1.1 configured as a pull-through cache of the same stand-in (what the
mirror would be without the gateway in front). For each fleet size N and each side it seeds a new image
nobody pulled before, then N clients pull it at once the way docker does (the tag's manifest, then the
config and every layer, each blob hashed as it arrives): the cold pull; then N clients pull it again: the
warm pull. It counts the requests the upstream's own access log received meanwhile, the blob bytes those
GETs carried, and the time from the start to the last client's last byte, against one client alone.

A benchmark, not a test: it reports, it does not assert (exit status 0 unless a step fails outright).
Every client request has a 300 s timeout; a client that fails is counted, not retried.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway.bench.images import Image, Layer, MiB, build_image
from gateway.bench.pull import (
    BenchError,
    Target,
    add_workdir,
    command,
    put_manifest,
    read_verified,
)
from gateway.config import DOCKER_HUB, FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local import binaries
from gateway.local.plain_registry import DelayProxy, PlainRegistry
from gateway.local.ports import free_port
from gateway.local.runner import LocalGateway

# What docker 28 asks a tag for (moby distribution/pull_v2.go); the stand-in answers the OCI manifest.
PULL_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)
MIRROR = "owncr mirror door"
BARE = "Distribution alone"


@dataclass(frozen=True)
class Fleet:
    """One fleet pull: `clients` machines pulling one image at once."""

    side: str
    warm: bool
    clients: int
    failed: int
    upstream_requests: int  # every request the upstream's access log received
    upstream_blob_gets: int
    upstream_blob_mib: float  # what those GETs carried (each blob's size)
    seconds: float  # start to the last client's last byte


def pull(target: Target, name: str, image: Image) -> None:
    """One machine's pull, as docker does it: manifest by tag, then config and layers (verified)."""
    conn = target.connect()
    try:
        conn.request("GET", f"/v2/{name}/manifests/{image.tag}", headers=target.headers(Accept=PULL_ACCEPT))
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"{target.label}: manifest {response.status}: {body[:300]!r}")
        manifest = json.loads(body)
        for blob in (manifest["config"], *manifest["layers"]):
            conn.request("GET", f"/v2/{name}/blobs/{blob['digest']}", headers=target.headers())
            read_verified(conn.getresponse(), blob["digest"], blob["size"], target.label)
    finally:
        conn.close()


def fleet_pull(target: Target, name: str, image: Image, clients: int) -> tuple[int, float]:
    """`clients` pulls started together (a barrier); returns (failed, seconds to the last one's end)."""
    start = threading.Barrier(clients + 1)

    def one(_: int) -> bool:
        start.wait(60)
        try:
            pull(target, name, image)
        except (BenchError, OSError) as e:
            print(f"owncr bench_fleet: a client failed: {e}", file=sys.stderr, flush=True)
            return False
        return True

    with ThreadPoolExecutor(clients) as pool:
        results = [pool.submit(one, i) for i in range(clients)]
        start.wait(60)
        started = time.perf_counter()
        ok = [r.result() for r in results]
        seconds = time.perf_counter() - started
    return ok.count(False), seconds


def measure(
    side: str, target: Target, upstream: PlainRegistry, image: Image, name: str, clients: int
) -> list[Fleet]:
    sizes = {b.digest: b.size for b in (image.config, *image.layers)}
    rows = []
    for warm in (False, True):
        since = len(upstream.requests())
        failed, seconds = fleet_pull(target, name, image, clients)
        asked = upstream.requests()[since:]
        blob_gets = [r for r in asked if r.method == "GET" and "/blobs/" in r.path and r.status == 200]
        rows.append(
            Fleet(
                side=side,
                warm=warm,
                clients=clients,
                failed=failed,
                upstream_requests=len(asked),
                upstream_blob_gets=len(blob_gets),
                upstream_blob_mib=sum(sizes.get(r.path.rsplit("/", 1)[1], 0) for r in blob_gets) / MiB,
                seconds=seconds,
            )
        )
    return rows


def _settings(work: Path, upstream_url: str) -> GatewaySettings:
    return GatewaySettings(
        namespaces=("team",),
        users=(User("bench", secrets.token_urlsafe(16), push=("team",)),),
        upstreams=(Upstream(DOCKER_HUB, upstream_url),),
        storage=FilesystemStorage(str(work / "gateway" / "storage")),
        http_secret=secrets.token_hex(32),
    )


def run(args: argparse.Namespace, work: Path) -> None:
    layers = [int(m) for m in args.layers_mib.split(",")]
    fleets = [int(n) for n in args.clients.split(",")]
    with contextlib.ExitStack() as stack:
        hub = PlainRegistry(work, "dockerhub").start()
        stack.callback(hub.stop)
        delayed = DelayProxy(hub.port, args.upstream_delay_ms / 1000)
        stack.callback(delayed.close)
        gateway = LocalGateway(
            _settings(work, delayed.url), data_dir=work / "gateway", registry_port=free_port(),
            mirror_port=free_port(),
        )  # fmt: skip
        stack.enter_context(gateway)
        bare = PlainRegistry(work, "distribution-proxy", remote_url=delayed.url).start()
        stack.callback(bare.stop)
        sides = {
            MIRROR: Target(MIRROR, gateway.mirror_url.removeprefix("http://")),
            BARE: Target(BARE, bare.host),
        }
        rows: list[Fleet] = []
        image_mib = 0.0
        for i, clients in enumerate(fleets):
            for j, (side, target) in enumerate(sides.items()):
                # A new image per fleet and side: every cold pull is the first pull of that image.
                seed = 1000 * (i * len(sides) + j + 1)
                image = build_image(
                    work / "images" / f"{i}-{j}",
                    [Layer(m * MiB, seed + k) for k, m in enumerate(layers)],
                    tag="1.0",
                )
                image_mib = sum(b.size for b in (image.config, *image.layers)) / MiB
                name = f"library/fleet{i}-{j}"
                put_manifest(Target("seed", hub.host), name, image.tag, image)
                print(f"owncr bench_fleet: {side}: {clients} clients, cold then warm", flush=True)
                rows += measure(side, target, hub, image, name, clients)
    print(report(args, rows, image_mib, gateway.versions))


def report(
    args: argparse.Namespace, rows: list[Fleet], image_mib: float, versions: binaries.Versions | None
) -> str:
    single = {(r.side, r.warm): r.seconds for r in rows if r.clients == 1}
    lines = [
        "",
        f"owncr fleet pulls: one image of {image_mib:.1f} MiB ({args.layers_mib} MiB layers), upstream "
        f"{args.upstream_delay_ms} ms away; {versions}",
        f"{'':20}{'':6}{'clients':>8}{'failed':>7}{'upstream req':>13}{'blob GETs':>10}{'MiB':>8}"
        f"{'x image':>8}{'last s':>8}{'vs 1':>7}",
    ]
    for r in rows:
        alone = single.get((r.side, r.warm))
        vs = f"{r.seconds / alone:>6.1f}x" if alone else f"{'':>7}"
        lines.append(
            f"{r.side:20}{'warm' if r.warm else 'cold':6}{r.clients:>8}{r.failed:>7}{r.upstream_requests:>13}"
            f"{r.upstream_blob_gets:>10}{r.upstream_blob_mib:>8.1f}{r.upstream_blob_mib / image_mib:>7.1f}x"
            f"{r.seconds:>8.2f}{vs}"
        )
    lines.append(
        "upstream req: every request the upstream logged (token, manifest, blob; HEAD and GET); blob GETs "
        "and MiB: what it sent in blobs; x image: that over the image's size (1.0x: one fetch per blob)"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.fleet", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--clients", default="1,10,50,100", help="fleet sizes, comma-separated")
    parser.add_argument("--layers-mib", default="20,20,10", help="the image's layer sizes in MiB")
    parser.add_argument("--upstream-delay-ms", type=int, default=20, help="delay added to upstream requests")
    add_workdir(parser)
    args = parser.parse_args(argv)
    for flag, value in (("--clients", args.clients), ("--layers-mib", args.layers_mib)):
        if not all(part.isdigit() and int(part) >= 1 for part in value.split(",")):
            parser.error(f"{flag} {value!r}: comma-separated whole numbers of at least 1, e.g. 1,10,50")
    return args


def main(argv: list[str] | None = None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
