"""The production render, run: the exact files of `render_production` at their container paths, in a
private network and mount namespace where the Swarm service names resolve to loopback addresses of
their own (as each Swarm task has its own address), through /etc/hosts and, for nginx, which re-resolves
them while it runs, through a stand-in of Swarm's DNS server (swarm_dns.py). nginx runs the production
command, drain wrapper included; each registry
runs its production config with only its bind address overridden (REGISTRY_HTTP_ADDR), since the
registries here share one network namespace. Proves the hostname doors, the default server, PROXY
protocol and the production paths work together, not just `nginx -t`."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import ROOT

REGISTRY_HOST, MIRROR_HOST = "cr.example.org", "mirror.cr.example.org"
CLIENT_INSIDE, CLIENT_OUTSIDE = "203.0.113.9", "198.51.100.7"

NAMESPACE_SETUP = r"""
set -eu
ip link set lo up
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-work" /etc
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/cache
mkdir -p /var/cache/nginx  # the official nginx image has it
grep -q '^nginx:' /etc/passwd || echo 'nginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
grep -q '^nginx:' /etc/group || echo 'nginx:x:101:' >> /etc/group
exec "$@"
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_production_render_serves_both_doors_behind_a_proxy_protocol_load_balancer(tmp_path: Path) -> None:
    for d in ("etc-up", "etc-work"):
        (tmp_path / d).mkdir()
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SETUP, "sh",
            sys.executable, "-m", __name__, str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "W": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith("production run: all checks passed")


