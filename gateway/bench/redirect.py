"""Blob pulls on S3 storage, redirects on vs off vs straight from the bucket.

    python -m gateway.bench.redirect [--layer-mib 1024] [--rounds 3]

Starts moto's S3 server (a process of its own), two local gateways on it, one with `redirect` on and one
off (each its own bucket), pushes one `--layer-mib` layer through each, then pulls it `--rounds` times,
interleaved: through the registry door with redirects (nginx answers 307, the client follows to the
bucket), through the door without (nginx and the registry relay every byte), and straight from the S3
server with a presigned URL. Prints side by side:

- pull throughput, each way vs straight from the bucket (target with redirects: >= 0.95x);
- bytes that passed through nginx per GiB pulled (its access log: request + response sizes; target
  with redirects: < 1 MiB);
- CPU seconds nginx and the registries spent per GiB pulled (/proc: every process of each gateway).

moto holds objects in memory and serves them from Python: absolute MiB/s measure moto, not R2; the
ratios and the per-GiB figures are what the mode is for. Needs requirements-dev.txt (moto, boto3).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.bench.images import Blob, Layer, MiB, build_image
from gateway.bench.pull import (
    BENCH_USER,
    CHUNK,
    PRIVATE_NS,
    BenchError,
    Target,
    add_workdir,
    command,
    interleaved,
    push_blob,
    read_verified,
)
from gateway.config import DOCKER_HUB, GatewaySettings, S3Storage, Upstream, User
from gateway.local import binaries, procfs
from gateway.local.plain_registry import PlainRegistry, spawn_until_ready
from gateway.local.ports import free_port
from gateway.local.runner import LocalGateway

GiB = 1024 * MiB
# moto accepts any key; the bench's own, never a real one.
S3_ACCESS_KEY = "owncr-bench"
S3_SECRET_KEY = "owncr-bench-secret"  # noqa: S105
TARGET_RATIO = 0.95
TARGET_NGINX_BYTES_PER_GIB = MiB
REPO = f"{PRIVATE_NS}/s3bench"


class MotoProcess:
    """`python -m moto.server` on a loopback port, in its own session, its log in a file."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = work / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoProcess:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = spawn_until_ready(argv, self.log, self._answers, timeout, "moto's S3 server")
        return self

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self) -> Any:
        import boto3  # requirements-dev.txt, as moto itself

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
        )


def _fetch(url: str, digest: str, size: int, headers: dict[str, str] | None = None) -> None:
    """GET the blob at `url`, following one redirect as clients do (no credentials to the new host)."""
    for _ in range(2):
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300, blocksize=CHUNK)
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            if response.status != 307:
                read_verified(response, digest, size, parts.netloc)
                return
            response.read()
            url, headers = response.headers["Location"], None
        finally:
            conn.close()
    raise BenchError(f"{url}: more than one redirect")


def _cpu_seconds(gateway: LocalGateway) -> float:
    """User + system CPU of every process of the gateway (each child leads its own session: nginx's
    workers included)."""
    sessions = {p.pid for p in gateway.processes.values()}
    ticks = sum(int(f[11]) + int(f[12]) for _, _, f in procfs.stats() if int(f[3]) in sessions)
    return ticks / os.sysconf("SC_CLK_TCK")


def _nginx_log(gateway: LocalGateway, since: int) -> tuple[int, list[float], int]:
    """From nginx's access log after line `since`: bytes in + out of the requests, the seconds nginx took
    for each 307 it answered; and the line count now."""
    lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.strip()]
    requests = [e for e in lines[since:] if "uri" in e]
    moved = sum(int(e["bytes_in"]) + int(e["bytes_out"]) for e in requests)
    return moved, [float(e["seconds"]) for e in requests if e["status"] == 307], len(lines)


@dataclass(frozen=True)
class Side:
    label: str
    mib_s: list[float]  # pull throughput of each round
    nginx_bytes_per_gib: float | None = None
    cpu_s_per_gib: float | None = None
    redirect_ms: float | None = None  # median time nginx took to answer a 307

    @property
    def median(self) -> float:
        return statistics.median(self.mib_s)


