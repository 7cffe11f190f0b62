"""Distribution v3.1.1 (what registry:3.1.1 runs) reads every key owncr renders, and the 3.x behaviour
owncr relies on works: `proxy.ttl: 0s` turns the proxy's expiry scheduler off (maintenance evicts by
last pull instead, gateway/upkeep/eviction.py), and a liveness answer `/` that a storage outage cannot
turn into 503 with the storage health check off.

Distribution parses config.yml leniently (gopkg.in/yaml.v2 `Unmarshal`, configuration/parser.go), so a
misspelt or removed key is silently ignored. The first test therefore checks every rendered key against
the source of the exact module version that `scripts/install-tools` built, in Go's module cache.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import FilesystemStorage, GatewaySettings, S3Storage, Upstream, User
from gateway.local import binaries
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_port, free_ports
from gateway.local.runner import LocalGateway
from gateway.render.registry_config import cache_config, private_config
from tests.gateway.routing_fixtures import HTTP_SECRET, TinyImage, digest_of, request
from tests.gateway.test_render import (  # production-shaped settings: R2 storage, an upstream token
    S3,
    SETTINGS,
)

DISTRIBUTION = "github.com/distribution/distribution/v3"
GO = shutil.which("/usr/local/go/bin/go") or "go"  # as scripts/install-tools finds it


@cache
def source_dir() -> Path:
    """The module source of the Distribution version that runs, from Go's module cache."""
    version = binaries.distribution_version(binaries.default_registry())
    done = subprocess.run(
        [GO, "mod", "download", "-json", f"{DISTRIBUTION}@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return Path(json.loads(done.stdout)["Dir"])


def _text(*relative: str) -> str:
    root = source_dir()
    files = [p for r in relative for p in sorted((root / r).glob("*.go")) if not p.name.endswith("_test.go")]
    assert files, relative
    return "\n".join(p.read_text() for p in files)


# Where Distribution reads each part of config.yml (paths in its module).
STORAGE_DRIVERS = {"s3": "registry/storage/driver/s3-aws", "filesystem": "registry/storage/driver/filesystem"}
STORAGE_SECTIONS = "registry/handlers"  # storage.delete/cache/redirect/maintenance: app.go
FREE_FORM = {("http", "headers")}  # header names, not configuration keys


def key_paths(config: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key's path, depth first (a section before its keys)."""
    for key, value in config.items():
        path: tuple[str, ...] = (*prefix, key)
        yield path
        if isinstance(value, dict) and path not in FREE_FORM:
            yield from key_paths(value, path)


def unread_keys(config: dict[str, Any]) -> list[str]:
    """Keys of a rendered config.yml that Distribution's source never names where it reads that part."""
    configuration = _text("configuration")
    unread = []
    for path in key_paths(config):
        key = path[-1]
        storage_part = path[1] if path[0] == "storage" and len(path) >= 2 else None
        if storage_part in STORAGE_DRIVERS:
            # The driver name is registered by its factory; its parameters are read by name.
            where = _text(STORAGE_DRIVERS[storage_part])
            registered = rf'Register\("{key}"|driverName\s*=\s*"{key}"'
            found = re.search(registered, where) is not None if len(path) == 2 else f'"{key}"' in where
        elif storage_part is not None:
            found = f'"{key}"' in _text(STORAGE_SECTIONS)
        else:
            found = re.search(rf'yaml:"{re.escape(key)}[,"]', configuration) is not None
        if not found:
            unread.append(".".join(path))
    return unread


@pytest.mark.parametrize("storage", [S3, FilesystemStorage("/data")], ids=["s3", "filesystem"])
def test_every_rendered_key_is_read_by_the_distribution_that_runs(
    storage: S3Storage | FilesystemStorage,
) -> None:
    settings = replace(SETTINGS, storage=storage)
    configs = [
        private_config(settings, ":5000", debug_addr=":5001"),
        # the garbage collection's window
        private_config(settings, ":5000", debug_addr=":5001", read_only=True),
        cache_config(settings, settings.docker_hub, ":5000", "http://127.0.0.1:8100", debug_addr=":5001"),
    ]
    for config in configs:
        assert unread_keys(config) == []
    # The check can fail: a misspelt key at each level is reported.
    broken = private_config(settings, ":5000", debug_addr=":5001")
    broken["http"]["relativeurl"] = True
    broken["storage"]["redirect"]["disabled"] = True
    broken["storage"][next(iter(broken["storage"]))]["rootdir"] = "/x"
    broken["health"]["storagedriver"]["enable"] = False
    assert sorted(unread_keys(broken)) == sorted(
        [
            "http.relativeurl",
            f"storage.{next(iter(broken['storage']))}.rootdir",
            "storage.redirect.disabled",
            "health.storagedriver.enable",
        ]
    )


def _start_registry(tmp_path: Path, config: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "registry.log").open("ab")
    try:
        return subprocess.Popen(
            [binaries.default_registry(), "serve", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def _liveness(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("health_check", [False, True], ids=["as-rendered", "control-with-check-on"])
def test_liveness_survives_a_storage_outage_with_the_health_check_off(
    tmp_path: Path, health_check: bool
) -> None:
    """Storage that never answers (a closed port as the S3 endpoint): as rendered, `/` stays 200, so
    Swarm's health check cannot kill every replica over a storage hiccup. With the check on, the same
    registry answers 503 within seconds: the rendered key is what makes the difference."""
    dead = replace(S3, endpoint=f"http://127.0.0.1:{free_port()}")
    port = free_port()
    config = private_config(
        replace(SETTINGS, storage=dead), f"127.0.0.1:{port}", debug_addr=f"127.0.0.1:{free_port()}"
    )
    if health_check:
        config["health"]["storagedriver"] = {"enabled": True, "interval": "1s", "threshold": 1}
    proc = _start_registry(tmp_path, config, port)
    try:
        statuses = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and proc.poll() is None:
            statuses.append(_liveness(port))
            time.sleep(0.25)
        log = (tmp_path / "registry.log").read_text(errors="replace")[-1500:]
        assert proc.poll() is None, log
        answered = [s for s in statuses if s is not None]
        assert len(answered) >= 10, (statuses, log)
        if health_check:
            assert answered[-1] == 503, (statuses, log)
        else:
            assert set(answered) == {200}, (statuses, log)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_caches_run_without_the_expiry_scheduler(tmp_path: Path) -> None:
    """`proxy.ttl: 0s` (registry/proxy/proxyregistry.go: a TTL <= 0 never expires): a cache keeps what
    it fetched, however short `cache_ttl` is, and writes no `scheduler-state.json`, the file each process
    would rewrite from its own memory (with a cache per node on one root they would overwrite each
    other's). With a TTL the scheduler saves that file within seconds of the first fetch."""
    upstream = PlainRegistry(tmp_path, "upstream").start()
    try:
        image = TinyImage.make("kept")
        image.push(upstream.url, "library/kept", "1")
        settings = GatewaySettings(
            namespaces=("acme",),
            users=(User("alice", "alice-password", push=("acme",)),),
            upstreams=(Upstream("docker.io", upstream.url),),
            storage=FilesystemStorage(str(tmp_path / "storage")),
            http_secret=HTTP_SECRET,
            cache_ttl="1s",  # maintenance's business now, not the cache's
        )
        reg_port, mir_port = free_ports(2)
        gateway = LocalGateway(
            settings, data_dir=tmp_path / "gw", registry_port=reg_port, mirror_port=mir_port
        )
        with gateway as gw:
            layer = digest_of(image.layer)
            blob = f"/v2/library/kept/blobs/{layer}"
            assert request(gw.mirror_url + blob).body == image.layer
            root = tmp_path / "storage" / "cache" / "docker.io"
            data = root / "docker" / "registry" / "v2" / "blobs" / "sha256" / layer[7:9] / layer[7:] / "data"
            _wait_for(lambda: data.exists(), 15, "the cache to store the blob")
            time.sleep(8)  # the scheduler would have saved its state (every 5 s) and expired the blob
            assert data.exists()
            assert not (root / "scheduler-state.json").exists()
            before = len(upstream.requests_for("library/kept"))
            assert request(gw.mirror_url + blob, headers={"Range": "bytes=0-"}).status in (200, 206)
            assert len(upstream.requests_for("library/kept")) == before  # served from the cache's storage
    finally:
        upstream.stop()


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