def _inside_namespace(work: Path) -> None:
    """Runs in the private namespaces (see the test); every process it starts is stopped at the end."""
    from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
    from gateway.local import binaries
    from gateway.local.plain_registry import PlainRegistry
    from gateway.names import NGINX_SERVICE, STORE_PREFIX
    from gateway.render.bundle import render_production
    from gateway.render.layout import GATEWAY_PORT, METRICS_PORT, NGINX_USER
    from tests.gateway import swarm_dns
    from tests.gateway.routing_fixtures import (
        ACCEPT,
        HTTP_SECRET,
        OCI_MANIFEST,
        Response,
        TinyImage,
        assert_oci_error,
        digest_of,
        request,
    )

    upstream = PlainRegistry(work, "upstream").start()
    procs: list[subprocess.Popen[bytes]] = []
    dns: swarm_dns.SwarmDns | None = None
    try:
        hub_image = TinyImage.make("hub image")
        hub_image.push(upstream.url, "library/alpine", "3")
        settings = GatewaySettings(
            namespaces=("acme",),
            users=(User("alice", "alice-password", push=("acme",)),),
            upstreams=(Upstream("docker.io", upstream.url),),
            storage=FilesystemStorage("/var/cache/owncr-storage"),
            http_secret=HTTP_SECRET,
            mirror_client_cidrs=("203.0.113.0/24",),
            trusted_proxy_cidrs=("127.0.0.1/32",),  # the "load balancer" is this process
            registry_host=REGISTRY_HOST,
            mirror_host=MIRROR_HOST,
        )
        bundle = render_production(settings)
        for f in bundle.files():
            Path(f.path).parent.mkdir(parents=True, exist_ok=True)
            Path(f.path).write_text(f.content)
        registries = [s for k, s in bundle.services.items() if k != "nginx"]
        addrs = {s.name: f"127.0.1.{i + 1}" for i, s in enumerate(registries)}
        with open("/etc/hosts", "a") as hosts:
            hosts.writelines(f"{addr} {name}\n" for name, addr in addrs.items())
            # The caches reach their upstreams through the gateway's egress servers, by its service name.
            hosts.write(f"127.0.0.1 {NGINX_SERVICE}\n")
        # Swarm's DNS, through which nginx re-resolves the registries' names (never from /etc/hosts).
        dns = swarm_dns.SwarmDns(addrs).start()
        # The whole production command: nginx under its drain wrapper (sh gateway/render/drain.sh ...
        # nginx ...), before the caches, which ask their upstream (through the egress) as they start.
        nginx_argv = list(bundle.services["nginx"].command)
        # The binary is named before its config (`nginx -c ...`); "nginx" also names the workers' user.
        binary = next(i for i, c in enumerate(nginx_argv) if c == "nginx" and nginx_argv[i + 1] == "-c")
        nginx_argv[binary] = binaries.default_nginx()
        procs.append(_start(nginx_argv, work / "nginx.log", None))
        _wait(lambda: _accepts(GATEWAY_PORT), "nginx")
        for service in registries:
            procs.append(_start_registry(service, addrs[service.name], work / f"{service.name}.log"))
        for service in registries:
            _wait(
                lambda s=service: request(f"http://{addrs[s.name]}:{s.port}/v2/").status == 200, service.name
            )

        base = f"http://127.0.0.1:{GATEWAY_PORT}"
        alice = ("alice", "alice-password")
        accept = {"Accept": ACCEPT}

        def via(host: str, client: str, path: str, **kw: Any) -> Response:
            """A request as the load balancer passes it on: PROXY header with the client, Host header."""
            return request(base + path, host=host, proxy_from=client, **kw)

        # The load balancer's health check by IP lands on the default server.
        assert via("10.0.0.5", CLIENT_OUTSIDE, "/healthz").status == 200
        assert_oci_error(via("10.0.0.5", CLIENT_OUTSIDE, "/v2/"), 404, "NOT_FOUND")
        # Registry door by hostname: login required, push and pull of a private image, from anywhere.
        assert_oci_error(via(REGISTRY_HOST, CLIENT_OUTSIDE, "/v2/"), 401, "UNAUTHORIZED")
        app = TinyImage.make("private app")
        app.push(base, "acme/app", "1", auth=alice, host=REGISTRY_HOST, proxy_from=CLIENT_OUTSIDE)
        got = via(REGISTRY_HOST, CLIENT_OUTSIDE, "/v2/acme/app/manifests/1", auth=alice, headers=accept)
        assert (got.status, got.headers["Docker-Content-Digest"]) == (200, app.digest)
        # A referrer: its subject's index is written under the store's lock, which nginx's workers (user
        # nginx, not root) take on the shared storage, in the directory the command prepared for them.
        note = json.loads(app.manifest) | {
            "artifactType": "application/vnd.owncr.test.note",
            "subject": {"mediaType": OCI_MANIFEST, "digest": app.digest, "size": len(app.manifest)},
        }
        body = json.dumps(note).encode()
        put = via(
            REGISTRY_HOST,
            CLIENT_OUTSIDE,
            f"/v2/acme/app/manifests/{digest_of(body)}",
            method="PUT",
            auth=alice,
            body=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert (put.status, put.headers.get("OCI-Subject")) == (201, app.digest), put.body
        store = Path(settings.storage.root) / STORE_PREFIX  # type: ignore[union-attr]
        assert store.stat().st_uid == pwd.getpwnam(NGINX_USER).pw_uid
        listed = via(REGISTRY_HOST, CLIENT_OUTSIDE, f"/v2/acme/app/referrers/{app.digest}", auth=alice)
        assert [d["digest"] for d in json.loads(listed.body)["manifests"]] == [digest_of(body)]
        # Mirror door by hostname: only for allowed real client addresses, never private names.
        hub = via(MIRROR_HOST, CLIENT_INSIDE, "/v2/library/alpine/manifests/3", headers=accept)
        assert (hub.status, hub.headers["Docker-Content-Digest"]) == (200, hub_image.digest)
        assert_oci_error(via(MIRROR_HOST, CLIENT_INSIDE, "/v2/acme/app/manifests/1"), 404, "MANIFEST_UNKNOWN")
        assert_oci_error(via(MIRROR_HOST, CLIENT_OUTSIDE, "/v2/"), 403, "DENIED")
        assert upstream.requests_for("acme") == []
        # The metrics port (never behind the load balancer: no PROXY header) counts what just happened,
        # and relays each registry's own metrics from its debug server by its service name.
        metrics = request(f"http://127.0.0.1:{METRICS_PORT}/metrics").body.decode()
        assert 'owncr_requests_total{door="mirror",status="200"}' in metrics, metrics
        for key in ("private", "cache-docker-io"):
            relayed = request(f"http://127.0.0.1:{METRICS_PORT}/metrics/{key}")
            assert relayed.status == 200 and b"registry_http_requests_total" in relayed.body, key
        _replica_lost_mid_read(work, bundle, addrs, dns, procs, via)
        print("production run: all checks passed")
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
        if dns is not None:
            dns.stop()
        upstream.stop()


def _replica_lost_mid_read(
    work: Path,
    bundle: Any,
    addrs: dict[str, str],
    dns: Any,
    procs: list[subprocess.Popen[bytes]],
    via: Any,
) -> None:
    """A private replica stops answering (its node lost without a reset) while reads wait on it, and
    Swarm's DNS drops its address meanwhile: nginx cannot retry such a read on the group's peers any
    more (they changed under it: "no live upstreams"), so the read gets its second chance as a fresh
    request (again.conf.j2) and the live replica answers it, after one bounded wait. Before: 503."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.names import PRIVATE_ANSWER_SECONDS, PRIVATE_KEY
    from tests.gateway.routing_fixtures import ACCEPT

    service = bundle.services[PRIVATE_KEY]
    second = "127.0.1.50"
    replica = _start_registry(service, second, work / "private-second.log")
    procs.append(replica)
    _wait(lambda: _accepts(service.port, second), "the second private replica")
    dns.names = {**dns.names, service.name: (addrs[service.name], second)}
    time.sleep(6)  # nginx re-resolves (valid=5s): both replicas are peers now

    def read(_: int) -> tuple[int, float]:
        start = time.monotonic()
        got = via(
            REGISTRY_HOST,
            CLIENT_OUTSIDE,
            "/v2/acme/app/manifests/1",
            auth=("alice", "alice-password"),
            headers={"Accept": ACCEPT},
        )
        return got.status, time.monotonic() - start

    with ThreadPoolExecutor(8) as pool:
        assert [s for s, _ in pool.map(read, range(8))] == [200] * 8  # both answer; connections pooled
        os.killpg(replica.pid, signal.SIGSTOP)  # the drain wrapper and the registry it runs
        try:
            reads = [pool.submit(read, i) for i in range(8)]
            time.sleep(2)
            dns.names = {**dns.names, service.name: addrs[service.name]}  # Swarm drops the lost task
            results = [r.result(timeout=4 * PRIVATE_ANSWER_SECONDS) for r in reads]
        finally:
            os.killpg(replica.pid, signal.SIGCONT)
    assert [s for s, _ in results] == [200] * 8, results
    waited = [t for _, t in results if t >= PRIVATE_ANSWER_SECONDS]
    assert waited, f"no read met the stopped replica: the test proves nothing ({results})"
    assert max(waited) < 3 * PRIVATE_ANSWER_SECONDS, results


def _start_registry(service: Any, address: str, log: Path) -> subprocess.Popen[bytes]:
    """A registry of the bundle, its production command and config on `address`: each registry is alone
    in its container in production, here each gets an address of its own."""
    from gateway.local import binaries
    from gateway.render.layout import DEBUG_PORT

    env = {
        **os.environ,
        "REGISTRY_HTTP_ADDR": f"{address}:{service.port}",
        "REGISTRY_HTTP_DEBUG_ADDR": f"{address}:{DEBUG_PORT}",
    }
    argv = [binaries.default_registry() if c == "registry" else c for c in service.command]
    return _start(argv, log, env)


def _start(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(check) and check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.1)


if __name__ == "__main__":
    _inside_namespace(Path(sys.argv[1]))
