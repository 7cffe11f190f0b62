"""The routing contract, end to end: real nginx + njs and real Distribution registries on loopback
(started by gateway.local.runner.LocalGateway from the rendered files), an upstream stand-in, raw HTTP.
Every refusal is checked for its status, its OCI error body and the API-version header."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.config import JS_ENGINES, FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_ports
from gateway.local.runner import LocalGateway
from gateway.names import cache_route
from gateway.render import layout
from tests.gateway.routing_fixtures import (
    ACCEPT,
    API_VERSION,
    HTTP_SECRET,
    OCI_MANIFEST,
    Response,
    TinyImage,
    assert_oci_error,
    digest_of,
    request,
)

ALICE = ("alice", "alice-password")  # pushes acme and team/ops
BOB = ("bob", "bob-password")  # pulls acme
CAROL = ("carol", "carol-password")  # pulls team/ops
DAVE = ("dave", "dave-password")  # pushes acme only
UPSTREAM_ALPINE = TinyImage.make("upstream alpine")
IMPOSTOR = TinyImage.make("someone else's acme/app on the upstream")
UPSTREAM_TOOL = TinyImage.make("ghcr tool")
PRIVATE_APP = TinyImage.make("our acme/app")
PRIVATE_OPS = TinyImage.make("our team/ops/tool")
DIGEST = PRIVATE_APP.digest


class Env:
    def __init__(self, gateway: LocalGateway, upstream: PlainRegistry, seeded: int) -> None:
        self.gateway = gateway
        self.seeded = seeded  # upstream log lines written by seeding it, before the gateway ran
        self.upstream = upstream
        self.reg = gateway.registry_url
        self.mir = gateway.mirror_url

    def mark(self) -> int:
        """How many access-log lines exist now (pass it to `logged`)."""
        return len(self.gateway.access_log.read_text().splitlines())

    def logged(self, mark: int, uri: str, count: int = 1) -> list[dict[str, object]]:
        """The access-log entries for `uri` written after `mark`, waiting (bounded) for `count` of
        them: nginx writes a line after the response has gone out, so it may lag the client."""
        deadline = time.monotonic() + 5
        while True:
            lines = self.gateway.access_log.read_text().splitlines()[mark:]
            entries = [e for e in map(json.loads, lines) if e.get("uri") == uri]
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.02)


@pytest.fixture(scope="module", params=JS_ENGINES)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The whole contract runs once per njs engine: njs 1.0's own and QuickJS (its announced default)."""
    work = tmp_path_factory.mktemp("routing")
    upstream = PlainRegistry(work, "upstream").start()
    try:
        UPSTREAM_ALPINE.push(upstream.url, "library/alpine", "3")
        IMPOSTOR.push(upstream.url, "acme/app", "1.0")  # a tag hijack attempt
        UPSTREAM_TOOL.push(upstream.url, "org/tool", "1")
        settings = GatewaySettings(
            namespaces=("acme", "team/ops"),
            users=(
                User(ALICE[0], ALICE[1], push=("acme", "team/ops")),
                User(BOB[0], BOB[1], pull=("acme",)),
                User(CAROL[0], CAROL[1], pull=("team/ops",)),
                User(DAVE[0], DAVE[1], push=("acme",)),
            ),
            upstreams=(Upstream("docker.io", upstream.url), Upstream("ghcr.io", upstream.url)),
            storage=FilesystemStorage(str(work / "storage")),
            http_secret=HTTP_SECRET,
            mirror_client_cidrs=("127.0.0.1/32",),
            login_rate=2,
            login_burst=8,
            js_engine=request.param,
        )
        reg_port, mir_port = free_ports(2)
        with LocalGateway(settings, data_dir=work / "gw", registry_port=reg_port, mirror_port=mir_port) as gw:
            PRIVATE_APP.push(gw.registry_url, "acme/app", "1.0", auth=ALICE)
            PRIVATE_OPS.push(gw.registry_url, "team/ops/tool", "2", auth=ALICE)
            yield Env(gw, upstream, seeded=len(upstream.requests()))
    finally:
        upstream.stop()


def test_healthz_answers_on_both_doors_without_login(env: Env) -> None:
    for base in (env.reg, env.mir):
        resp = request(f"{base}/healthz")
        assert (resp.status, resp.body) == (200, b"ok\n")


