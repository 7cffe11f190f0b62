"""Generated requests through the real gateway (nginx + njs, registries) compared with the routing model.

Seeded and bounded: REQUESTS requests (names near the namespace boundaries, encodings, dot segments,
every method, mount queries, form bodies, users with different rights and no or wrong logins, clients
inside and outside the mirror's CIDRs, both doors), each checked against routing_model.py: the route
router.js chose (from the access log) and, where the gateway answers itself, the status and OCI code.
A failure prints the requests that disagree. Override with OWNCR_PROPERTY_SEED / _REQUESTS.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_ports
from gateway.local.runner import LocalGateway
from tests.gateway import routing_model
from tests.gateway.routing_fixtures import HTTP_SECRET, TinyImage, basic, digest_of, request

SEED = int(os.environ.get("OWNCR_PROPERTY_SEED", "20261129"))
REQUESTS = int(os.environ.get("OWNCR_PROPERTY_REQUESTS", "3000"))
TIME_LIMIT = 150.0  # seconds for sending them all: a hung gateway fails the test instead of CI

USERS = {
    "alice": ("alice-password", ("acme", "team/ops"), ()),  # (password, push, pull)
    "bob": ("bob-password", (), ("acme",)),
    "carol": ("carol-password", (), ("team/ops",)),
    "dave": ("dave-password", ("acme",), ()),
}
DIGEST = digest_of(b"some blob")
NAMES = [
    "acme/app", "acme", "acme/a/b/c", "acmex/app", "acme-x/app", "acme.x/app", "ACME/app", "acme//app",
    "acme/./app", "x/../acme/app", "acme%2Fapp", "team/ops/tool", "team/ops", "team/opsx/tool",
    "team/tool", "team%2fops/tool", "team/ops/../ops/tool", "library/alpine", "alpine", "ghcr.io/org/tool",
    "ghcr.io/acme/app", "ghcr.io", "quay.io/x/y", "constructor/x", "__proto__/x", "a__b/c", "a--b/c",
    "a_/b", "-a/b", "a%00b/c", "acme%0A/app", "library/alpine%0A",
]  # fmt: skip
ENDPOINTS = [
    "manifests/1.0", f"manifests/{DIGEST}", f"blobs/{DIGEST}", "blobs/uploads/", "blobs/uploads",
    "blobs/uploads/0d3a-upload", "tags/list", f"referrers/{DIGEST}", "manifests/", "manifests/a/b", "other",
    "manifests/1.0%0A", f"blobs/{DIGEST}%0A",
]  # fmt: skip
SPECIAL_PATHS = ["/v2/", "/v2", "/v2/_catalog", "/v2/_catalog/", "/", "/v2/..", "/v1/x"]
QUERIES = [
    "", f"mount={DIGEST}&from=team/ops/tool", f"mount={DIGEST}&from=acme/app",
    f"from=team%2Fops%2Ftool&mount={DIGEST}", "fr%6Fm=team/ops/tool", "from=library/alpine", "from=%zz",
    "from=%ff", "from=acme/app&from=team/ops/x", "a=b",
]  # fmt: skip
CONTENT_TYPES = [None, "application/octet-stream", "application/x-www-form-urlencoded",
                 "Multipart/Form-Data; boundary=x", "application/vnd.oci.image.manifest.v1+json"]  # fmt: skip
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
INSIDE, OUTSIDE = "127.0.0.1", "127.0.2.9"


@dataclass(frozen=True)
class Case:
    n: int
    door: str
    method: str
    path: str
    query: str
    content_type: str | None
    login: str | None  # a user, "wrong" (a wrong password), or None
    source: str

    def describe(self) -> str:
        return (f"#{self.n} {self.door} {self.method} {self.path}?{self.query} type={self.content_type} "
                f"login={self.login} from={self.source}")  # fmt: skip


def generate(rng: random.Random, n: int) -> Case:
    path = f"/v2/{rng.choice(NAMES)}/{rng.choice(ENDPOINTS)}"
    if rng.random() < 0.08:
        path = rng.choice(SPECIAL_PATHS)
    door = rng.choice(["reg", "reg", "mir"])
    return Case(
        n=n,
        door=door,
        method=rng.choice(METHODS),
        path=path,
        query=rng.choice(QUERIES),
        content_type=rng.choice(CONTENT_TYPES),
        login=rng.choice([*USERS, "wrong", None]) if door == "reg" else None,
        source=INSIDE if door == "reg" or rng.random() < 0.8 else OUTSIDE,
    )


def expected(settings: GatewaySettings, case: Case) -> routing_model.Expect:
    if case.door == "reg":
        user = case.login if case.login in USERS else None
        return routing_model.registry_door(
            settings, case.method, case.path, case.query, case.content_type, user
        )
    return routing_model.mirror_door(settings, case.method, case.path, case.source == INSIDE)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalGateway, GatewaySettings]]:
    work = tmp_path_factory.mktemp("property")
    upstream = PlainRegistry(work, "upstream").start()
    try:
        TinyImage.make("upstream").push(upstream.url, "library/alpine", "1.0")
        settings = GatewaySettings(
            namespaces=("acme", "team/ops"),
            users=tuple(User(name, pw, push=push, pull=pull) for name, (pw, push, pull) in USERS.items()),
            upstreams=(Upstream("docker.io", upstream.url), Upstream("ghcr.io", upstream.url)),
            storage=FilesystemStorage(str(work / "storage")),
            http_secret=HTTP_SECRET,
            mirror_client_cidrs=(f"{INSIDE}/32",),
            # Thousands of logins, wrong ones included, from one address: the limiter is tested elsewhere.
            login_rate=100000,
            login_burst=100000,
        )
        reg_port, mir_port = free_ports(2)
        with LocalGateway(settings, data_dir=work / "gw", registry_port=reg_port, mirror_port=mir_port) as gw:
            yield gw, settings
    finally:
        upstream.stop()


def _send(gw: LocalGateway, case: Case) -> tuple[int, str | None]:
    base = gw.registry_url if case.door == "reg" else gw.mirror_url
    query = f"{case.query}&owncr-case={case.n}" if case.query else f"owncr-case={case.n}"
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    if case.login is not None:
        password = USERS[case.login][0] if case.login in USERS else "wrong-password"
        name = case.login if case.login in USERS else "alice"
        headers["Authorization"] = basic(name, password)
    body = b"" if case.method in ("POST", "PUT", "PATCH") else None
    resp = request(f"{base}{case.path}?{query}", case.method, body=body, headers=headers, source=case.source)
    code = None
    if resp.body and resp.headers.get("Content-Type", "").startswith("application/json"):
        try:
            code = json.loads(resp.body)["errors"][0]["code"]
        except (ValueError, KeyError, IndexError, TypeError):
            code = None
    return resp.status, code


def _routes_by_case(access_log: Path, count: int) -> dict[int, str]:
    deadline = time.monotonic() + 10
    while True:
        found = {}
        for line in access_log.read_text().splitlines():
            entry = json.loads(line)
            marker = str(entry.get("uri", "")).rsplit("owncr-case=", 1)
            if len(marker) == 2 and marker[1].isdigit():
                found[int(marker[1])] = str(entry["route"])
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_the_gateway_routes_generated_requests_as_the_model_says(gateway) -> None:
    gw, settings = gateway
    rng = random.Random(SEED)  # noqa: S311 (reproducible test inputs, not secrets)
    cases = [generate(rng, n) for n in range(REQUESTS)]
    started = time.monotonic()
    answers = {}
    for case in cases:
        assert time.monotonic() - started < TIME_LIMIT, f"sent only {len(answers)} of {REQUESTS} in time"
        answers[case.n] = _send(gw, case)
    routes = _routes_by_case(gw.access_log, len(cases))
    wrong = []
    for case in cases:
        want = expected(settings, case)
        status, code = answers[case.n]
        got_route = routes.get(case.n)
        if want.status is not None and (
            status != want.status or (case.method != "HEAD" and code != want.code and want.code)
        ):
            wrong.append(f"{case.describe()}: got {status} {code}, model says {want}")
        elif want.status is None and got_route != want.route:
            wrong.append(f"{case.describe()}: routed {got_route} ({status}), model says {want.route}")
        elif want.status is not None and want.route is not None and got_route != want.route:
            wrong.append(f"{case.describe()}: routed {got_route}, model says {want.route}")
    elapsed = time.monotonic() - started
    print(f"\n{len(cases)} generated requests (seed {SEED}) in {elapsed:.1f}s, {len(wrong)} disagreements")
    assert not wrong, "\n".join(wrong[:40])
