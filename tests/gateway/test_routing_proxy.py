"""The mirror door behind a load balancer: the client address comes from the PROXY protocol header,
believed only from the trusted range; the mirror's CIDR check uses that address."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest

from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_ports
from gateway.local.runner import LocalGateway
from tests.gateway.routing_fixtures import HTTP_SECRET, assert_oci_error, request

# The "load balancer" is 127.0.0.1; clients allowed on the mirror are 10.0.0.0/8, as a VPC would be.
LB = "127.0.0.1"
INSIDE, OUTSIDE = "10.1.2.3", "192.0.2.7"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    work = tmp_path_factory.mktemp("proxied")
    # Distribution's proxy mode contacts its upstream at startup (and exits if it cannot).
    upstream = PlainRegistry(work, "upstream").start()
    settings = GatewaySettings(
        namespaces=("acme",),
        users=(User("alice", "alice-password", push=("acme",)),),
        upstreams=(Upstream("docker.io", upstream.url),),
        storage=FilesystemStorage(str(work / "storage")),
        http_secret=HTTP_SECRET,
        mirror_client_cidrs=("10.0.0.0/8",),
        trusted_proxy_cidrs=(f"{LB}/32",),
    )
    reg_port, mir_port = free_ports(2)
    try:
        with LocalGateway(settings, data_dir=work / "gw", registry_port=reg_port, mirror_port=mir_port) as gw:
            yield gw
    finally:
        upstream.stop()


def test_client_inside_the_cidrs_via_the_trusted_proxy_is_served(gateway: LocalGateway) -> None:
    resp = request(f"{gateway.mirror_url}/v2/", source=LB, proxy_from=INSIDE)
    assert (resp.status, resp.json()) == (200, {})
    assert request(f"{gateway.mirror_url}/healthz", source=LB, proxy_from=OUTSIDE).status == 200


def test_client_outside_the_cidrs_is_refused_although_the_proxy_is_inside(gateway: LocalGateway) -> None:
    # The TCP peer (127.0.0.1) would not be allowed either; the real client address decides.
    error = assert_oci_error(
        request(f"{gateway.mirror_url}/v2/", source=LB, proxy_from=OUTSIDE), 403, "DENIED"
    )
    assert OUTSIDE in str(error["message"])


def test_untrusted_source_cannot_spoof_an_allowed_address(gateway: LocalGateway) -> None:
    # 127.0.0.2 is not the load balancer: its PROXY header is ignored and its own address is checked.
    error = assert_oci_error(
        request(f"{gateway.mirror_url}/v2/", source="127.0.0.2", proxy_from=INSIDE), 403, "DENIED"
    )
    assert "127.0.0.2" in str(error["message"])


def test_requests_without_a_proxy_header_are_dropped(gateway: LocalGateway) -> None:
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        request(f"{gateway.mirror_url}/v2/", source=LB)


def test_registry_door_logs_the_real_client_address(gateway: LocalGateway) -> None:
    assert_oci_error(
        request(f"{gateway.registry_url}/v2/", source=LB, proxy_from=OUTSIDE), 401, "UNAUTHORIZED"
    )
    resp = request(
        f"{gateway.registry_url}/v2/", source=LB, proxy_from=OUTSIDE, auth=("alice", "alice-password")
    )
    assert resp.status == 200
    time.sleep(0.2)  # nginx logs after the response has gone out
    entries = [json.loads(line) for line in gateway.access_log.read_text().splitlines()]
    assert OUTSIDE in {e.get("client") for e in entries}
    # The login limiter counts per real client address, not per load balancer.
    assert OUTSIDE in {e.get("password_check") for e in entries}
