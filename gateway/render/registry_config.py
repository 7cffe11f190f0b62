"""Distribution `config.yml` for the private registry and for each upstream's pull-through cache.

Plain dicts dumped with yaml, for Distribution v3.1.1 (deployed and tested). Distribution ignores keys
it does not know, so tests/gateway/test_distribution.py checks each key against its source.
Reference: https://distribution.github.io/distribution/about/configuration/
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from gateway.config import FilesystemStorage, GatewaySettings, S3Storage, Upstream

PRIVATE_ROOT = "/private"
CACHE_SCHEDULER_OFF = "0s"


def cache_root(upstream: Upstream) -> str:
    return f"/cache/{upstream.host}"


def storage_section(
    storage: FilesystemStorage | S3Storage, root: str, *, descriptor_cache: bool
) -> dict[str, Any]:
    """Each registry gets its own root, so cache expiry can never delete a private blob
    (distribution/distribution#2367, #4191).

    `descriptor_cache`: Distribution's in-memory blob descriptor cache, which is per process. The private
    registry runs without it: with two replicas or more, a blob or manifest deleted through one replica
    stayed readable through another (which still had its descriptor cached) until that one restarted;
    without it every read checks the repository's link in storage (docs/oci.md: what that costs)."""
    if isinstance(storage, FilesystemStorage):
        driver: dict[str, Any] = {"filesystem": {"rootdirectory": storage.root.rstrip("/") + root}}
    else:
        driver = {
            "s3": {
                "bucket": storage.bucket,
                "regionendpoint": storage.endpoint,
                "region": storage.region,
                "accesskey": storage.access_key,
                "secretkey": storage.secret_key,
                "forcepathstyle": storage.force_path_style,
                "chunksize": storage.chunk_size,
                "rootdirectory": root,
                "secure": storage.endpoint.startswith("https://"),
                "v4auth": True,
            }
        }
    return driver | {
        "delete": {"enabled": True},
        **({"cache": {"blobdescriptor": "inmemory"}} if descriptor_cache else {}),
        # Blob GET/HEAD answered with a 307 to a presigned bucket URL only when asked for (S3Storage.
        # redirect). Safe for private blobs: the router and the registry door's auth run before the
        # request reaches a registry, and the URL (s3-aws driver's RedirectURL: GetObject/HeadObject
        # presigned for 20 minutes, hard-coded in Distribution 3.1.1) names one blob, for minutes.
        "redirect": {"disable": not (isinstance(storage, S3Storage) and storage.redirect)},
    }


BASE_HEADERS = {"X-Content-Type-Options": ("nosniff",)}


def _base(
    settings: GatewaySettings, addr: str, debug_addr: str, root: str, *, descriptor_cache: bool
) -> dict[str, Any]:
    return {
        "version": 0.1,
        # nginx logs every request with door, route and user; the registries log errors only.
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": storage_section(settings.storage, root, descriptor_cache=descriptor_cache),
        "http": {
            "addr": addr,
            # One secret for every replica: an upload's state token must verify on whichever replica
            # receives the next chunk (distribution/distribution#2519, #1599).
            "secret": settings.http_secret,
            # Upload `Location` headers relative to the request: correct behind TLS termination
            # without trusting X-Forwarded-* from the load balancer.
            "relativeurls": True,
            "headers": {k: list(v) for k, v in BASE_HEADERS.items()},
            "draintimeout": "30s",
            # Distribution's own Prometheus metrics (requests, storage actions, a cache's hits and misses
            # against its upstream), relayed by nginx's metrics server. The debug server also serves
            # /debug/vars and pprof: it listens on the overlay network (loopback locally), never published.
            "debug": {"addr": debug_addr, "prometheus": {"enabled": True, "path": "/metrics"}},
        },
        # No storage health check: Distribution wraps its liveness answer `/` in it (registry.go:
        # `health.Handler(alive("/", ...))`), so a storage hiccup would turn `/` into 503 and Swarm's
        # health checks would kill every registry at once, in-flight transfers included.
        "health": {"storagedriver": {"enabled": False}},
    }


# The header a read-only private registry adds to every answer (http.headers), so that the gateway can
# tell its refusal of a write (a bare 405 from the router, handlers/app.go drops the write handlers)
# from any other 405, and answer 503 UNAVAILABLE with Retry-After: a refusal clients retry.
READ_ONLY_HEADER = "X-Owncr-Read-Only"


# The same read-only mode through the environment (Distribution reads REGISTRY_<SECTION>_<KEY> as YAML
# that replaces that key): how the cluster's maintenance switches a running private service without a
# new config object (components/cli/maintenance.py). The `..._READONLY_ENABLED=true` spelling makes
# Distribution 3.1.1 panic at start: the value must be the `readonly` object.
READ_ONLY_ENV = {
    "REGISTRY_STORAGE_MAINTENANCE_READONLY": json.dumps({"enabled": True}),
    "REGISTRY_HTTP_HEADERS": json.dumps({**BASE_HEADERS, READ_ONLY_HEADER: ("true",)}),
}


def private_config(
    settings: GatewaySettings, addr: str, *, debug_addr: str, read_only: bool = False
) -> dict[str, Any]:
    """`read_only`: the maintenance window of the garbage collection (gateway/upkeep/maintenance.py)."""
    config = _base(settings, addr, debug_addr, PRIVATE_ROOT, descriptor_cache=False)
    config["storage"]["maintenance"] = {
        "uploadpurging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False},
        "readonly": {"enabled": read_only},
    }
    if read_only:
        config["http"]["headers"][READ_ONLY_HEADER] = ["true"]
    # An image index is accepted only once every platform manifest it lists is in the repository (the
    # v3.1.1 default, stated because garbage collection relies on it: an index whose platform manifests
    # were collected is refused, never acknowledged half-present).
    config["validation"] = {"manifests": {"indexes": {"platforms": "all"}}}
    return config


def cache_config(
    settings: GatewaySettings, upstream: Upstream, addr: str, remote_url: str, *, debug_addr: str
) -> dict[str, Any]:
    """`remote_url`: the gateway's egress server for this upstream (gateway/render/njs/egress.js), never
    the upstream itself: Distribution 3.1.1 waits on an upstream with no timeout (Go's default transport)."""
    # Several caches share one root (one per node) and maintenance evicts below it
    # (gateway/upkeep/eviction.py): a descriptor one of them cached would outlive an eviction, and the
    # blob it names would answer "unknown" instead of being fetched again. No descriptor cache, then.
    config = _base(settings, addr, debug_addr, cache_root(upstream), descriptor_cache=False)
    # `ttl: 0s` turns Distribution's expiry scheduler off (registry/proxy/proxyregistry.go: a TTL <= 0
    # "never expires"): each process keeps its schedule in memory and rewrites one shared
    # scheduler-state.json, so several caches on one root would lose each other's entries and expire
    # by fetch time, not by use. Maintenance evicts by the nodes' last-pull records instead.
    proxy: dict[str, Any] = {"remoteurl": remote_url, "ttl": CACHE_SCHEDULER_OFF}
    if upstream.username is not None:
        proxy |= {"username": upstream.username, "password": upstream.password}
    config["proxy"] = proxy
    return config


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
