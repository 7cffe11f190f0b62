"""The gateway's metrics move for what really happens: a cold skopeo pull through the mirror door costs the
upstream one fetch per blob, a second pull is all nginx cache hits with nothing fetched, and an upstream that
rate limits or hangs shows as 429s or timeouts, requests it was spared, and a gauge that says so. The
metrics are valid Prometheus text (parsed by the Prometheus client's own parser), each registry's
Distribution metrics are relayed beside them, the doors do not serve them, and no request can add a label
value of its own. `python -m gateway status` prints the same figures as a table."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.bench.images import Image, Layer, MiB
from gateway.config import GatewaySettings
from gateway.upkeep.status import FETCHED, Figures, parse
from tests import ROOT
from tests.gateway.client_harness import GatewayProcess, Images, Launcher
from tests.gateway.fault_upstream import RETRY_AFTER, FaultUpstream
from tests.gateway.routing_fixtures import request

UPSTREAM_TIMEOUT = GatewaySettings.__dataclass_fields__["upstream_timeout_seconds"].default
NEVER_PULLED = "/v2/library/never-pulled/manifests/1.0"


class Node:
    """One gateway (run through its command line) whose only upstream is a fault switch before a hub."""

    def __init__(self, launch: Launcher, images: Images, name: str) -> None:
        self.hub = launch.distribution(f"{name}-hub")
        self.image: Image = images.get("metrics-app", [Layer(2 * MiB, 601), Layer(MiB, 602)])
        launch.seed(self.hub, self.image, "library/app:1.0")
        self.fault = FaultUpstream(self.hub.url).start()
        launch.on_close(self.fault.stop)
        self.gateway: GatewayProcess = launch.gateway({"docker.io": self.fault.url}, name=name)
        self.door = f"127.0.0.1:{self.gateway.mirror_port}"
        self.launch = launch

    def text(self, path: str = "/metrics") -> str:
        resp = request(self.gateway.metrics_url + path)
        assert resp.status == 200, (path, resp.status, resp.body[:300])
        return resp.body.decode()

    def figures(self) -> Figures:
        return Figures(parse(self.text()))

    def hub_blob_gets(self) -> int:
        """Blob GETs in the hub's own access log: what the upstream really served."""
        return sum(1 for r in self.hub.requests() if r.method == "GET" and "/blobs/" in r.path)

    def pull(self, into: str) -> None:
        pulled = self.launch.skopeo.pull(f"{self.door}/library/app:1.0", self.launch.workdir / into)
        assert pulled == self.image.manifest.digest


def blobs(f: Figures) -> tuple[float, float, float]:
    """(blobs asked on the doors, blobs fetched from the upstream, of the asked: nginx cache hits)."""
    return (
        f.total("owncr_mirror_requests_total", kind="blob"),
        f.total("owncr_upstream_requests_total", "2", **FETCHED),
        f.total("owncr_mirror_requests_total", kind="blob", cache="hit"),
    )


@pytest.fixture(scope="module")
def node(module_launch: Launcher, images: Images) -> Node:
    return Node(module_launch, images, "metrics")


def test_a_cold_pull_fetches_each_blob_once_and_a_warm_pull_is_all_cache_hits(node: Node) -> None:
    image_bytes = sum(layer.size for layer in node.image.layers)
    n_blobs = len(node.image.layers) + 1  # and the config
    before, hub_before = node.figures(), node.hub_blob_gets()
    node.pull("cold")
    cold = node.figures()
    asked, fetched, _ = (a - b for a, b in zip(blobs(cold), blobs(before), strict=True))
    assert asked >= n_blobs and fetched == n_blobs == node.hub_blob_gets() - hub_before, (asked, fetched)
    fetched_bytes = cold.total("owncr_upstream_received_bytes_total", upstream="docker.io")
    assert fetched_bytes - before.total("owncr_upstream_received_bytes_total") >= image_bytes
    served = cold.total("owncr_sent_bytes_total", door="mirror") - before.total(
        "owncr_sent_bytes_total", door="mirror"
    )
    assert served >= image_bytes
    # Distribution's own counters, relayed: the cache missed each blob once and fetched it.
    cache = Figures(parse(node.text("/metrics/cache-docker-io")))
    assert cache.total("registry_proxy_misses_total", type="blob") == n_blobs
    assert cache.total("registry_proxy_pulled_bytes_total", type="blob") >= image_bytes

    node.pull("warm")
    warm = node.figures()
    asked, fetched, hits = (a - b for a, b in zip(blobs(warm), blobs(cold), strict=True))
    assert asked >= n_blobs and fetched == 0 and hits >= n_blobs, (asked, fetched, hits)
    assert warm.total("owncr_upstream_received_bytes_total") - fetched_bytes < 64 * 1024  # a manifest at most
    sent = "owncr_sent_bytes_total"
    assert warm.total(sent, door="mirror") - cold.total(sent, door="mirror") >= image_bytes
    assert Figures(parse(node.text("/metrics/cache-docker-io"))).total("registry_proxy_misses_total") == (
        cache.total("registry_proxy_misses_total")
    )
    # Every request counted by door and status: a refusal too.
    refused = warm.total("owncr_requests_total", door="mirror", status="405")
    assert request(f"http://{node.door}/v2/library/app/blobs/uploads/", "POST").status == 405
    # Counted as its log line is written, which nginx does after sending the answer: a scrape on
    # another connection can come first, so look again for a moment.
    deadline = time.monotonic() + 5
    while node.figures().total("owncr_requests_total", door="mirror", status="405") == refused:
        assert time.monotonic() < deadline, "the refusal was never counted"
        time.sleep(0.05)
    assert node.figures().total("owncr_requests_total", door="mirror", status="405") == refused + 1


