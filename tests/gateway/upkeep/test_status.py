"""gateway/upkeep/status.py on made-up samples: the Prometheus text it parses (Distribution's too), the sums
it takes, and how the table reads an upstream's state. The real figures: tests/gateway/test_metrics.py."""

from __future__ import annotations

import re

from gateway.upkeep.status import FETCHED, Figures, parse, report

TEXT = """\
# HELP owncr_requests_total Requests answered.
# TYPE owncr_requests_total counter
owncr_requests_total{door="mirror",status="200"} 7
owncr_requests_total{door="mirror",status="503"} 2
owncr_requests_total{door="mirror",status="404"} 1
owncr_mirror_requests_total{upstream="docker.io",kind="blob",cache="hit"} 3
owncr_mirror_requests_total{upstream="docker.io",kind="blob",cache="miss"} 1
owncr_upstream_requests_total{upstream="docker.io",kind="blob",method="GET",status="307"} 1
owncr_upstream_requests_total{upstream="docker.io",kind="download",method="GET",status="200"} 1
owncr_upstream_requests_total{upstream="docker.io",kind="blob",method="HEAD",status="200"} 1
owncr_upstream_requests_total{upstream="docker.io",kind="manifest",method="GET",status="429"} 1
owncr_upstream_unavailable{upstream="docker.io",reason="rate_limited"} 1
owncr_upstream_unavailable{upstream="docker.io",reason="down"} 0
owncr_upstream_retry_after_seconds{upstream="docker.io"} 30
registry_proxy_pulled_bytes_total{type="blob"} 1.050389e+06
go_info{version="go1.26 \\"x\\""} 1 1700000000000
"""


def test_parse_reads_labels_values_and_skips_comments() -> None:
    samples = parse(TEXT)
    assert len(samples) == 14
    assert samples[-2].value == 1050389.0
    assert samples[-1].labels == {"version": 'go1.26 \\"x\\"'} and samples[-1].value == 1
    assert parse("# only a comment\n\nnot a sample line at all\n") == []


def test_sums_by_label_and_status_class() -> None:
    f = Figures(parse(TEXT))
    assert f.total("owncr_requests_total", door="mirror") == 10
    assert f.total("owncr_requests_total", "5", door="mirror") == 2
    assert f.total("owncr_requests_total", "4") == 1
    # A blob redirected to a CDN is fetched once (its download); the redirect and a HEAD are not fetches.
    assert f.total("owncr_upstream_requests_total", "2", **FETCHED) == 1
    assert f.total("owncr_requests_total", door="registry") == 0
    assert f.upstreams() == ["docker.io"]


def test_the_table_says_the_upstream_is_rate_limiting() -> None:
    out = report(Figures(parse(TEXT)), {"private": 0, "cache docker.io": 3 << 20})
    lines = {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines() if line.strip()}
    assert lines["upstream docker.io"].endswith(
        "rate limiting: asked again in 30 s (answered from storage meanwhile)"
    )
    assert lines["blob hit ratio"].endswith("75%")
    assert lines["rate limited (429)"].endswith(" 1")
    assert lines["cache docker.io"].endswith("3.0 MiB")
    healthy = TEXT.replace('reason="rate_limited"} 1', 'reason="rate_limited"} 0')
    assert re.search(r"^upstream docker\.io\s+answering$", report(Figures(parse(healthy)), None), re.M)
    assert "storage used" not in report(Figures(parse(healthy)), None)