def test_healthz_answers_503_while_the_gateway_drains(env: Env) -> None:
    """The drain flag (gateway/render/drain.sh creates it on a stop signal) fails the load balancer's
    check on both doors while everything else is still served; without it /healthz is 200 again."""
    flag = env.gateway.data_dir / "state" / layout.DRAIN_FLAG
    flag.touch()
    try:
        for base in (env.reg, env.mir):
            resp = request(f"{base}/healthz")
            assert (resp.status, resp.body) == (503, b"draining\n")
        assert request(f"{env.reg}/v2/", auth=ALICE).status == 200
    finally:
        flag.unlink()
    assert request(f"{env.reg}/healthz").status == 200


@pytest.mark.parametrize("auth", [None, ("alice", "wrong-password"), ("mallory", "alice-password")])
@pytest.mark.parametrize("path", ["/v2/", "/v2/acme/app/manifests/1.0", "/v2/library/alpine/manifests/3"])
def test_registry_door_refuses_missing_or_wrong_credentials(
    env: Env, auth: tuple[str, str] | None, path: str
) -> None:
    # A source address of its own per case: failed logins are rate-limited per address.
    source = f"127.0.1.{len(path) * 3 + len(str(auth)) % 3}"
    resp = request(env.reg + path, auth=auth, source=source)
    assert_oci_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="owncr"'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("GET", "/v2/Not_A_Name/manifests/1"),
        ("GET", "/v2/_catalog"),
    ],
)
def test_login_comes_before_any_routing_answer(env: Env, method: str, path: str) -> None:
    # Refusals and answers are given only after authentication: no hint without a valid login.
    resp = request(env.reg + path, method, auth=("carol", "wrong-password"), source="127.0.2.1")
    assert_oci_error(resp, 401, "UNAUTHORIZED")


def test_registry_door_ping_with_login(env: Env) -> None:
    resp = request(f"{env.reg}/v2/", auth=BOB)
    assert (resp.status, resp.json()) == (200, {})
    assert resp.headers.get_all("Docker-Distribution-Api-Version") == [API_VERSION]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("who", [ALICE, BOB])
def test_private_names_are_served_by_the_private_registry(
    env: Env, method: str, who: tuple[str, str]
) -> None:
    mark = env.mark()
    resp = request(f"{env.reg}/v2/acme/app/manifests/1.0", method, auth=who, headers={"Accept": ACCEPT})
    assert resp.status == 200
    # Ours, not the impostor the upstream has under the same name and tag.
    assert resp.headers["Docker-Content-Digest"] == PRIVATE_APP.digest != IMPOSTOR.digest
    assert env.logged(mark, "/v2/acme/app/manifests/1.0")[0]["route"] == "private_read"


@pytest.mark.parametrize(
    ("who", "path", "grants"),
    [
        (CAROL, "/v2/acme/app/manifests/1.0", ["team/ops"]),
        (BOB, "/v2/team/ops/tool/manifests/2", ["acme"]),
        (CAROL, f"/v2/acme/app/blobs/{digest_of(PRIVATE_APP.layer)}", ["team/ops"]),
    ],
)
def test_pull_needs_a_pull_right_on_the_namespace(
    env: Env, who: tuple[str, str], path: str, grants: list[str]
) -> None:
    error = assert_oci_error(request(env.reg + path, auth=who), 403, "DENIED")
    assert error["detail"]["pull"] == grants  # type: ignore[index]


@pytest.mark.parametrize(("who", "names"), [(BOB, "no namespace"), (CAROL, "no namespace")])
def test_push_needs_a_push_right_on_the_namespace(env: Env, who: tuple[str, str], names: str) -> None:
    for method, path in (("POST", "/v2/acme/app/blobs/uploads/"), ("PUT", "/v2/acme/app/manifests/2.0")):
        error = assert_oci_error(request(env.reg + path, method, auth=who, body=b"{}"), 403, "DENIED")
        assert names in str(error["message"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("PATCH", "/v2/library/alpine/blobs/uploads/0f0e1c43-8f7c-4a5e-9a0e-000000000000"),
        ("PUT", "/v2/library/alpine/manifests/3"),
        ("DELETE", f"/v2/library/alpine/manifests/{UPSTREAM_ALPINE.digest}"),
        ("PUT", "/v2/ghcr.io/org/tool/manifests/1"),
        ("POST", "/v2/acmes/app/blobs/uploads/"),  # a name that merely starts like a namespace
    ],
)
def test_writes_outside_private_namespaces_are_denied(env: Env, method: str, path: str) -> None:
    error = assert_oci_error(request(env.reg + path, method, auth=ALICE, body=b"x"), 403, "DENIED")
    assert "may push to: acme, team/ops" in str(error["message"])