def test_the_metrics_are_valid_prometheus_text_with_each_family_declared_once(node: Node) -> None:
    text = node.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser drops a counter's _total from the family name.
    for name, kind in (("owncr_requests", "counter"), ("owncr_upstream_unavailable", "gauge")):
        assert families[name].type == kind
    assert sum(line.startswith("# TYPE ") for line in text.splitlines()) == len(families)
    for key in ("private", "cache-docker-io"):
        relayed = {f.name for f in text_string_to_metric_families(node.text(f"/metrics/{key}"))}
        assert "registry_http_requests" in relayed, key


def test_the_doors_do_not_serve_metrics_and_requests_cannot_make_up_labels(node: Node) -> None:
    assert request(f"http://{node.door}/metrics").status == 404
    registry = f"http://127.0.0.1:{node.gateway.registry_port}"
    assert request(f"{registry}/metrics").status in (401, 404)
    assert request(node.gateway.metrics_url + "/metrics/nope").status == 404
    assert request(node.gateway.metrics_url + "/metrics/../admin").status in (400, 404)
    for path in ('/v2/evil"x/manifests/1', "/v2/evil%7Bdoor%3D%22x%22%7D/manifests/1", "/evil/v2/"):
        request(f"http://{node.door}{path}", headers={"Host": 'evil"host'})
    text = node.text()
    assert "evil" not in text
    list(text_string_to_metric_families(text))  # still parses


def run_status(gateway: GatewayProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--data", str(gateway.data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def row(table: str, label: str) -> str:
    """The figures of the row named `label` (the name ends at two spaces or the line's end)."""
    (line,) = [line for line in table.splitlines() if re.match(rf"\s*{re.escape(label)}(\s\s|$)", line)]
    return line.strip().removeprefix(label).strip()


def test_status_prints_the_figures_as_a_table(node: Node) -> None:
    node.pull("for-status")
    out = run_status(node.gateway)
    f = node.figures()
    asked, fetched, _ = blobs(f)
    assert row(out, "blobs asked / fetched") == f"{asked:,.0f} / {fetched:,.0f}"
    assert int(row(out, "blob hit ratio").rstrip("%")) >= 50  # at least two pulls of one image, one cold
    assert row(out, "upstream docker.io") == "answering"
    assert row(out, "requests").split()[1] == f"{f.total('owncr_requests_total', door='mirror'):,.0f}"
    # The cache's storage holds the image; the private store has nothing pushed.
    cache_size = row(out, "cache docker.io")
    assert cache_size.endswith("MiB") and float(cache_size.split()[0]) >= 3.0, cache_size
    assert row(out, "private") == "0 B"


def test_status_of_a_data_directory_nothing_runs_in_fails_clearly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--data", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "start the data plane first" in done.stderr, done.stderr


@pytest.mark.parametrize("mode", ["429", "hang"])
def test_an_upstream_fault_shows_as_errors_spared_requests_and_a_gauge(
    launch: Launcher, images: Images, mode: str
) -> None:
    node = Node(launch, images, f"fault-{mode}")
    status, reason = ("429", "rate_limited") if mode == "429" else ("504", "down")
    before = node.figures()
    assert before.total("owncr_upstream_unavailable", reason=reason) == 0
    node.fault.set(mode)
    try:
        started = time.monotonic()
        for _ in range(3):
            assert request(f"http://{node.door}{NEVER_PULLED}", timeout=60).status == 503
        assert time.monotonic() - started < UPSTREAM_TIMEOUT + 5
        f = node.figures()
        assert (
            f.total("owncr_upstream_requests_total", status=status)
            - before.total("owncr_upstream_requests_total", status=status)
            >= 1
        )
        # Asked once, then left alone: the other requests were answered without it.
        assert f.total("owncr_upstream_spared_total", reason=reason) >= 2
        assert node.fault.count(mode) <= 2, node.fault.paths  # the tag, and at most its cache's ping
        assert f.total("owncr_upstream_unavailable", reason=reason) == 1
        retry = f.total("owncr_upstream_retry_after_seconds", upstream="docker.io")
        limit = (
            RETRY_AFTER
            if mode == "429"
            else GatewaySettings.__dataclass_fields__["upstream_down_seconds"].default
        )
        assert 1 <= retry <= limit
        words = "rate limiting" if mode == "429" else "not answering"
        assert row(run_status(node.gateway), "upstream docker.io").startswith(f"{words}: asked again in")
    finally:
        node.fault.set("pass")
