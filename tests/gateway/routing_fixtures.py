"""Helpers of the routing tests (test_routing*.py): a tiny HTTP client that can pick its source address
and send a PROXY protocol header, OCI-error assertions, and an in-memory image pushed with raw
Distribution API calls (no client binaries: these tests are about the gateway's decisions)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
API_VERSION = "registry/2.0"
HTTP_SECRET = "gateway-test-http-secret"  # noqa: S105 (a test value, not a credential)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(
    url: str,
    method: str = "GET",
    *,
    auth: tuple[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str | None = None,
    proxy_from: str | None = None,
    host: str | None = None,
    timeout: float = 15.0,
) -> Response:
    """One request on a fresh connection from `source` (any 127.x address); with `proxy_from`, the
    connection starts with a PROXY protocol v1 header claiming that client address; `host` sets the
    Host header (the production doors are told apart by it)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sock = socket.create_connection((parts.hostname, parts.port), timeout, (source, 0) if source else None)
    if proxy_from is not None:
        sock.sendall(f"PROXY TCP4 {proxy_from} {parts.hostname} 40000 {parts.port}\r\n".encode())
    conn.sock = sock
    all_headers = dict(headers or {})
    if auth is not None:
        all_headers["Authorization"] = basic(*auth)
    if host is not None:
        all_headers["Host"] = host
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_oci_error(resp: Response, status: int, code: str, *, head: bool = False) -> dict[str, object]:
    """A refusal: right status, the API-version header, and (except for HEAD) an OCI error body."""
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.headers.get_all("Docker-Distribution-Api-Version") == [API_VERSION]
    if head:
        assert resp.body == b""
        return {}
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    error = resp.json()["errors"][0]  # type: ignore[index]
    assert isinstance(error, dict) and error["code"] == code, resp.body
    assert error["message"]
    return error


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TinyImage:
    """One layer + config + OCI manifest, small enough to push with three requests per blob."""

    layer: bytes
    config: bytes
    manifest: bytes

    @classmethod
    def make(cls, label: str, size: int = 0) -> TinyImage:
        """`size` more bytes of layer, pseudo-random from `label` (distinct labels share no layer)."""
        layer = f"layer of {label}\n".encode() + hashlib.shake_256(label.encode()).digest(size)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest_of(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        return cls(layer, config, manifest)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    def push(
        self,
        base: str,
        name: str,
        tag: str,
        auth: tuple[str, str] | None = None,
        *,
        host: str | None = None,
        proxy_from: str | None = None,
    ) -> None:
        """Monolithic blob uploads (POST then PUT ?digest=) and a manifest PUT, each status checked."""
        via = {"auth": auth, "host": host, "proxy_from": proxy_from}
        for blob in (self.layer, self.config):
            start = request(f"{base}/v2/{name}/blobs/uploads/", "POST", body=b"", **via)
            assert start.status == 202, (start.status, start.body)
            location = start.headers["Location"]
            target = location if location.startswith("http") else base + location
            sep = "&" if "?" in target else "?"
            put = request(
                f"{target}{sep}digest={digest_of(blob)}",
                "PUT",
                body=blob,
                headers={"Content-Type": "application/octet-stream"},
                **via,
            )
            assert put.status == 201, (put.status, put.body)
        done = request(
            f"{base}/v2/{name}/manifests/{tag}",
            "PUT",
            body=self.manifest,
            headers={"Content-Type": OCI_MANIFEST},
            **via,
        )
        assert done.status == 201, (done.status, done.body)

    def pulls_from(self, base: str, name: str, ref: str, auth: tuple[str, str] | None = None) -> bool:
        """The manifest by `ref` (this one, byte for byte) and every blob it names, each checked
        against its digest."""
        got = request(f"{base}/v2/{name}/manifests/{ref}", auth=auth, headers={"Accept": OCI_MANIFEST})
        if got.status != 200 or got.body != self.manifest:
            return False
        for blob in (self.config, self.layer):
            resp = request(f"{base}/v2/{name}/blobs/{digest_of(blob)}", auth=auth)
            if resp.status != 200 or digest_of(resp.body) != digest_of(blob):
                return False
        return True