@pytest.mark.parametrize(
    "query",
    [
        "mount={digest}&from=team/ops/tool",
        "mount={digest}&from=team%2Fops%2Ftool",  # encoded as Go's url.Query() would decode it
        "mount={digest}&fr%6Fm=team/ops/tool",  # an encoded key decodes to `from` too
        "mount={digest}&from=acme/app&from=team/ops/tool",  # every `from` is checked
    ],
)
def test_blob_mount_needs_a_pull_right_on_the_source(env: Env, query: str) -> None:
    # dave may push acme but not read team/ops: a mount would link team/ops's layer into acme/...
    digest = digest_of(PRIVATE_OPS.layer)
    url = f"{env.reg}/v2/acme/stolen/blobs/uploads/?" + query.format(digest=digest)
    error = assert_oci_error(request(url, "POST", auth=DAVE, body=b""), 403, "DENIED")
    assert "team/ops" in str(error["message"])
    assert request(f"{env.reg}/v2/acme/stolen/blobs/{digest}", "HEAD", auth=DAVE).status == 404


def test_blob_mount_from_a_pullable_repository_works(env: Env) -> None:
    digest = digest_of(PRIVATE_APP.layer)
    url = f"{env.reg}/v2/acme/copy/blobs/uploads/?mount={digest}&from=acme/app"
    resp = request(url, "POST", auth=DAVE, body=b"")
    assert resp.status == 201, resp.body  # mounted, not a fresh upload
    assert request(f"{env.reg}/v2/acme/copy/blobs/{digest}", "HEAD", auth=DAVE).status == 200


def test_alice_pushed_to_both_namespaces(env: Env) -> None:
    resp = request(f"{env.reg}/v2/team/ops/tool/manifests/2", "HEAD", auth=CAROL, headers={"Accept": ACCEPT})
    assert (resp.status, resp.headers["Docker-Content-Digest"]) == (200, PRIVATE_OPS.digest)


@pytest.mark.parametrize("base_attr", ["reg", "mir"])
def test_upstream_names_are_read_through_the_cache(env: Env, base_attr: str) -> None:
    base = getattr(env, base_attr)
    auth = ALICE if base_attr == "reg" else None
    mark = env.mark()
    for path, image in (
        ("library/alpine/manifests/3", UPSTREAM_ALPINE),
        ("ghcr.io/org/tool/manifests/1", UPSTREAM_TOOL),
    ):
        for method in ("HEAD", "GET"):
            resp = request(f"{base}/v2/{path}", method, auth=auth, headers={"Accept": ACCEPT})
            assert (resp.status, resp.headers["Docker-Content-Digest"]) == (200, image.digest)
    blob = request(f"{base}/v2/library/alpine/blobs/{digest_of(UPSTREAM_ALPINE.layer)}", auth=auth)
    assert (blob.status, blob.body) == (200, UPSTREAM_ALPINE.layer)
    assert env.logged(mark, "/v2/ghcr.io/org/tool/manifests/1", 2)[-1]["route"] == cache_route(
        "ghcr-io", "tag"
    )


