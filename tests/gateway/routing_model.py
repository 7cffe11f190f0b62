"""The routing contract as a plain Python model: (door, method, path, query, content type, client, login)
-> the route the gateway must take, or the refusal it must answer. The rules of docs/architecture.md,
stated once more without nginx or njs, so that test_routing_property.py can compare the real gateway with it
on generated requests (a hand-picked list of cases is what an attacker goes around).

Paths are first normalized as nginx does before any location or router.js sees them: %XX decoded
(%2F included), "." and ".." segments resolved, repeated slashes merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from gateway.config import DOCKER_HUB, GatewaySettings
from gateway.names import (
    MANIFEST_WRITE,
    PING,
    PRIVATE_BLOB,
    PRIVATE_READ,
    PRIVATE_START,
    PRIVATE_WRITE,
    REFERRERS,
    REFUSED,
    cache_route,
    upstream_id,
)

ENDPOINT = re.compile(
    r"^/v2/(.+?)/(manifests/([\w.:+=-]+)|blobs/uploads/?[\w.=-]*|blobs/[\w.:+=-]+|tags/list|referrers/[\w.:+=-]+)$",
    re.ASCII,
)
COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Expect:
    # What the access log's "route" says (gateway/names.py: REFUSED, PING, PRIVATE_READ, cache_route...); None
    # where router.js never runs (nginx answers first) or its pre-login choice does not matter (401).
    route: str | None
    status: int | None = None  # the gateway's own answer (refusals, ping, login); None: the registry's
    code: str | None = None  # the OCI error code of a refusal


def normalize(path: str) -> str:
    """nginx's $uri: percent-decoded, dot segments resolved, slashes merged (a trailing one kept)."""
    decoded = unquote(path)
    out: list[str] = []
    for part in decoded.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    trailing = decoded.endswith("/") or decoded.endswith("/.") or decoded.endswith("/..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def _parse(uri: str) -> tuple[str, str, bool, bool] | None:
    # Whole matches: `$` also matches before a final newline (here as in njs's PCRE engine).
    m = ENDPOINT.fullmatch(uri)
    if m is None or not all(COMPONENT.fullmatch(c) for c in m[1].split("/")):
        return None
    rest = m[2]
    ref = m[3]
    return m[1], rest, rest.startswith("blobs/uploads"), ref is not None and ":" not in ref


def _private(settings: GatewaySettings, name: str) -> str | None:
    for ns in sorted(settings.namespaces, key=len, reverse=True):
        if name == ns or name.startswith(ns + "/"):
            return ns
    return None


def _mount_sources(query: str) -> list[str] | None:
    """`from` values as Go's url.Query decodes them (in keys too); None when a pair cannot be decoded."""
    sources = []
    for pair in re.split(r"[&;]", query) if query else []:
        key, _, value = pair.partition("=")
        if re.search(r"%(?![0-9A-Fa-f]{2})", pair):
            return None
        try:  # router.js decodes as UTF-8 and refuses what is not
            key, value = unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            return None
        if key == "from":
            sources.append(value)
    return sources


def nginx_answer(path: str) -> Expect | None:
    """What nginx answers before any door rule or login: a NUL byte in the URI is a bad request, and
    only /v2/... reaches the router (everything else is the doors' NOT_FOUND, not_found.conf.j2)."""
    if "%00" in path:
        return Expect(None, 400)
    if not normalize(path).startswith("/v2/"):
        return Expect(None, 404, "NOT_FOUND")
    return None


def _cache(settings: GatewaySettings, name: str, rest: str, tag: bool) -> Expect:
    upstream = DOCKER_HUB
    first = name.split("/", 1)[0]
    if "/" in name and first in {u.host for u in settings.upstreams} and first != DOCKER_HUB:
        upstream = first
    variant = "tag" if tag else "blob" if rest.startswith("blobs/") else "plain"
    return Expect(cache_route(upstream_id(upstream), variant))


def registry_door(
    settings: GatewaySettings, method: str, path: str, query: str, content_type: str | None, user: str | None
) -> Expect:
    """`user` is a verified login, or None for a missing or wrong one."""
    if (early := nginx_answer(path)) is not None:
        return early
    if user is None:
        return Expect(None, 401, "UNAUTHORIZED")  # authentication comes before any other answer
    known = {u.name: u for u in settings.users}[user]
    pull, push = set(known.pullable), set(known.push)
    read = method in ("GET", "HEAD")
    uri = normalize(path)
    if uri in ("/v2/", "/v2"):
        return Expect(PING, 200) if read else Expect(REFUSED, 405, "UNSUPPORTED")
    if uri == "/v2/_catalog":
        if not read:
            return Expect(REFUSED, 405, "UNSUPPORTED")
        if set(settings.namespaces) - pull:
            return Expect(REFUSED, 403, "DENIED")
        return Expect(PRIVATE_READ)
    parsed = _parse(uri)
    if parsed is None:
        return Expect(REFUSED, 404, "NAME_INVALID")
    name, rest, upload, tag = parsed
    ns = _private(settings, name)
    if ns is not None:
        if read and ns not in pull:
            return Expect(REFUSED, 403, "DENIED")
        if not read and ns not in push:
            return Expect(REFUSED, 403, "DENIED")
        media = (content_type or "").split(";")[0].strip().lower()
        if not read and media in FORM_TYPES:
            return Expect(REFUSED, 415, "UNSUPPORTED")
        if upload and not read:
            sources = _mount_sources(query)
            if sources is None:
                return Expect(REFUSED, 400, "UNSUPPORTED")
            for source in sources:
                from_ns = _private(settings, source)
                if from_ns is not None and from_ns not in pull:
                    return Expect(REFUSED, 403, "DENIED")
        if rest.startswith("referrers/"):
            return Expect(REFERRERS if read else PRIVATE_WRITE)
        if rest.startswith("manifests/") and method in ("PUT", "DELETE"):
            return Expect(MANIFEST_WRITE)
        if not read:  # the property test sends every write with an empty body: a POST starts bodiless
            return Expect(PRIVATE_START if method == "POST" and upload else PRIVATE_WRITE)
        return Expect(PRIVATE_BLOB if rest.startswith("blobs/") and not upload else PRIVATE_READ)
    if not read:
        return Expect(REFUSED, 403, "DENIED")
    if upload:
        return Expect(PRIVATE_READ)
    return _cache(settings, name, rest, tag)


def mirror_door(settings: GatewaySettings, method: str, path: str, client_allowed: bool) -> Expect:
    if (early := nginx_answer(path)) is not None:
        return early
    if not client_allowed:
        return Expect(REFUSED, 403, "DENIED")
    if method not in ("GET", "HEAD"):
        return Expect(REFUSED, 405, "UNSUPPORTED")
    uri = normalize(path)
    if uri in ("/v2/", "/v2"):
        return Expect(PING, 200)
    if uri == "/v2/_catalog":
        return Expect(REFUSED, 403, "DENIED")
    parsed = _parse(uri)
    if parsed is None:
        return Expect(REFUSED, 404, "NAME_INVALID")
    name, rest, upload, tag = parsed
    if upload:
        return Expect(REFUSED, 404, "BLOB_UPLOAD_UNKNOWN")
    if _private(settings, name) is not None:
        if rest.startswith("manifests/") and not tag:
            return Expect(REFUSED, 500, "UNKNOWN")  # what the cache answers for an unknown digest
        code = "MANIFEST_UNKNOWN" if rest.startswith("manifests/") else "BLOB_UNKNOWN"
        if not rest.startswith(("manifests/", "blobs/")):
            code = "NAME_UNKNOWN"
        return Expect(REFUSED, 404, code)
    return _cache(settings, name, rest, tag)
