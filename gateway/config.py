"""The gateway's settings: one frozen, validated object every renderer reads.

`GatewaySettings` is the contract between the control plane (which builds it from Pulumi config) and the
data plane (which renders nginx, njs and Distribution files from it). Validation happens here, once, so
the renderers can trust every field.

The rules both sides must agree on live here once (`DOCKER_HUB`, `NAME_COMPONENT`, `HOST`, `USER_NAME`,
`GO_DURATION`, `BCRYPT_MAX_BYTES` and their `is_*` checks); settings.py refuses stack config with them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field

from gateway.names import upstream_id

# njs's JavaScript engines (https://nginx.org/en/docs/http/ngx_http_js_module.html#js_engine).
JS_ENGINES = ("njs", "qjs")
_MIN_SECRET = 16

# ---------------------------------------------------------------------------------------------------------
# The rules the stack config (settings.py) shares with the gateway, written once: settings.py checks its
# values with these (and its own messages), so a value the stack accepts is one the gateway renders.
# Check with the `is_*` functions or `fullmatch`: `match` with `$` lets a trailing newline through.

# Docker Hub's host: its cache is served at the root of the mirror door, every other upstream's under
# `/v2/<host>/`.
DOCKER_HUB = "docker.io"
# Distribution's repository-name grammar, one path component:
# https://github.com/distribution/reference/blob/main/regexp.go
NAME_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
# A lowercase DNS name of two or more labels (each at most 63 characters, RFC 1035), with no port and no
# trailing dot. A door's host is an nginx `server_name`, which never holds a port; an upstream's host is
# the first path component of `/v2/<host>/...`, which the router checks against NAME_COMPONENT (no ':').
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_HOST_RULE = "a lowercase DNS name (two or more labels of at most 63 characters, no port)"
# A registry-door login as htpasswd holds it: never ':' (htpasswd's separator) nor a space.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Go's time.ParseDuration, which Distribution reads `proxy.ttl` with (https://pkg.go.dev/time#ParseDuration):
# whole numbers with units, `µs` (the micro sign) included; ASCII digits only.
GO_DURATION = re.compile(r"^(?:[0-9]+(?:ns|us|µs|ms|s|m|h))+$")
# How long a cached image stays unpulled before maintenance evicts it (gateway/upkeep/eviction.py).
DEFAULT_CACHE_TTL = "168h"
# bcrypt reads only the first 72 bytes: a longer password would accept anything that shares its prefix.
BCRYPT_MAX_BYTES = 72


def is_repository_path(value: str) -> bool:
    """`acme` or `team/ops`: one or more NAME_COMPONENTs joined by '/'."""
    return bool(value) and all(NAME_COMPONENT.fullmatch(part) for part in value.split("/"))


def is_host(value: str) -> bool:
    return HOST.fullmatch(value) is not None


def is_user_name(value: str) -> bool:
    return USER_NAME.fullmatch(value) is not None


def is_go_duration(value: str) -> bool:
    return GO_DURATION.fullmatch(value) is not None


_GO_UNIT_NANOSECONDS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_GO_UNIT_NANOSECONDS["h"] = 60 * _GO_UNIT_NANOSECONDS["m"]


def go_duration_seconds(value: str) -> int:
    """Whole seconds of a GO_DURATION (`168h` -> 604800, `1h30m` -> 5400, `1500ms` -> 1), summed in
    nanoseconds as Go does, then truncated: exact for whole seconds, never rounded up."""
    if not is_go_duration(value):
        raise SettingsError(f"{value!r} is no Go duration (e.g. 168h)")
    parts = re.findall(r"([0-9]+)(ns|us|µs|ms|s|m|h)", value)
    return sum(int(number) * _GO_UNIT_NANOSECONDS[unit] for number, unit in parts) // 10**9


class SettingsError(ValueError):
    """A gateway setting is invalid; the message names the field and the offending value."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def _check_namespace(ns: str) -> None:
    _require(
        is_repository_path(ns),
        f"namespace {ns!r} is not a valid repository path (lowercase letters, digits, '.', '_', '-', '/')",
    )


def _check_cidrs(name: str, cidrs: tuple[str, ...]) -> None:
    _require(isinstance(cidrs, tuple), f"{name} must be a tuple of CIDRs, got {type(cidrs).__name__}")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as err:
            raise SettingsError(f"{name}: {cidr!r} is not a CIDR ({err})") from None