def test_catalog_lists_private_repositories_only_and_needs_a_login(env: Env) -> None:
    # bob may pull acme only: the catalog would show him team/ops's repository names.
    error = assert_oci_error(request(f"{env.reg}/v2/_catalog", auth=BOB), 403, "DENIED")
    # ... and the refusal itself names no namespace bob may not read.
    assert "team/ops" not in json.dumps(error) and "every private namespace" in str(error["message"])
    resp = request(f"{env.reg}/v2/_catalog", auth=ALICE)
    assert resp.status == 200
    repositories = resp.json()["repositories"]
    assert isinstance(repositories, list)
    # Other tests push more private repositories (the order is theirs); cached names never appear.
    assert {"acme/app", "team/ops/tool"} <= set(repositories)
    assert all(name.startswith(("acme/", "team/ops/")) for name in repositories), repositories
    assert_oci_error(request(f"{env.reg}/v2/_catalog"), 401, "UNAUTHORIZED")
    assert_oci_error(request(f"{env.mir}/v2/_catalog"), 403, "DENIED")


def test_upload_status_goes_to_the_private_registry(env: Env) -> None:
    path = f"/v2/library/alpine/blobs/uploads/{uuid.uuid4()}"
    # The private registry rejects the made-up upload id (Distribution 3: BLOB_UPLOAD_UNKNOWN; 2.8 said
    # BLOB_UPLOAD_INVALID); a cache would not know the path at all.
    mark = env.mark()
    assert_oci_error(request(env.reg + path, auth=ALICE), 404, "BLOB_UPLOAD_UNKNOWN")
    assert env.logged(mark, path)[0]["route"] == "private_read"


