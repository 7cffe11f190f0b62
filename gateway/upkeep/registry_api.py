"""A minimal client of the Distribution API, for maintenance: list repositories and tags, read
manifests, delete manifests and tags. It talks to the private registry directly, never through the
doors (maintenance is no user and needs no login): locally to its loopback port; in the cluster each
request is carried by a `Transport` (components/cli/maintenance.py pipes `raw_request` bytes through
`nc` inside the maintenance registry's container and reads them back with `parse_response`).
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.names import INDEX_TYPES, MANIFEST_TYPES

PAGE = 1000
Answer = tuple[int, dict[str, str], bytes]  # status, headers (lower-case names), body
Transport = Callable[[str, str, dict[str, str]], Answer]  # method, path, headers


def raw_request(method: str, path: str, headers: dict[str, str], host: str = "localhost") -> bytes:
    """One HTTP/1.1 request without a body that asks the server to close the connection after it."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Received:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def parse_response(data: bytes, method: str) -> Answer:
    """The answer in `data` (a whole HTTP/1.1 response, chunked or not)."""
    resp = http.client.HTTPResponse(_Received(data), method=method)  # type: ignore[arg-type]
    resp.begin()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


class RegistryApiError(RuntimeError):
    """The registry answered something other than what the call expects."""


def _failure(method: str, path: str, status: int, body: bytes) -> RegistryApiError:
    return RegistryApiError(f"{method} {path}: {status} {body[:300].decode(errors='replace')}")


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    document: dict[str, object]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.document

    @property
    def subject(self) -> str | None:
        """The manifest a referrer (signature, SBOM, attestation) is about, if it is one."""
        subject = self.document.get("subject")
        return str(subject["digest"]) if isinstance(subject, dict) and "digest" in subject else None

    def references(self) -> list[dict[str, object]]:
        """Descriptors this manifest points at: platform manifests of an index, else config + layers."""
        if self.is_index:
            return list(self.document.get("manifests", []))  # type: ignore[arg-type]
        config = self.document.get("config")
        layers = list(self.document.get("layers", []))  # type: ignore[arg-type]
        return ([config] if isinstance(config, dict) else []) + layers


class RegistryApi:
    def __init__(self, base_url: str, timeout: float = 60.0, transport: Transport | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"{base_url!r}: the private registry's plain http://host:port")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.transport = transport or self._http

    def _call(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.transport(method, path, headers or {})

    def _http(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def _expect(self, method: str, path: str, status: int, headers: dict[str, str] | None = None):
        got, answer_headers, body = self._call(method, path, headers)
        if got != status:
            raise _failure(method, path, got, body)
        return answer_headers, body

    def _paged(self, path: str, key: str) -> list[str]:
        """Follows the `Link: <...>; rel="next"` pages of the catalog and tag lists; a 404 (a repository
        whose every tag was deleted since the catalog was read) is an empty list."""
        items: list[str] = []
        next_path: str | None = f"{path}?n={PAGE}"
        while next_path is not None:
            status, headers, body = self._call("GET", next_path)
            if status == 404 and not items:
                return []
            if status != 200:
                raise _failure("GET", next_path, status, body)
            items += json.loads(body).get(key) or []
            link = headers.get("link", "")
            next_path = link[1 : link.index(">")] if link.startswith("<") and 'rel="next"' in link else None
        return items

    def answers(self) -> bool:
        """The API answers (GET /v2/ 200); False while the registry is not listening yet."""
        try:
            return self._call("GET", "/v2/")[0] == 200
        except OSError:
            return False

    def repositories(self) -> list[str]:
        return self._paged("/v2/_catalog", "repositories")

    def tags(self, repository: str) -> list[str]:
        return self._paged(f"/v2/{repository}/tags/list", "tags")

    def manifest(self, repository: str, reference: str) -> Manifest:
        found = self.stored_manifest(repository, reference)
        if found is None:
            raise RegistryApiError(f"GET /v2/{repository}/manifests/{reference}: 404 manifest unknown")
        return found

    def stored_manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest, or None if the registry no longer has it (404)."""
        path = f"/v2/{repository}/manifests/{reference}"
        status, headers, body = self._call("GET", path, {"Accept": ", ".join(MANIFEST_TYPES)})
        if status == 404:
            return None
        if status != 200:
            raise _failure("GET", path, status, body)
        return Manifest(
            digest=headers["docker-content-digest"],
            media_type=headers.get("content-type", "").split(";")[0],
            document=json.loads(body),
        )

    def delete(self, repository: str, reference: str) -> None:
        """A manifest by digest (and every tag naming it), or one tag (Distribution >= 3.0)."""
        self._expect("DELETE", f"/v2/{repository}/manifests/{reference}", 202)
