"""moto's S3 server for the client tests, in front of it a check of presigned URLs as S3 and R2 make it,
and a record of every request that reached the bucket.

moto (5.2) accepts any signature and never looks at a presigned URL's expiry, so a test could not tell
a valid URL from an expired or forged one. `PresignCheck` recomputes the AWS Signature V4 of every
request signed in its query string (`X-Amz-Signature`: what Distribution's `RedirectURL` hands out) from
the bucket's secret key, and refuses, with S3's error codes, a URL whose signature does not match, that
is used after `X-Amz-Date + X-Amz-Expires`, or that also carries an `Authorization` header (S3: "Only one
auth mechanism allowed"). Requests signed in headers are checked only below the gateway's store prefix
(store.js's own requests); the registries' API calls pass unchecked.
Reference: https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.local.ports import free_port
from gateway.names import STORE_PREFIX

ACCESS_KEY = "owncr-test-key"
SECRET_KEY = "owncr-test-secret"  # noqa: S105 - the test bucket's key, known to the checker
# The endpoint's host differs from the doors' (127.0.0.1), as R2's does in production: HTTP clients
# (Go's net/http) drop Authorization on a redirect to another host, but keep it for the same host on
# another port, which would hide what production does.
S3_HOST = "localhost"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Seen:
    """One request that reached the S3 server."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    status: int

    @property
    def presigned(self) -> bool:
        return "X-Amz-Signature" in self.query


def _uri_encode(value: str) -> str:
    return quote(value, safe="-_.~")


def signature_v4(secret: str, method: str, raw_path: str, query: list[tuple[str, str]], host: str) -> str:
    """The signature S3 expects for a request presigned with `X-Amz-SignedHeaders=host`."""
    params = dict(query)
    canonical_query = "&".join(
        f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(query) if k != "X-Amz-Signature"
    )
    signed = params["X-Amz-SignedHeaders"]
    if signed != "host":
        raise ValueError(f"only host-signed URLs are checked, got {signed!r}")
    canonical = "\n".join([method, raw_path, canonical_query, f"host:{host}", "", signed, "UNSIGNED-PAYLOAD"])
    _, date, region, service, _ = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


_HEADER_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=[^/]+/(?P<scope>\d{8}/[^/]+/s3/aws4_request), "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def header_signature_v4(secret: str, method: str, raw_path: str, headers: dict[str, str]) -> str | None:
    """The signature S3 expects for a request signed in its `Authorization` header (no query string),
    or None when that header is not an AWS Signature V4 one."""
    m = _HEADER_AUTH.fullmatch(headers.get("authorization", ""))
    if m is None:
        return None
    signed = m["signed"]
    lines = [f"{name}:{headers.get(name, '').strip()}" for name in signed.split(";")]
    payload = headers.get("x-amz-content-sha256", "")
    canonical = "\n".join([method, raw_path, "", *lines, "", signed, payload])
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers.get("x-amz-date", ""),
            m["scope"],
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in m["scope"].split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _s3_error(start_response: Callable[..., Any], status: str, code: str, message: str) -> list[bytes]:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
    body += "</Error>"
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body.encode()]


class PresignCheck:
    """WSGI middleware: checks presigned requests (see the module docstring) and records every request.
    `clock_skew` moves the checker's clock (a URL used that much later), nothing else's."""

    def __init__(self, app: WsgiApp, secret: str) -> None:
        self.app = app
        self.secret = secret
        self.clock_skew = dt.timedelta(0)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
        raw_path = raw_uri.split("?", 1)[0]
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        status: list[int] = []

        def recording_start(status_line: str, *args: Any) -> Any:
            status.append(int(status_line.split()[0]))
            return start_response(status_line, *args)

        try:
            refusal = self._refusal(environ["REQUEST_METHOD"], raw_path, query, headers)
            if refusal is not None:
                return _s3_error(recording_start, *refusal)
            return self.app(environ, recording_start)
        finally:
            seen = Seen(environ["REQUEST_METHOD"], raw_path, dict(query), headers, status[0] if status else 0)
            with self._lock:
                self.seen.append(seen)

    def _refusal(
        self, method: str, raw_path: str, query: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[str, str, str] | None:
        params = dict(query)
        if "X-Amz-Signature" not in params:
            return self._header_refusal(method, raw_path, headers)
        if "authorization" in headers:
            return ("400 Bad Request", "InvalidArgument", "Only one auth mechanism allowed")
        expected = signature_v4(self.secret, method, raw_path, query, headers.get("host", ""))
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            return ("403 Forbidden", "SignatureDoesNotMatch", "The request signature does not match")
        signed_at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        expires = signed_at + dt.timedelta(seconds=int(params["X-Amz-Expires"]))
        if dt.datetime.now(dt.UTC) + self.clock_skew > expires:
            return ("403 Forbidden", "AccessDenied", "Request has expired")
        return None

    def _header_refusal(
        self, method: str, raw_path: str, headers: dict[str, str]
    ) -> tuple[str, str, str] | None:
        """The gateway's own store requests (below STORE_PREFIX) must carry a valid header signature,
        as S3 and R2 demand; the registries' and boto3's requests pass unchecked (see the docstring)."""
        if f"/{STORE_PREFIX}/" not in raw_path:
            return None
        expected = header_signature_v4(self.secret, method, raw_path, headers)
        m = _HEADER_AUTH.fullmatch(headers.get("authorization", ""))
        if expected is None or m is None or not hmac.compare_digest(expected, m["signature"]):
            return ("403 Forbidden", "SignatureDoesNotMatch", "The request signature does not match")
        return None

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)


class _QuietHandler(MotoRequestHandler):
    """No line per request on the test's log: `PresignCheck.seen` records them."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class S3Server:
    """moto behind `PresignCheck` on 127.0.0.1, addressed as http://localhost:PORT, with one bucket.

    moto keeps its buckets per process, not per server: each server gets a bucket of its own name."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bucket = f"owncr-{secrets.token_hex(4)}"
        self.check = PresignCheck(DomainDispatcherApplication(create_backend_app), SECRET_KEY)
        self.endpoint = f"http://{S3_HOST}:{self.port}"
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> S3Server:
        self._server = make_server(
            "127.0.0.1", self.port, self.check, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def keys(self) -> Iterator[str]:
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    @property
    def credentials(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