def test_invalid_paths_are_refused(env: Env) -> None:
    assert_oci_error(request(f"{env.reg}/v2/Acme/App/manifests/1", auth=ALICE), 404, "NAME_INVALID")
    assert_oci_error(request(f"{env.mir}/v2/library/alpine/manifests/3%3Fx"), 404, "NAME_INVALID")
    # nginx normalizes before router.js decides: these dot-segments and %2F land on the private name.
    for sneaky in ("/v2/library/../acme/app/tags/list", "/v2/library%2F..%2Facme/app/tags/list"):
        assert_oci_error(request(env.mir + sneaky), 404, "NAME_UNKNOWN")
    assert_oci_error(request(f"{env.mir}/other"), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/v2/acme/app/manifests/1.0%0A", f"/v2/acme/app/blobs/{DIGEST}%0A"])
def test_a_reference_ending_in_a_newline_is_refused_on_both_engines(env: Env, path: str) -> None:
    # On the njs engine a pattern's `$` also matches before a final newline: the router would have
    # passed the reference on with it.
    assert_oci_error(request(env.reg + path, auth=ALICE), 404, "NAME_INVALID")


@pytest.mark.parametrize(
    "subject",
    [
        {"digest": PRIVATE_APP.digest + "\n"},  # `$` before a final newline (njs engine)
        {"digest": PRIVATE_APP.digest.upper()},
        {"digest": PRIVATE_APP.digest[:-1]},
        {"digest": 7},
        "sha256:0",
        [],
    ],
)
def test_a_manifest_whose_subject_is_not_a_digest_is_refused_before_it_is_stored(
    env: Env, subject: object
) -> None:
    manifest = json.loads(TinyImage.make("a referrer").manifest)
    if isinstance(subject, dict):
        subject = {"mediaType": OCI_MANIFEST, "size": len(PRIVATE_APP.manifest), **subject}
    body = json.dumps({**manifest, "subject": subject}).encode()
    put = request(
        f"{env.reg}/v2/acme/app/manifests/{digest_of(body)}",
        "PUT",
        auth=ALICE,
        body=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    error = assert_oci_error(put, 400, "MANIFEST_INVALID")
    assert "subject" in str(error["message"])
    assert request(f"{env.reg}/v2/acme/app/manifests/{digest_of(body)}", auth=ALICE).status == 404
    listed = request(f"{env.reg}/v2/acme/app/referrers/{PRIVATE_APP.digest}", auth=ALICE)
    assert listed.status == 200 and digest_of(body) not in listed.body.decode()


def test_mirror_door_ping_is_anonymous(env: Env) -> None:
    resp = request(f"{env.mir}/v2/")
    assert (resp.status, resp.json()) == (200, {})
    assert resp.headers.get_all("Docker-Distribution-Api-Version") == [API_VERSION]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/v2/library/alpine/blobs/uploads/", "/v2/acme/app/manifests/1.0", "/v2/"])
def test_mirror_door_is_read_only(env: Env, method: str, path: str) -> None:
    resp = request(env.mir + path, method, auth=ALICE, body=b"x")
    assert_oci_error(resp, 405, "UNSUPPORTED")
    assert resp.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "path",
    [
        "/v2/acme/app/manifests/1.0",
        f"/v2/acme/app/manifests/{PRIVATE_APP.digest}",
        "/v2/acme/app/tags/list",
        f"/v2/acme/app/blobs/{digest_of(PRIVATE_APP.layer)}",
        "/v2/team/ops/tool/manifests/2",
        "/v2/acme/manifests/1",  # the namespace itself is private too
    ],
)
def test_mirror_door_hides_private_names(env: Env, method: str, path: str) -> None:
    # The answer a name no upstream has gets (test_security.py compares the two in full). A HEAD answer
    # has no body, and the private registry's own 404 would look the same: the access log tells who
    # answered (the router, without asking any registry).
    what, ref = path.split("/")[-2:]
    mark = env.mark()
    if what == "manifests" and ref.startswith("sha256:"):  # Distribution's proxy: 500 for such digests
        assert_oci_error(request(env.mir + path, method), 500, "UNKNOWN", head=method == "HEAD")
    else:
        code = {"manifests": "MANIFEST_UNKNOWN", "blobs": "BLOB_UNKNOWN"}.get(what, "NAME_UNKNOWN")
        assert_oci_error(request(env.mir + path, method), 404, code, head=method == "HEAD")
    [entry] = env.logged(mark, path)
    assert (entry["door"], entry["route"], entry["upstream"]) == ("mirror", "refused", ""), entry


def test_mirror_upload_paths_do_not_exist(env: Env) -> None:
    assert_oci_error(
        request(f"{env.mir}/v2/library/alpine/blobs/uploads/{uuid.uuid4()}"), 404, "BLOB_UPLOAD_UNKNOWN"
    )


def test_mirror_door_refuses_clients_outside_its_cidrs(env: Env) -> None:
    # mirror_client_cidrs is 127.0.0.1/32 here: 127.0.0.3 is another loopback address outside it.
    for path in ("/v2/", "/v2/library/alpine/manifests/3"):
        error = assert_oci_error(request(env.mir + path, source="127.0.0.3"), 403, "DENIED")
        assert "127.0.0.3" in str(error["message"])
    assert request(f"{env.mir}/v2/", source="127.0.0.1").status == 200


def test_upstream_tag_reads_are_micro_cached_but_private_ones_never(env: Env) -> None:
    path = "/v2/library/alpine/manifests/3"
    assert request(env.mir + path, headers={"Accept": ACCEPT}).status == 200  # warm
    before = len(env.upstream.requests_for("library/alpine"))
    mark = env.mark()
    for method in ("GET", "HEAD") * 5:
        resp = request(env.mir + path, method, headers={"Accept": ACCEPT})
        assert (resp.status, resp.headers["Docker-Content-Digest"]) == (200, UPSTREAM_ALPINE.digest)
    assert len(env.upstream.requests_for("library/alpine")) == before
    assert {e["cache"] for e in env.logged(mark, path, 10)} == {"HIT"}
    mark = env.mark()
    for _ in range(3):
        request(f"{env.reg}/v2/acme/app/manifests/1.0", auth=ALICE, headers={"Accept": ACCEPT})
    private = env.logged(mark, "/v2/acme/app/manifests/1.0", 3)
    assert [(e["cache"], e["upstream_status"]) for e in private] == [("", "200")] * 3


def test_concurrent_reads_of_a_new_tag_wait_for_one_upstream_revalidation(env: Env) -> None:
    fresh = TinyImage.make("a new upstream tag")
    fresh.push(env.upstream.url, "library/alpine", "edge")
    mark = len(env.upstream.requests())
    path = "/v2/library/alpine/manifests/edge"

    def read(_: int) -> str:
        return request(env.mir + path, headers={"Accept": ACCEPT}).headers["Docker-Content-Digest"]

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(read, range(8)))
    assert digests == [fresh.digest] * 8
    # One cache miss in Distribution's proxy is a HEAD and a GET of the tag upstream; without
    # proxy_cache_lock, each of the 8 concurrent readers would cause its own pair.
    tag_reads = sorted(r.method for r in env.upstream.requests()[mark:] if r.path == path)
    assert tag_reads == ["GET", "HEAD"]


