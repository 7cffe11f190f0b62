"""The data plane's vocabulary: every name that two layers (Python, nginx templates, njs, the Swarm specs,
the tests) must agree on is decided here, once, as Distribution names its routes and errors once
(registry/api/v2/routes.go, errors.go). The renderer hands these names to the templates and writes them
into the njs modules' one generated module (`names.js`, `njs_names`), so no layer spells one again.

- upstream ids: one per upstream, derived from its host; its service, bundle key and routes use it;
- bundle keys and Swarm service names of the three kinds of services;
- routes: the internal locations a door sends a request to (`/_owncr/<route>/...`) and their labels in
  the access log; a cache's routes come from `cache_route`, never from gluing strings together;
- the manifest media types, and the OCI error answers the gateway makes itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

# --- upstreams ---------------------------------------------------------------------------------------


def upstream_id(host: str) -> str:
    """`ghcr.io` -> `ghcr-io`, `registry:5000` -> `registry-5000`: the upstream's one id, valid in a
    Swarm service name, a DNS label, an nginx upstream name and a URI segment (never a `_`, which
    separates a cache route's parts)."""
    return re.sub(r"[^a-z0-9]+", "-", host)


# --- services ----------------------------------------------------------------------------------------

# Bundle keys: which service a rendered file belongs to (locally each private replica is its own process).
NGINX_KEY = "nginx"
PRIVATE_KEY = "private"
CACHE_KEY_PREFIX = "cache-"


def cache_key(upstream: str) -> str:
    """Bundle key of the cache of upstream id `upstream`."""
    return CACHE_KEY_PREFIX + upstream


def private_key(replica: int) -> str:
    """Bundle key of a private registry replica (production has one service for every replica)."""
    return PRIVATE_KEY if replica == 0 else f"{PRIVATE_KEY}-{replica + 1}"


# Swarm service names, which are also the DNS names on the overlay network.
NGINX_SERVICE = "owncr-gateway"
PRIVATE_SERVICE = "owncr-registry-private"
CACHE_SERVICE_PREFIX = "owncr-registry-cache-"


def cache_service(upstream: str) -> str:
    return CACHE_SERVICE_PREFIX + upstream


# --- routes ------------------------------------------------------------------------------------------

INTERNAL = "/_owncr/"  # prefix of every internal location; a door's router returns only URIs below it
ANSWER = "answer"  # nginx answers itself: /_owncr/answer/<status>, /answer/ping, /answer/missed, ...
PING = "ping"
MISSED, FAILED = "missed", "failed"  # the mirror door's answers for private names: a cache's 404, 500
REFUSED = "refused"  # the access log's route of a refusal
AUTH = "auth"  # the registry door's login check
PRIVATE_READ = "private_read"  # manifests, tag lists, the catalog, upload status: small answers, bounded
PRIVATE_BLOB = "private_blob"  # blob GET/HEAD: a transfer, bounded between two reads
PRIVATE_WRITE = "private_write"
PRIVATE_START = "private_start"  # an upload's start without a body: answered at once, so bounded and retried
MANIFEST_WRITE = "manifest_write"  # referrers.js stores the manifest and keeps its subject's index
REFERRERS = "referrers"  # GET /v2/<name>/referrers/<digest>, answered by referrers.js
REFERRERS_INDEX = "referrers_index"  # referrers.js's own reads and writes through the private registry
REFERRERS_MANIFEST = "referrers_manifest"
REFERRERS_PUT = "referrers_put"
EGRESS = "egress"  # an egress server's locations: /_owncr/egress/<outcome>
VIA = "via"  # URLs an upstream handed out, kept on its egress: /_owncr/via/<kind>/<signature>/...

# How a door's request for upstream content is cached: a tag manifest is micro-cached, a blob coalesced,
# the rest (manifest by digest, tag list) goes straight on.
CacheVariant = Literal["plain", "tag", "blob"]
CACHE_VARIANTS: tuple[CacheVariant, ...] = ("plain", "tag", "blob")


def cache_route(upstream: str, variant: CacheVariant) -> str:
    """`cache_docker-io`, `cache_docker-io_tag`, `cache_docker-io_blob`: unambiguous, since an upstream
    id never holds a `_`."""
    return f"cache_{upstream}" if variant == "plain" else f"cache_{upstream}_{variant}"


def egress_route(upstream: str) -> str:
    """The access log's route of a request through an upstream's egress server."""
    return f"egress_{upstream}"


def uri(route: str, rest: str = "/") -> str:
    """The internal URI of a route: `/_owncr/private_read/` (a location prefix), `/_owncr/answer/404`,
    `/_owncr/auth` (rest "")."""
    return f"{INTERNAL}{route}{rest}"


# The egress's outcomes (egress.js next()): asked and answered whole, asked and streamed, answered from
# its memory of a rate limit (429) or an outage (503) without asking, or refused (a forged via URL; a
# target that is not a public address, egress.js checkTarget).
EGRESS_ANSWER, EGRESS_STREAM, EGRESS_FORGED, EGRESS_INSIDE = "answer", "stream", "forged", "inside"
# A cache's ping (GET /v2/), which tells it the token realm its upstream login is for: its own location,
# so that the challenge is kept (locally and in the store) and answered again while the upstream fails.
EGRESS_PING = "ping"
REMEMBERED = {429: "remembered_429", 503: "remembered_503"}
# A cache's ping answered from that memory: with the upstream's last token challenge, when one is known.
CHALLENGED = {429: "challenged_429", 503: "challenged_503"}
VIA_REALM, VIA_REDIRECT = "realm", "redirect"
# A blob path whose bytes the egress checks against its digest (egress.js verified): sha256 only, what
# njs's crypto offers. A door's blob cache keeps no other (nginx.conf.j2's map).
CHECKED_BLOB = r"/blobs/sha256:([0-9a-f]{64})$"


def origin_key(url: str) -> str:
    """`https://Registry-1.docker.io` -> `registry-1.docker.io:443`: an origin as egress.js compares
    targets with the trusted ones (lower case, the scheme's port filled in)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


# --- the store: how nodes agree (gateway/render/njs/store.js, docs/architecture.md) -------------------

# The gateway's own objects on the shared storage live under this prefix (a bucket key prefix, or a
# directory below the filesystem root), beside the registries' roots /private and /cache/<host>.
STORE_PREFIX = "owncr"
# A lock's lease: how long a holder that died (its node lost) keeps the others waiting.
STORE_LEASE_SECONDS = 30
# The longest the private registry may take to answer a manifest, tag-list or catalog request (or an
# index write) before nginx asks another replica: a replica on a node lost without a reset (its pooled
# connections hang) costs a read this long, not the 900 s a transfer may idle.
PRIVATE_ANSWER_SECONDS = 10
# The longest one write under a lease may take (the referrers routes' read timeout): a holder starts
# its last write only with this much lease left (plus clock drift).
STORE_WRITE_SECONDS = PRIVATE_ANSWER_SECONDS
# The mirror's last-pull records (gateway/render/njs/pulls.js, read by gateway/upkeep/eviction.py): one
# object per pulled manifest, `<STORE_PREFIX>/<STORE_PULLS>/<upstream id>/<repository>/<sha256 hex>`,
# whose modification time is that manifest's last pull through any node.
STORE_PULLS = "pulls"
# How often each nginx writes the pulls it saw; a node that dies loses at most this much of them.
PULLS_FLUSH_SECONDS = 10
# A node writes one manifest's record at most this often: eviction counts in cacheTtl (hours, days).
PULLS_REFRESH_SECONDS = 3600


# --- media types and errors --------------------------------------------------------------------------

# The manifest media types a registry client asks for, most capable first (what `Accept` lists).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
OCI_INDEX = MANIFEST_TYPES[0]

# The answers the gateway makes itself, by name: (OCI error code, message). A message may name
# `{fields}` the caller fills in. The router's refusals that name a user or a namespace build their
# message where they are decided, with these codes.
ERRORS: dict[str, tuple[str, str]] = {
    "backend_failed": ("UNKNOWN", "the registry failed; see its log"),
    "backend_unavailable": ("UNAVAILABLE", "the registry is unavailable; retry later"),
    "read_only": (
        "UNAVAILABLE",
        "pushes are paused for a few minutes while the registry collects garbage; retry later",
    ),
    "unsupported": ("UNSUPPORTED", "the operation is unsupported"),
    "manifest_too_big": ("MANIFEST_INVALID", "manifest larger than 4 MiB"),
    "subject_invalid": ("MANIFEST_INVALID", "subject is not a descriptor with a valid digest"),
    "not_mirrored": (
        "UNAVAILABLE",
        "the upstream registry is not answering or is rate limiting, and this is not mirrored yet; "
        "retry later",
    ),
    "upstream_rate_limited": ("TOOMANYREQUESTS", "{host} is rate limiting; retry later"),
    "upstream_down": ("UNAVAILABLE", "{host} is not answering; retry later"),
    "forged": ("DENIED", "not a URL this egress handed out"),
    "inside": ("DENIED", "the upstream named a target that is not a public address"),
    "not_api": ("NOT_FOUND", "not a registry API path"),
    "name_invalid": ("NAME_INVALID", "not a registry API path"),
    "unauthorized": ("UNAUTHORIZED", "authentication required"),
    "too_many_logins": ("TOOMANYREQUESTS", "too many failed logins from this address; retry later"),
    "manifest_unknown": ("MANIFEST_UNKNOWN", "manifest unknown"),
    "blob_unknown": ("BLOB_UNKNOWN", "blob unknown to registry"),
    "name_unknown": ("NAME_UNKNOWN", "repository name not known to registry"),
    "digest_invalid": ("DIGEST_INVALID", "provided digest did not match uploaded content"),
}


def error_body(name: str, detail: object = None, **fields: str) -> str:
    """An error answer's body, as Distribution writes one: compact JSON and a newline."""
    code, message = ERRORS[name]
    error = {"code": code, "message": message.format(**fields), "detail": detail}
    return json.dumps({"errors": [error]}, separators=(",", ":")) + "\n"


def njs_names(upstreams: Iterable[str], hub: str, name_component: str) -> str:
    """names.js, the njs modules' view of this vocabulary (imported by owncr.js): the internal URIs,
    the error table, each upstream's id and cache routes (by host: a mirror path's first segment), and
    the repository-name grammar the router checks paths with (gateway/config.py's, as a pattern)."""
    ids = {host: upstream_id(host) for host in upstreams}
    names = {
        "internal": INTERNAL,
        "nameComponent": name_component,
        "routes": {
            name: route
            for name, route in (
                ("answer", ANSWER),
                ("ping", PING),
                ("missed", MISSED),
                ("failed", FAILED),
                ("refused", REFUSED),
                ("privateRead", PRIVATE_READ),
                ("privateBlob", PRIVATE_BLOB),
                ("privateWrite", PRIVATE_WRITE),
                ("privateStart", PRIVATE_START),
                ("manifestWrite", MANIFEST_WRITE),
                ("referrers", REFERRERS),
                ("referrersIndex", REFERRERS_INDEX),
                ("referrersManifest", REFERRERS_MANIFEST),
                ("referrersPut", REFERRERS_PUT),
                ("egress", EGRESS),
                ("via", VIA),
            )
        },
        "egress": {
            "answer": EGRESS_ANSWER,
            "ping": EGRESS_PING,
            "stream": EGRESS_STREAM,
            "forged": EGRESS_FORGED,
            "inside": EGRESS_INSIDE,
            "remembered": {str(status): outcome for status, outcome in REMEMBERED.items()},
            "challenged": {str(status): outcome for status, outcome in CHALLENGED.items()},
            "realm": VIA_REALM,
            "redirect": VIA_REDIRECT,
        },
        "ociIndex": OCI_INDEX,
        "checkedBlob": CHECKED_BLOB,
        "store": {
            "prefix": STORE_PREFIX,
            "leaseSeconds": STORE_LEASE_SECONDS,
            "writeSeconds": STORE_WRITE_SECONDS,
            "pulls": STORE_PULLS,
        },
        "errors": {name: {"code": code, "message": message} for name, (code, message) in ERRORS.items()},
        "hub": ids[hub],
        "upstreams": {
            upstream: {"host": host, "routes": {v: cache_route(upstream, v) for v in CACHE_VARIANTS}}
            for host, upstream in sorted(ids.items())
        },
        "upstreamIds": {host: upstream for host, upstream in sorted(ids.items())},
    }
    return (
        "// Generated by gateway/render/nginx.py from gateway/names.py: do not edit.\n"
        f"export default {json.dumps(names, indent=1, sort_keys=True)};\n"
    )