@dataclass(frozen=True)
class Upstream:
    """A registry the cache mirrors. `docker.io` is served at the root of the mirror namespace, any
    other host under `/v2/<host>/...` (what containerd sends with `override_path = true`)."""

    host: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _require(is_host(self.host), f"upstream host {self.host!r} is not {_HOST_RULE}")
        _require(
            re.match(r"^https?://[^/\s]+/?$", self.url) is not None,
            f"upstream {self.host}: url {self.url!r} must be http(s)://host[:port] without a path",
        )
        _require(
            (self.username is None) == (self.password is None),
            f"upstream {self.host}: username and password must be given together",
        )

    @property
    def id(self) -> str:
        """The upstream's one id in services, bundle keys, routes and metrics (gateway/names.py)."""
        return upstream_id(self.host)


@dataclass(frozen=True)
class User:
    """A registry-door login. `push` implies `pull` (a push reads blobs and manifests back)."""

    name: str
    password: str = field(repr=False)
    pull: tuple[str, ...] = ()
    push: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(is_user_name(self.name), f"user name {self.name!r} must match {USER_NAME.pattern}")
        _require(len(self.password) >= 8, f"user {self.name}: password must have at least 8 characters")
        _require(
            len(self.password.encode()) <= BCRYPT_MAX_BYTES,
            f"user {self.name}: password longer than {BCRYPT_MAX_BYTES} bytes",
        )
        for label, spaces in (("pull", self.pull), ("push", self.push)):
            _require(isinstance(spaces, tuple), f"user {self.name}: {label} must be a tuple")
            for ns in spaces:
                _check_namespace(ns)

    @property
    def pullable(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.pull + self.push))


@dataclass(frozen=True)
class FilesystemStorage:
    """Local directory (or NFS mount) under which each registry gets its own root."""

    root: str

    def __post_init__(self) -> None:
        _require(self.root.startswith("/"), f"filesystem storage root {self.root!r} must be absolute")