def _settings(bucket: str, endpoint: str, redirect: bool, password: str, upstream: str) -> GatewaySettings:
    return GatewaySettings(
        namespaces=(PRIVATE_NS,),
        users=(User(BENCH_USER, password, pull=(PRIVATE_NS,), push=(PRIVATE_NS,)),),
        upstreams=(Upstream(DOCKER_HUB, upstream),),
        storage=S3Storage(
            bucket=bucket,
            endpoint=endpoint,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            region="us-east-1",
            redirect=redirect,
        ),
        http_secret=secrets.token_hex(32),
    )


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"owncr bench_redirect: building a {args.layer_mib} MiB layer under {work}", flush=True)
    image = build_image(work / "image", [Layer(args.layer_mib * MiB, 1)], tag="bench")
    layer = image.layers[0]
    password = secrets.token_urlsafe(16)
    with contextlib.ExitStack() as stack:
        moto = MotoProcess(work).start()
        stack.callback(moto.stop)
        s3 = moto.client()
        # A cache checks its upstream when it starts; this mode pulls private blobs only.
        upstream = PlainRegistry(work, "dockerhub").start()
        stack.callback(upstream.stop)
        gateways: dict[str, LocalGateway] = {}
        for label, redirect in (("redirects on", True), ("redirects off", False)):
            bucket = f"owncr-bench-{'on' if redirect else 'off'}"
            s3.create_bucket(Bucket=bucket)
            settings = _settings(bucket, moto.endpoint, redirect, password, upstream.url)
            gateway = LocalGateway(
                settings, data_dir=work / bucket, registry_port=free_port(), mirror_port=free_port()
            )
            stack.enter_context(gateway)
            gateways[label] = gateway
            target = Target(label, gateway.registry_url.removeprefix("http://"), f"{BENCH_USER}:{password}")
            print(f"owncr bench_redirect: pushing the layer through the gateway with {label}", flush=True)
            push_blob(target, REPO, image.blob_path(layer), layer.digest)
        key = f"private/docker/registry/v2/blobs/sha256/{layer.hex[:2]}/{layer.hex}/data"
        direct_url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "owncr-bench-on", "Key": key}, ExpiresIn=3600
        )
        auth = Target("", "", f"{BENCH_USER}:{password}").headers()
        steps = {
            "S3 direct": lambda _i: _timed(lambda: _fetch(direct_url, layer.digest, layer.size)),
            **{
                label: (
                    lambda _i, g=g: _timed(
                        lambda: _fetch(
                            f"{g.registry_url}/v2/{REPO}/blobs/{layer.digest}", layer.digest, layer.size, auth
                        )
                    )
                )
                for label, g in gateways.items()
            },
        }
        before = {label: (_cpu_seconds(g), _nginx_log(g, 0)[2]) for label, g in gateways.items()}
        print(f"owncr bench_redirect: pulling {args.rounds} x 3 ways, interleaved", flush=True)
        seconds = interleaved(args.rounds, steps)
        gib = args.rounds * layer.size / GiB
        mib = layer.size / MiB
        sides = [Side("S3 direct", [mib / t for t in seconds["S3 direct"]])]
        for label, g in gateways.items():
            cpu0, line0 = before[label]
            moved, redirects, _ = _nginx_log(g, line0)
            sides.append(
                Side(
                    label,
                    [mib / t for t in seconds[label]],
                    moved / gib,
                    (_cpu_seconds(g) - cpu0) / gib,
                    statistics.median(redirects) * 1000 if redirects else None,
                )
            )
        versions = next(iter(gateways.values())).versions
    print(report(args, layer, sides, versions))


def _timed(step: Any) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def report(
    args: argparse.Namespace, layer: Blob, sides: list[Side], versions: binaries.Versions | None
) -> str:
    direct, on, off = sides
    ok = on.median / direct.median >= TARGET_RATIO
    small = on.nginx_bytes_per_gib is not None and on.nginx_bytes_per_gib < TARGET_NGINX_BYTES_PER_GIB
    assert on.nginx_bytes_per_gib is not None and off.nginx_bytes_per_gib is not None
    assert on.cpu_s_per_gib is not None and off.cpu_s_per_gib is not None
    return "\n".join(
        [
            "",
            f"owncr gateway on S3 storage (moto), blob pulls: layer {layer.size // MiB} MiB, "
            f"{args.rounds} rounds per side, interleaved; {versions}",
            f"{'':38}{'redirects on':>14}{'redirects off':>15}",
            f"{'pull MiB/s through the registry door':38}{on.median:>14.1f}{off.median:>15.1f}  (median)",
            f"{'pull MiB/s straight from the S3 server':38}{direct.median:>14.1f}{direct.median:>15.1f}",
            f"{'ratio door / S3':38}{on.median / direct.median:>13.3f}x{off.median / direct.median:>14.3f}x"
            "  target on: >= 0.95x " + ("ok" if ok else "MISSED"),
            f"{'bytes through nginx per GiB pulled':38}{_size(on.nginx_bytes_per_gib):>14}"
            f"{_size(off.nginx_bytes_per_gib):>15}  target on: < 1 MiB " + ("ok" if small else "MISSED"),
            f"{'CPU s nginx + registries per GiB':38}{on.cpu_s_per_gib:>14.3f}{off.cpu_s_per_gib:>15.3f}",
            f"{'307 answered by nginx in (median)':38}{on.redirect_ms or 0:>11.1f} ms{'-':>15}",
            "pull MiB/s of each round, in order: "
            + "; ".join(f"{s.label} {' '.join(f'{v:.0f}' for v in s.mib_s)}" for s in sides),
        ]
    )


def _size(value: float) -> str:
    return f"{value / 1024:.1f} KiB" if value < MiB else f"{value / MiB:.0f} MiB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.redirect", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--layer-mib", type=int, default=1024, help="size of the pulled layer")
    parser.add_argument("--rounds", type=int, default=3, help="pulls per way (interleaved)")
    add_workdir(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