def test_a_verified_login_is_cached_per_client_address_and_failures_never(env: Env) -> None:
    def checks(mark: int, source: str) -> list[object]:
        time.sleep(0.2)  # log lines follow responses
        lines = env.gateway.access_log.read_text().splitlines()[mark:]
        return [e["status"] for e in map(json.loads, lines) if e.get("password_check") == source]

    mark = env.mark()
    for _ in range(5):
        assert request(f"{env.reg}/v2/", auth=BOB, source="127.0.0.6").status == 200
    assert checks(mark, "127.0.0.6") == [200]  # bcrypt ran once
    assert request(f"{env.reg}/v2/", auth=BOB, source="127.0.0.7").status == 200
    assert checks(mark, "127.0.0.7") == [200]  # another address: checked again
    mark = env.mark()
    for _ in range(3):
        assert request(f"{env.reg}/v2/", auth=("bob", "not-bob"), source="127.0.0.8").status == 401
    assert checks(mark, "127.0.0.8") == [401, 401, 401]


def test_failed_logins_are_rate_limited_per_client_address(env: Env) -> None:
    # login_rate=2/s, burst 8: from 127.0.0.4, wrong passwords soon answer 429, and so does the right
    # one (the limiter runs before bcrypt, so guessing gains nothing). Other addresses are unaffected.
    statuses = []
    for _ in range(40):
        resp = request(f"{env.reg}/v2/", auth=("bob", "guess"), source="127.0.0.4")
        statuses.append(resp.status)
        if resp.status == 429:
            assert_oci_error(resp, 429, "TOOMANYREQUESTS")
            break
    assert statuses[0] == 401 and statuses[-1] == 429, statuses

    # Right passwords from that address, a burst of them at once: the limiter refills a token every
    # 500 ms, so on a slow machine one of them may find one (a single request, sent after a pause,
    # could pass by timing alone); most must be refused before bcrypt ever sees them.
    def right_password(_: int) -> Response:
        return request(f"{env.reg}/v2/", auth=("carol", "carol-password"), source="127.0.0.4")

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(right_password, range(12)))
    refused = [a for a in answers if a.status == 429]
    assert len(refused) >= 9, [a.status for a in answers]
    assert_oci_error(refused[0], 429, "TOOMANYREQUESTS")
    assert request(f"{env.reg}/v2/", auth=CAROL, source="127.0.0.5").status == 200


def test_upstream_never_sees_private_names(env: Env) -> None:
    for base, auth in ((env.reg, ALICE), (env.mir, None)):
        for path in (
            "acme/app/manifests/1.0",
            "acme/app/tags/list",
            "team/ops/tool/manifests/2",
            f"acme/app/blobs/{digest_of(IMPOSTOR.layer)}",
            f"acme/app/manifests/{IMPOSTOR.digest}",
        ):
            for method in ("GET", "HEAD"):
                request(f"{base}/v2/{path}", method, auth=auth, headers={"Accept": ACCEPT})
    assert env.upstream.requests_for("acme", since=env.seeded) == []
    assert env.upstream.requests_for("team", since=env.seeded) == []
    # The log is read correctly: the upstream did see the cached names.
    assert env.upstream.requests_for("library/alpine", since=env.seeded)


def test_access_log_records_door_route_user_and_upstream_status(env: Env) -> None:
    mark = env.mark()
    request(f"{env.reg}/v2/team/ops/tool/manifests/2", auth=CAROL, headers={"Accept": ACCEPT})
    entry = env.logged(mark, "/v2/team/ops/tool/manifests/2")[0]
    assert {k: entry[k] for k in ("door", "route", "user", "status", "upstream_status")} == {
        "door": "registry",
        "route": "private_read",
        "user": "carol",
        "status": 200,
        "upstream_status": "200",
    }


def test_registries_only_listen_on_loopback(env: Env) -> None:
    assert env.gateway.bundle is not None
    for key, service in env.gateway.bundle.services.items():
        if key != "nginx":
            assert f"addr: 127.0.0.1:{service.port}" in service.files[0].content
    assert Path(env.gateway.access_log).exists()