@dataclass(frozen=True)
class S3Storage:
    """An S3-compatible bucket (Cloudflare R2 in production); each registry gets its own prefix."""

    bucket: str
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str = "auto"
    force_path_style: bool = True
    # Multipart part size. R2 wants equal-sized parts; Distribution's minimum is 5 MiB.
    chunk_size: int = 16 * 1024 * 1024
    # Answer an authorised blob GET/HEAD with a 307 to a presigned URL on `endpoint` (Distribution's
    # `storage.redirect`): the client fetches the bytes from the bucket, not through nginx. Only an
    # object store can do this, hence it lives here and not on FilesystemStorage.
    redirect: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.bucket), "s3 storage: bucket is empty")
        _require(
            self.endpoint.startswith(("http://", "https://")), f"s3 endpoint {self.endpoint!r} is no URL"
        )
        _require(
            bool(self.access_key and self.secret_key), "s3 storage: access_key and secret_key are required"
        )
        _require(self.chunk_size >= 5 * 1024 * 1024, "s3 storage: chunk_size must be at least 5 MiB")


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the data plane is rendered from."""

    namespaces: tuple[str, ...]
    users: tuple[User, ...]
    upstreams: tuple[Upstream, ...]
    storage: FilesystemStorage | S3Storage
    http_secret: str = field(repr=False)
    private_replicas: int = 1
    mirror_client_cidrs: tuple[str, ...] = ("127.0.0.0/8",)
    # Sources whose PROXY protocol header is believed (the load balancer's range); empty = no PROXY protocol.
    trusted_proxy_cidrs: tuple[str, ...] = ()
    cache_ttl: str = DEFAULT_CACHE_TTL
    # The mirror's storage budget: maintenance evicts the least recently pulled images beyond it
    # (gateway/upkeep/eviction.py); None: only what cache_ttl says.
    cache_max_gib: int | None = None
    # Hostnames of the two doors in production (locally the doors are told apart by port).
    registry_host: str = "cr.example.com"
    mirror_host: str = "mirror.cr.example.com"
    # How long a verified login and an upstream tag manifest are reused before they are checked again.
    auth_cache_seconds: int = 60
    tag_cache_seconds: int = 10
    # Password checks per second and burst per client address before the registry door answers 429.
    # Verified logins are cached, so in practice this counts failed logins.
    login_rate: int = 5
    login_burst: int = 20
    # Keys the htpasswd salts (gateway/render/htpasswd.py): a deployment secret kept out of every
    # rendered file.
    # Empty: derived from http_secret, which is fine for a local run (a fresh one per run).
    htpasswd_salt_key: str = field(default="", repr=False)
    # The caches' egress (gateway/render/njs/egress.js): an upstream that answers nothing costs a tag
    # read this long (then the cache serves what it has); a blob stream may stall this long between two reads;
    # after a timeout or a 502/503/504 the upstream is left alone this long (a 429: its Retry-After).
    upstream_timeout_seconds: int = 5
    upstream_stream_timeout_seconds: int = 30
    upstream_down_seconds: int = 15
    # nginx's copy of upstream blobs while a fleet pulls them at once (templates/proxy.conf.j2): at most
    # this many MiB per node, each blob kept this many minutes after its last read.
    blob_cache_mib: int = 4096
    blob_cache_minutes: int = 10
    # njs's JavaScript engine for the router (`js_engine`, njs >= 0.8.6): None keeps the module's default
    # (njs 1.0: its own engine; QuickJS is to become the default). The tests run the router on both.
    js_engine: str | None = None

    def __post_init__(self) -> None:
        for name in ("namespaces", "users", "upstreams"):
            _require(isinstance(getattr(self, name), tuple), f"{name} must be a tuple")
        _require(len(self.namespaces) > 0, "namespaces: at least one private namespace is required")
        for ns in self.namespaces:
            _check_namespace(ns)
        _require(len(set(self.namespaces)) == len(self.namespaces), "namespaces: duplicates")
        _require(
            len(self.users) > 0, "users: at least one user is required (the registry door needs a login)"
        )
        names = [u.name for u in self.users]
        _require(len(set(names)) == len(names), f"users: duplicate names in {names}")
        for user in self.users:
            outside = [ns for ns in user.pullable if ns not in self.namespaces]
            _require(not outside, f"user {user.name}: {outside} are not private namespaces {self.namespaces}")
        hosts = [u.host for u in self.upstreams]
        _require(DOCKER_HUB in hosts, f"upstreams: {DOCKER_HUB!r} (served at the mirror root) is required")
        _require(len(set(hosts)) == len(hosts), f"upstreams: duplicate hosts in {hosts}")
        first = {ns.split("/")[0] for ns in self.namespaces}
        clash = first & set(hosts)
        _require(
            not clash, f"namespaces {sorted(clash)} collide with upstream hosts (served under /v2/<host>/)"
        )
        _require(len(self.http_secret) >= _MIN_SECRET, f"http_secret must have at least {_MIN_SECRET} chars")
        _require(1 <= self.private_replicas <= 16, "private_replicas must be between 1 and 16")
        _check_cidrs("mirror_client_cidrs", self.mirror_client_cidrs)
        _check_cidrs("trusted_proxy_cidrs", self.trusted_proxy_cidrs)
        _require(
            is_go_duration(self.cache_ttl),
            f"cache_ttl {self.cache_ttl!r} is no Go duration (e.g. 168h)",
        )
        _require(
            self.cache_max_gib is None or self.cache_max_gib >= 1,
            f"cache_max_gib {self.cache_max_gib} must be at least 1 (None: no budget)",
        )
        for host_field in ("registry_host", "mirror_host"):
            host = getattr(self, host_field)
            _require(is_host(host), f"{host_field} {host!r} is not {_HOST_RULE}")
        _require(self.registry_host != self.mirror_host, "registry_host and mirror_host must differ")
        for int_field in (
            "auth_cache_seconds",
            "tag_cache_seconds",
            "login_rate",
            "login_burst",
            "upstream_timeout_seconds",
            "upstream_stream_timeout_seconds",
            "upstream_down_seconds",
            "blob_cache_mib",
            "blob_cache_minutes",
        ):
            _require(getattr(self, int_field) >= 1, f"{int_field} must be at least 1")
        _require(
            self.js_engine is None or self.js_engine in JS_ENGINES,
            f"js_engine {self.js_engine!r}: use one of {JS_ENGINES} or None (the njs module's default)",
        )

    @property
    def htpasswd_key(self) -> str:
        if self.htpasswd_salt_key:
            return self.htpasswd_salt_key
        return hmac.new(self.http_secret.encode(), b"owncr-htpasswd-salt", hashlib.sha256).hexdigest()

    @property
    def docker_hub(self) -> Upstream:
        return next(u for u in self.upstreams if u.host == DOCKER_HUB)
