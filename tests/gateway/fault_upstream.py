"""An upstream that can be made to fail: an HTTP server on a loopback port in front of a real registry
(the Docker Hub stand-in), which passes reads through, or hangs (the connection accepted, no answer
ever), or answers 429 with a Retry-After, or 503, as the test sets it. It counts what reached it in each
mode; the registry behind it keeps its own access log of what it was really asked."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("pass", "hang", "429", "503")
# A hung request is held at most this long (the test's own bound), or until the server stops.
HANG_LIMIT_SECONDS = 120.0
RETRY_AFTER = 30


class FaultUpstream:
    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.mode = "pass"
        self.seen: Counter[str] = Counter()  # mode -> requests that arrived in it
        self.paths: list[tuple[str, str, str]] = []  # (mode, method, path)
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

    def count(self, mode: str) -> int:
        with self._lock:
            return self.seen[mode]

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        with self._lock:
            self.seen[mode] += 1
            self.paths.append((mode, h.command, h.path))
        if mode == "hang":
            self._stopping.wait(HANG_LIMIT_SECONDS)
            h.close_connection = True
            return
        if mode in ("429", "503"):
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down","detail":null}]}\n'
            h.send_response(int(mode))
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            if mode == "429":
                h.send_header("Retry-After", str(RETRY_AFTER))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
            return
        self._pass(h)

    def _pass(self, h: BaseHTTPRequestHandler) -> None:
        assert self.target.hostname is not None and self.target.port is not None
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=30)
        try:
            # Every header line as sent (a registry client sends several Accept lines).
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for key, value in h.headers.items():
                if key.lower() != "connection":
                    conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
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
            while chunk := resp.read(256 * 1024):
                h.wfile.write(chunk)
        finally:
            conn.close()
