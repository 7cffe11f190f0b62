"""An upstream that can be made to fail: an HTTP server on a loopback port in front of a real registry
(the Docker Hub stand-in), which passes reads through, or hangs (the connection accepted, no answer
ever), or answers 429 with a Retry-After, or 503, as the test sets it. It counts what reached it in each
mode; the registry behind it keeps its own access log of what it was really asked.

As Docker Hub does, it can also ask for a token from its own realm (`login`: the Basic credentials it
gives tokens for), answer blob GETs with a redirect to a download path on itself (`redirect_blobs`),
so that the calls a cache makes to other URLs than the upstream's own are seen here too, and answer
`401` for a repository it does not know (`unknown_401`: the registry behind it answered 404). And it can
lie: `lie(n)` makes the next n blob bodies it serves (its own blob paths or downloads) other bytes of the
same length."""

from __future__ import annotations

import base64
import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("pass", "hang", "429", "503")
# A hung request is held at most this long (the test's own bound), or until the server stops.
HANG_LIMIT_SECONDS = 120.0
RETRY_AFTER = 30
TOKEN = "fault-upstream-token"  # noqa: S105 - the stand-in's made-up token
DOWNLOAD = "/download"  # where redirected blob GETs land, followed by the blob's registry path


class FaultUpstream:
    def __init__(
        self,
        target: str,
        *,
        login: str | None = None,
        redirect_blobs: bool = False,
        downloads_fail: bool = False,
        unknown_401: bool = False,
        redirect_to: str | None = None,
        realm: str | None = None,
    ) -> None:
        self.target = urlsplit(target)
        self.login = login  # "user:password"
        self.redirect_blobs = redirect_blobs
        self.downloads_fail = downloads_fail  # its download path (a CDN host) answers 503
        self.redirect_to = redirect_to  # a blob redirect's Location as sent, "{digest}" filled in
        self.realm = realm  # the token realm it names; default: its own /token
        self.unknown_401 = unknown_401
        self.lies = 0  # blob bodies still to corrupt
        self.lied = 0
        self.mode = "pass"
        self.seen: Counter[str] = Counter()  # mode -> requests that arrived in it
        self.paths: list[tuple[str, str, str]] = []  # (mode, method, path)
        self.authorizations: list[tuple[str, str]] = []  # (path, Authorization header or "")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer._answer(self)

            do_HEAD = do_GET  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def set(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode

    def lie(self, times: int = 1) -> None:
        with self._lock:
            self.lies = times

    def _lying(self, h: BaseHTTPRequestHandler, path: str, status: int) -> bool:
        with self._lock:
            if self.lies <= 0 or h.command != "GET" or status != 200 or "/blobs/sha256:" not in path:
                return False
            self.lies -= 1
            self.lied += 1
            return True

    def count(self, mode: str) -> int:
        with self._lock:
            return self.seen[mode]

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        with self._lock:
            self.seen[mode] += 1
            self.paths.append((mode, h.command, h.path))
            self.authorizations.append((h.path, h.headers.get("Authorization", "")))
        if mode == "hang":
            self._stopping.wait(HANG_LIMIT_SECONDS)
            h.close_connection = True
            return
        if mode in ("429", "503"):
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down","detail":null}]}\n'
            self._reply(h, int(mode), body, {"Retry-After": str(RETRY_AFTER)} if mode == "429" else {})
            return
        if self.login is not None and h.path.startswith("/token"):
            self._token(h)
        elif h.path.startswith(DOWNLOAD + "/") and self.downloads_fail:
            self._reply(h, 503, b"", {})
        elif h.path.startswith(DOWNLOAD + "/"):
            self._pass(h, h.path.removeprefix(DOWNLOAD))  # a presigned-like URL: no login asked
        elif self.login is not None and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            realm = self.realm or f"{self.url}/token"
            self._reply(h, 401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="fault-upstream"'})
        elif self.redirect_to is not None and h.command == "GET" and "/blobs/sha256:" in h.path:
            digest = h.path.rsplit("/", 1)[1]
            self._reply(h, 307, b"", {"Location": self.redirect_to.format(digest=digest)})
        elif self.redirect_blobs and h.command == "GET" and "/blobs/sha256:" in h.path:
            self._reply(h, 307, b"", {"Location": f"{self.url}{DOWNLOAD}{h.path}"})
        else:
            self._pass(h, h.path)

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        assert self.login is not None
        basic = "Basic " + base64.b64encode(self.login.encode()).decode()
        if h.headers.get("Authorization") != basic:
            self._reply(h, 401, b'{"details":"incorrect username or password"}\n', {})
            return
        self._reply(h, 200, json.dumps({"token": TOKEN, "access_token": TOKEN}).encode(), {})

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _pass(self, h: BaseHTTPRequestHandler, path: str) -> None:
        assert self.target.hostname is not None and self.target.port is not None
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=30)
        try:
            # Every header line as sent (a registry client sends several Accept lines).
            conn.putrequest(h.command, path, skip_host=True, skip_accept_encoding=True)
            for key, value in h.headers.items():
                if key.lower() not in ("connection", "authorization"):
                    conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            if self.unknown_401 and resp.status == 404 and path.startswith("/v2/"):
                resp.read()
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}\n'
                challenge = f'Bearer realm="{self.url}/token",service="fault",error="insufficient_scope"'
                self._reply(h, 401, body, {"WWW-Authenticate": challenge})
                return
            h.send_response_only(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    h.send_header(key, value)
            length = resp.getheader("Content-Length")
            if length is None and h.command != "HEAD":
                h.close_connection = True
            h.end_headers()
            if h.command == "HEAD":
                return
            lying = self._lying(h, path, resp.status)
            while chunk := resp.read(256 * 1024):
                if lying:  # the first byte changed, the length kept
                    chunk, lying = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                h.wfile.write(chunk)
        finally:
            conn.close()
