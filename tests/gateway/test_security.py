"""What an attacker tried against the doors, each as a regression test on real nginx + njs and real
registries: a mount smuggled in a form body, refused uploads stored by nginx, prototype and non-UTF-8
user names, log injection, private names told apart from unknown ones on the mirror door, internal
addresses in backend errors, a refusal answered as nginx HTML, and HTTP/1.0 without a Host header.
(The htpasswd salt finding is tested in test_render.py.)"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import JS_ENGINES, FilesystemStorage, GatewaySettings, Upstream, User
from gateway.local.plain_registry import PlainRegistry
from gateway.local.ports import free_ports
from gateway.local.runner import LocalGateway
from gateway.names import private_key
from tests.gateway.fault_upstream import DOWNLOAD, FaultUpstream
from tests.gateway.routing_fixtures import (
    ACCEPT,
    HTTP_SECRET,
    Response,
    TinyImage,
    assert_oci_error,
    basic,
    digest_of,
    request,
)
from tests.gateway.spool_watch import SpoolWatch, nginx_processes
from tests.gateway.swarm_dns import SwarmDns
from tests.services.swarm_engine import free_udp_port

ALICE = ("alice", "alice-password")  # pushes acme and team
BOB = ("bob", "bob-password")  # pulls acme only
DAVE = ("dave", "dave-password")  # pushes acme, may not read team
SECRET_LAYER = TinyImage.make("team's secret layer")
UPSTREAM = TinyImage.make("an upstream image")
MiB = 1 << 20
DIGEST = digest_of(b"no such blob")


def one_upstream(
    namespace: str, upstream: Upstream, storage: Path, js_engine: str | None = None
) -> GatewaySettings:
    """A gateway with one private namespace (alice pushes it) and one upstream, mirrored for loopback."""
    return GatewaySettings(
        js_engine=js_engine,
        namespaces=(namespace,),
        users=(User(*ALICE, push=(namespace,)),),
        upstreams=(upstream,),
        storage=FilesystemStorage(str(storage)),
        http_secret=HTTP_SECRET,
        mirror_client_cidrs=("127.0.0.1/32",),
    )


class Env:
    def __init__(self, gateway: LocalGateway, upstream: PlainRegistry) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.reg = gateway.registry_url
        self.mir = gateway.mirror_url


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("security")
    upstream = PlainRegistry(work, "upstream").start()
    try:
        UPSTREAM.push(upstream.url, "library/known", "1")
        settings = GatewaySettings(
            namespaces=("acme", "team"),
            users=(
                User(*ALICE, push=("acme", "team")),
                User(*BOB, pull=("acme",)),
                User(*DAVE, push=("acme",)),
            ),
            upstreams=(Upstream("docker.io", upstream.url),),
            storage=FilesystemStorage(str(work / "storage")),
            http_secret=HTTP_SECRET,
            mirror_client_cidrs=("127.0.0.1/32",),
        )
        reg_port, mir_port = free_ports(2)
        with LocalGateway(settings, data_dir=work / "gw", registry_port=reg_port, mirror_port=mir_port) as gw:
            SECRET_LAYER.push(gw.registry_url, "team/secret", "1", auth=ALICE)
            yield Env(gw, upstream)
    finally:
        upstream.stop()


# ---- 1. a cross-namespace mount hidden in the body ---------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "multipart/form-data; boundary=owncr",
    ],
)
def test_a_mount_hidden_in_a_form_body_is_refused(env: Env, content_type: str) -> None:
    """Distribution reads `mount`/`from` with Go's FormValue, which prefers a form body to the query
    the router checks: dave (push acme, no right on team) would copy team's layer into acme."""
    digest = digest_of(SECRET_LAYER.layer)
    if content_type.startswith("multipart"):
        body = (
            "".join(
                f'--owncr\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                for k, v in (("mount", digest), ("from", "team/secret"))
            ).encode()
            + b"--owncr--\r\n"
        )
    else:
        body = f"mount={digest}&from=team/secret".encode()
    target = f"acme/stolen-{abs(hash(content_type)) % 10000}"
    refused = request(
        f"{env.reg}/v2/{target}/blobs/uploads/",
        "POST",
        auth=DAVE,
        body=body,
        headers={"Content-Type": content_type},
    )
    assert_oci_error(refused, 415, "UNSUPPORTED")
    # Nothing was linked into dave's repository.
    assert request(f"{env.reg}/v2/{target}/blobs/{digest}", "HEAD", auth=DAVE).status == 404
    # The same start of an upload without a form is an ordinary upload.
    plain = request(
        f"{env.reg}/v2/{target}/blobs/uploads/",
        "POST",
        auth=DAVE,
        body=b"",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert plain.status == 202, plain.body


# ---- 2. refused request bodies are never stored -------------------------------------------------------


def _send_big(port: int, method: str, path: str, headers: dict[str, str], size: int) -> tuple[bytes, int]:
    """A request with a `size`-byte body, sent as fast as nginx takes it; (response head, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
    sock.sendall((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    chunk, sent = b"x" * MiB, 0
    try:
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # nginx may close once it answered
    try:
        answer = sock.recv(4096)
    finally:
        sock.close()
    return answer, sent


@pytest.mark.parametrize(
    ("door", "method", "path", "who", "status"),
    [
        ("mir", "POST", "/v2/library/x/blobs/uploads/", None, 405),  # anonymous write on the mirror
        ("reg", "PATCH", "/v2/acme/app/blobs/uploads/some-upload", BOB, 403),  # a push without the right
        ("reg", "GET", "/v2/", ALICE, 200),  # the ping, with a body
        ("reg", "PUT", "/v2/library/x/blobs/uploads/u", ALICE, 403),  # a write outside the namespaces
    ],
)
def test_refused_request_bodies_are_never_stored(
    env: Env, door: str, method: str, path: str, who: tuple[str, str] | None, status: int
) -> None:
    nginx = env.gateway.processes["nginx"]
    port = env.gateway.registry_port if door == "reg" else env.gateway.mirror_port
    headers = {"Authorization": basic(*who)} if who else {}
    with SpoolWatch(nginx_processes(nginx.pid)) as watch:
        answer, _ = _send_big(port, method, path, headers, 50 * MiB)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    watch.assert_streamed(50 * MiB, allowance=4 * MiB)
    if status != 200:
        assert b"\r\nConnection: close\r\n" in answer  # a refused uploader does not keep its connection


# ---- 4. and 5. user names that are not names ---------------------------------------------------------


def _raw_basic(user: bytes, password: bytes = b"whatever-password") -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


STRANGE = [
    b"constructor",
    b"__proto__",
    b"toString",
    b"hasOwnProperty",
    b"valueOf",
    b"\xff\xfe\x80",
    b"caf\xe9",
]


@pytest.mark.parametrize("user", STRANGE)
def test_strange_user_names_are_refused_not_crashed(env: Env, user: bytes) -> None:
    source = f"127.0.1.{10 + STRANGE.index(user)}"  # its own address: failed logins are limited per address
    login = {"Authorization": _raw_basic(user)}
    for method, path in (("GET", "/v2/acme/app/manifests/1"), ("PUT", "/v2/acme/app/manifests/1"),
                         ("GET", "/v2/_catalog"), ("GET", "/v2/")):  # fmt: skip
        resp = request(f"{env.reg}{path}", method, body=b"", headers=login, source=source)
        assert_oci_error(resp, 401, "UNAUTHORIZED")
    # Names near Object.prototype's members route as ordinary upstream names, never to a bogus cache.
    assert_oci_error(
        request(f"{env.mir}/v2/constructor/x/manifests/1", headers={"Accept": ACCEPT}),
        404,
        "MANIFEST_UNKNOWN",
    )


def test_user_names_with_control_characters_never_reach_the_error_log(env: Env) -> None:
    log = env.gateway.log_path("nginx")
    before = log.read_bytes()
    source = "127.0.1.50"  # its own address: failed logins are limited per address
    for user in (b"evil\nFORGED-LOG-LINE", b"evil\r\nFORGED-LOG-LINE", b"evil\x1b[2J"):
        login = {"Authorization": _raw_basic(user)}
        resp = request(f"{env.reg}/v2/acme/app/tags/list", headers=login, source=source)
        assert_oci_error(resp, 401, "UNAUTHORIZED")
    # A wrong password for a real user is still logged (the control: the log is being written).
    request(f"{env.reg}/v2/acme/app/tags/list", auth=("alice", "wrong-password"), source=source)
    time.sleep(0.3)
    new = log.read_bytes()[len(before) :]
    assert b"password mismatch" in new or b"alice" in new, new[-500:]
    assert b"\nFORGED-LOG-LINE" not in new and b"\x1b" not in new


# ---- 6. the mirror door tells private names and unknown names apart by nothing ----------------------


def _comparable(resp: Response, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in resp.headers.items() if k not in ("Date", "Content-Length"))
    return resp.status, headers, resp.body.replace(name.encode(), b"<name>")


ENDPOINTS = ["manifests/1", "manifests/latest", f"manifests/{DIGEST}", "tags/list", f"blobs/{DIGEST}"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("what", ENDPOINTS)
def test_private_names_answer_exactly_like_unknown_names_on_the_mirror(
    env: Env, method: str, what: str
) -> None:
    private = request(f"{env.mir}/v2/acme/app/{what}", method, headers={"Accept": ACCEPT})
    unknown = request(f"{env.mir}/v2/nobody/app/{what}", method, headers={"Accept": ACCEPT})
    assert private.status in (404, 500)  # 500: Distribution's proxy on a digest no upstream has
    assert _comparable(private, "acme/app") == _comparable(unknown, "nobody/app")


def _same_answers(mirror: str, states: str) -> None:
    for what in ENDPOINTS:
        for method in ("GET", "HEAD"):
            private = request(f"{mirror}/v2/acme/app/{what}", method, headers={"Accept": ACCEPT})
            unknown = request(f"{mirror}/v2/nobody/app/{what}", method, headers={"Accept": ACCEPT})
            if states == "pass":
                assert private.status in (404, 500), (what, method, private.status, private.body)
            else:  # "not mirrored yet": a retryable answer, with its wait (seconds left may tick between)
                assert private.status == 503 and int(private.headers["Retry-After"]) > 0, (what, private.body)
                for resp in (private, unknown):
                    del resp.headers["Retry-After"]
            answers = _comparable(private, "acme/app"), _comparable(unknown, "nobody/app")
            assert answers[0] == answers[1], (states, what, method)


@pytest.mark.parametrize("state", ["pass", "503", "429"])
def test_private_and_unknown_names_answer_alike_whatever_the_upstream_says(
    tmp_path: Path, state: str
) -> None:
    """Docker Hub answers 401 for a repository it does not know, and an upstream can be down or rate
    limiting: in none of these may the mirror door tell a private name from an unknown one."""
    hub = PlainRegistry(tmp_path, "hub").start()
    fault = FaultUpstream(hub.url, login="puller:hub-secret", unknown_401=True).start()
    settings = one_upstream(
        "acme", Upstream("docker.io", fault.url, "puller", "hub-secret"), tmp_path / "storage"
    )
    reg, mir = free_ports(2)
    try:
        with LocalGateway(settings, data_dir=tmp_path / "gw", registry_port=reg, mirror_port=mir) as gw:
            if state != "pass":
                fault.set(state)
                # One request finds the upstream failing; the egress remembers it.
                assert request(f"{gw.mirror_url}/v2/nobody/first/manifests/1", timeout=60).status == 503
            _same_answers(gw.mirror_url, state)
            if state == "pass":
                assert ("pass", "GET", "/v2/nobody/app/manifests/1") in fault.paths  # it was asked
                assert not [path for _, _, path in fault.paths if "acme" in path]  # private: never
    finally:
        fault.stop()
        hub.stop()


def test_the_catalog_refusal_names_no_namespace(env: Env) -> None:
    error = assert_oci_error(request(f"{env.reg}/v2/_catalog", auth=BOB), 403, "DENIED")
    assert "team" not in str(error)


# ---- 7. backend errors name no internal address ------------------------------------------------------


def test_an_upstream_outage_answers_an_oci_error_without_addresses(tmp_path: Path) -> None:
    upstream = PlainRegistry(tmp_path, "upstream").start()
    host = upstream.host
    settings = GatewaySettings(
        namespaces=("acme",),
        users=(User(*ALICE, push=("acme",)),),
        upstreams=(Upstream("docker.io", upstream.url),),
        storage=FilesystemStorage(str(tmp_path / "storage")),
        http_secret=HTTP_SECRET,
    )
    reg_port, mir_port = free_ports(2)
    with LocalGateway(settings, data_dir=tmp_path / "gw", registry_port=reg_port, mirror_port=mir_port) as gw:
        upstream.stop()
        resp = request(f"{gw.mirror_url}/v2/library/gone/blobs/{digest_of(b'uncached')}")
        assert resp.status in (500, 503), resp.body
        error = assert_oci_error(resp, resp.status, "UNAVAILABLE" if resp.status == 503 else "UNKNOWN")
        assert host not in resp.body.decode() and "127.0.0.1" not in resp.body.decode(), error
        # The gateway's log still has the details: the cache reaches its upstream through nginx's egress.
        assert f'upstream: "{upstream.url}/v2/' in gw.log_path("nginx").read_text()


# ---- 8. every refusal is an OCI error -----------------------------------------------------------------


def test_a_query_that_cannot_be_decoded_is_an_oci_400(env: Env) -> None:
    resp = request(f"{env.reg}/v2/acme/app/blobs/uploads/?mount=x&from=%zz", "POST", auth=DAVE, body=b"")
    assert_oci_error(resp, 400, "UNSUPPORTED")


# ---- 9. HTTP/1.0 without a Host header ----------------------------------------------------------------


def test_http10_without_host_reaches_the_registry(env: Env) -> None:
    sock = socket.create_connection(("127.0.0.1", env.gateway.registry_port), timeout=15)
    sock.sendall(f"GET /v2/team/secret/tags/list HTTP/1.0\r\nAuthorization: {basic(*ALICE)}\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    assert b'"tags":["1"]' in body


# ---- 10. the gateway follows an upstream's word only to public addresses ------------------------------

INSIDE_NAME = "inside.example.com"  # resolves to 127.0.0.1 through the egress's DNS stand-in
# Every form of a Location that names the private registry (port {port}); {path} is its blob path.
INSIDE_FORMS = {
    "absolute": "http://127.0.0.1:{port}{path}",
    "scheme-relative": "//127.0.0.1:{port}{path}",
    "user information": "http://mirror@127.0.0.1:{port}{path}",
    "IPv4-mapped IPv6": "http://[::ffff:127.0.0.1]:{port}{path}",
    "IPv6 loopback": "http://[::1]:{port}{path}",
    "decimal": "http://2130706433:{port}{path}",
    "octal": "http://0177.0.0.1:{port}{path}",
    "short": "http://127.1:{port}{path}",
    "hexadecimal": "http://0x7f000001:{port}{path}",
    "our name": "http://localhost:{port}{path}",
    "a service name": "http://owncr-registry-private:5000{path}",
    "the cloud's metadata": "http://169.254.169.254/latest/meta-data/",
    "a name that resolves inside": f"http://{INSIDE_NAME}:{{port}}{{path}}",
    # 87.0.0.1 to inet_aton, 127.0.0.1 to nginx, which connects: caught on the address it connected to.
    "leading zeros": "http://0127.0.0.01:{port}{path}",
}
# Refused on the address nginx connected to (the private registry was asked, its answer dropped).
AT_CONNECT = ("a name that resolves inside", "leading zeros")


class Hostile:
    """A gateway whose one upstream answers every blob GET with a redirect the test sets, and a private
    registry holding a secret blob the upstream also says it has (so a cache asks for it)."""

    def __init__(self, gateway: LocalGateway, fault: FaultUpstream) -> None:
        self.gateway = gateway
        self.fault = fault
        self.private_port = gateway.bundle.services[private_key(0)].port if gateway.bundle else 0
        self.blob = digest_of(SECRET_LAYER.layer)

    def private_asked(self) -> int:
        """Requests for the secret blob in the private registry's log."""
        log = self.gateway.log_path(private_key(0)).read_text(errors="replace")
        return log.count(f"/blobs/{self.blob}")


@pytest.fixture(scope="module", params=JS_ENGINES)
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """On both njs engines: the target check parses what an upstream sent (numbers, patterns)."""
    work = tmp_path_factory.mktemp("hostile")
    hub = PlainRegistry(work, "hub").start()
    fault = FaultUpstream(hub.url).start()
    dns = SwarmDns({INSIDE_NAME: "127.0.0.1"}, "127.0.0.1", free_udp_port()).start()
    try:
        SECRET_LAYER.push(hub.url, "library/app", "1")  # the upstream has the blob: a cache asks for it
        settings = one_upstream("team", Upstream("docker.io", fault.url), work / "storage", request.param)
        reg, mir = free_ports(2)
        resolver = f"127.0.0.1:{dns.sock.getsockname()[1]}"
        with LocalGateway(
            settings, data_dir=work / "gw", registry_port=reg, mirror_port=mir, egress_resolver=resolver
        ) as gw:
            SECRET_LAYER.push(gw.registry_url, "team/secret", "1", auth=ALICE)
            yield Hostile(gw, fault)
    finally:
        dns.stop()
        fault.stop()
        hub.stop()


@pytest.mark.parametrize("form", INSIDE_FORMS)
def test_a_blob_redirect_inside_is_refused_in_every_form(hostile: Hostile, form: str) -> None:
    """As an attacker's upstream would: a blob redirect to the gateway's own private registry. The
    anonymous mirror client gets an upstream error, never the private layer; a literal address or one of
    our names is refused before any connection (the private registry is never asked); a name that
    resolves inside is refused at connect time, its answer never relayed."""
    path = f"/v2/team/secret/blobs/{hostile.blob}"
    hostile.fault.redirect_to = INSIDE_FORMS[form].format(port=hostile.private_port, path=path)
    log = hostile.gateway.log_path("nginx")
    seen, asked = len(log.read_text()), hostile.private_asked()
    try:
        resp = request(f"{hostile.gateway.mirror_url}/v2/library/app/blobs/{hostile.blob}", timeout=60)
    finally:
        hostile.fault.redirect_to = None
    assert resp.status in (500, 502, 503), (resp.status, resp.body[:200])
    assert SECRET_LAYER.layer not in resp.body
    refusal = [line for line in log.read_text()[seen:].splitlines() if "egress: refused" in line]
    assert refusal, f"no refusal logged for {form}"
    if form in AT_CONNECT:
        assert "resolved to 127.0.0.1:" in refusal[0], refusal
    else:
        assert hostile.private_asked() == asked, f"{form}: the private registry was asked"


def test_a_relative_blob_redirect_stays_on_the_upstream(hostile: Hostile) -> None:
    """A path-absolute Location is the upstream's own origin (trusted): followed, through the egress."""
    hostile.fault.redirect_to = f"{DOWNLOAD}/v2/library/app/blobs/{{digest}}"
    try:
        resp = request(f"{hostile.gateway.mirror_url}/v2/library/app/blobs/{hostile.blob}", timeout=60)
    finally:
        hostile.fault.redirect_to = None
    assert resp.status == 200 and resp.body == SECRET_LAYER.layer


@pytest.mark.parametrize("where", ["inside", "another domain"])
def test_a_token_realm_elsewhere_gets_neither_the_login_nor_a_request(tmp_path: Path, where: str) -> None:
    """An upstream that names a realm on another loopback service (here the registry behind it, which
    the gateway does not trust: only the upstream's own origin is), or on a public host outside its own
    domain: the cache's token request is refused before any connection, so the upstream login goes
    nowhere and nothing is pulled."""
    hub = PlainRegistry(tmp_path, "hub").start()
    realm = f"{hub.url}/token" if where == "inside" else "https://auth.attacker.example/token"
    fault = FaultUpstream(hub.url, login="puller:hub-secret", realm=realm).start()
    try:
        UPSTREAM.push(hub.url, "library/known", "1")
        login = Upstream("docker.io", fault.url, "puller", "hub-secret")
        settings = one_upstream("team", login, tmp_path / "storage")
        reg, mir = free_ports(2)
        with LocalGateway(settings, data_dir=tmp_path / "gw", registry_port=reg, mirror_port=mir) as gw:
            resp = request(f"{gw.mirror_url}/v2/library/known/manifests/1", headers={"Accept": ACCEPT})
            # Without a token the cache has nothing to serve (a tag it never pulled: its 404).
            assert resp.status != 200 and UPSTREAM.manifest not in resp.body, (resp.status, resp.body[:200])
            assert not [r for r in hub.requests() if r.path.startswith("/token")]
            assert f"egress: refused {realm}" in gw.log_path("nginx").read_text()
    finally:
        fault.stop()
        hub.stop()
