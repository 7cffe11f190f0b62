"""Stack configuration: read once from `pulumi.Config("owncr")`, validated, returned as frozen dataclasses.

`load()` is the only entry point. Every bad value raises `ConfigError` at preview time, naming the key,
the value and what is allowed. Rules the gateway must agree with (host and user names, namespaces, Go
durations, bcrypt's limit) are gateway/config.py's, checked here with this module's messages. Defaults
are not repeated here: they live only in Pulumi.yaml, which the Pulumi CLI merges into the stack config
before the program runs (the unit tests' `stack_config` does the same merge). The list of known keys is
read from Pulumi.yaml too, so a typo such as `owncr:nodecount` is rejected instead of silently ignored.

Provider credentials never pass through here: `digitalocean:token` and `cloudflare:apiToken` (set with
`pulumi config set --secret`) or the providers' environment variables. `load()` only checks that such a
value, when present, is a secret and that nobody put a credential into plain `owncr:` config.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pulumi
import yaml
from pulumi.runtime import config as runtime_config

from gateway.config import (
    BCRYPT_MAX_BYTES,
    DOCKER_HUB,
    NAME_COMPONENT,
    SettingsError,
    is_go_duration,
    is_host,
    is_user_name,
)
from gateway.upkeep.retention import RetentionRule, check_rules, rule_from_mapping

PROJECT = "owncr"
PROJECT_FILE = Path(__file__).resolve().parent / "Pulumi.yaml"

# DigitalOcean regions that accept new droplets. Source: the `Region` enum of pulumi_digitalocean 4.84.1
# (`_enums.py`, generated from the provider schema) minus nyc2, ams2 and sfo1, which the DigitalOcean API
# lists with `"available": false` (https://docs.digitalocean.com/platform/regional-availability/), plus
# atl1, opened in 2024 and not yet in the enum.
REGIONS = ("ams3", "atl1", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo2", "sfo3", "sgp1", "syd1", "tor1")

# Droplet size slugs: the shape of every CPU size in the `DropletSlug` enum of pulumi_digitalocean 4.84.1
# (family-Nvcpu-N(gb|mb)[-Ngb][-intel|-amd], or c-N[-intel]; a unit test checks the enum against it), so
# sizes DigitalOcean adds later in the same families pass too. Left out on purpose: GPU sizes and the
# legacy `1gb`-style slugs.
SIZE_PATTERN = re.compile(
    r"^(?:(?:s|c|c2|g|gd|m|m3|m6|so|so1_5)-\d+vcpu-\d+(?:gb|mb)(?:-\d+gb)?(?:-intel|-amd)?|c-\d+(?:-intel)?)$"
)
NODE_COUNTS = (1, 3, 5)  # Raft needs a majority: 1 (throwaway), 3 survives one loss, 5 survives two
# R2Bucket.location and .jurisdiction values of pulumi_cloudflare 6.23.1 ("" = let Cloudflare choose;
# jurisdiction "us" left out: it has no S3 endpoint host of its own that we could name).
R2_LOCATIONS = ("", "apac", "eeur", "enam", "weur", "wnam", "oc")
R2_JURISDICTIONS = ("default", "eu", "fedramp")
NFS_MIN_GIB = 50  # digitalocean.Nfs.size minimum (pulumi_digitalocean 4.84.1 docstring)
PLATFORMS = ("digitalocean", "local")
STORAGE_KINDS = ("r2", "nfs")

# `library` is Docker Hub's implicit namespace (`nginx` means `library/nginx`): owning it privately would
# shadow every official image.
RESERVED_NAMESPACES = ("library",)
STACK_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
PINNED_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9._/:-]*(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?@sha256:[0-9a-f]{64}$"
)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SSH_PUBLIC_KEY = re.compile(
    r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/]+={0,3}(?: \S.*)?$"
)
UBUNTU_IMAGE = re.compile(r"^ubuntu-(\d\d)-(\d\d)-x64$")
DOCKER_CE_VERSION = re.compile(r"^\d+:\d+\.\d+\.\d+-\d+~ubuntu\.(\d\d\.\d\d)~[a-z]+$")
RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
WORLD = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
MIN_PASSWORD_LENGTH = 12
PROVIDER_SECRETS = (
    "digitalocean:token",
    "cloudflare:apiToken",
    "cloudflare:apiKey",
    "cloudflare:apiUserServiceKey",
)
CREDENTIAL_WORDS = re.compile(r"token|secret|password|apikey|api_key|accesskey|privatekey", re.IGNORECASE)
SECRET_KEYS = ("userPasswords", "dockerHubToken", "alertSlackWebhook")  # secret: true in Pulumi.yaml


class ConfigError(pulumi.RunError):
    """A stack config value that owncr refuses; RunError makes the CLI print the message without a trace."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        shown = value if isinstance(value, str) else json.dumps(value)
        super().__init__(f"{_full(key)} = {shown!s}: {allowed}")
        self.key = key
        self.allowed = allowed


# Variables the docker provider reads as its own defaults (kreuzwerker/terraform-provider-docker v4,
# provider.go and config.go), which the explicit provider owncr configures does not switch off:
# DOCKER_CONTEXT replaces the host with the context's endpoint, DOCKER_CERT_PATH next to the explicit
# certificates fails every call ("cert_path must not be specified"), and DOCKER_*_MATERIAL give the
# local stack's socket connection TLS material it must not have. DOCKER_HOST is harmless: the host is set.
DOCKER_PROVIDER_ENV = (
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_CA_MATERIAL",
    "DOCKER_CERT_MATERIAL",
    "DOCKER_KEY_MATERIAL",
)


class DeployerEnvironmentError(pulumi.RunError):
    """The deployer's environment would change what a provider connects to."""


def check_deployer_environment(environ: Mapping[str, str]) -> None:
    """Refuse variables that would silently redirect or break the docker provider."""
    found = [name for name in DOCKER_PROVIDER_ENV if environ.get(name)]
    if found:
        raise DeployerEnvironmentError(
            f"{', '.join(found)} set in the environment of `pulumi`: the docker provider would read "
            f"{'them' if len(found) > 1 else 'it'} instead of (or next to) the swarm connection owncr "
            f"configures. Run pulumi without {'them' if len(found) > 1 else 'it'}, e.g. "
            f"`env -u {' -u '.join(found)} pulumi up`."
        )


def _full(key: str) -> str:
    return key if ":" in key or key.startswith("(") else f"{PROJECT}:{key}"


# ---------------------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class User:
    name: str
    pull: tuple[str, ...]
    push: tuple[str, ...]


@dataclass(frozen=True)
class Upstream:
    host: str  # "docker.io" is Docker Hub, served at the root of the mirror namespace
    url: str


@dataclass(frozen=True)
class Images:
    nginx: str
    registry: str


@dataclass(frozen=True)
class R2:
    account_id: str
    location: str | None  # None: Cloudflare chooses
    jurisdiction: str
    # Registries answer authorised blob GET/HEAD with a 307 to a presigned URL on s3_endpoint.
    blob_redirect: bool

    @property
    def s3_endpoint(self) -> str:
        # Jurisdiction buckets live on their own host: https://developers.cloudflare.com/r2/reference/data-location/
        infix = "" if self.jurisdiction == "default" else f"{self.jurisdiction}."
        return f"https://{self.account_id}.{infix}r2.cloudflarestorage.com"


@dataclass(frozen=True)
class Nfs:
    size_gib: int


@dataclass(frozen=True)
class Cloud:
    """Everything only the `digitalocean` platform needs."""

    region: str
    domain: str
    mirror_domain: str
    node_count: int
    node_size: str
    node_image: str
    vpc_cidr: str
    admin_cidrs: tuple[str, ...]
    allow_world_admin_access: bool
    storage: R2 | Nfs
    cloudflare_zone_id: str
    ssh_public_key: str | None  # None: SwarmCluster generates a key pair
    roll_nodes: tuple[int, ...]
    docker_version: str
    monitoring_alerts: bool
    alert_emails: tuple[str, ...]
    alert_slack_channel: str | None  # None: alerts by e-mail only


@dataclass(frozen=True)
class Local:
    """Everything only the `local` platform needs."""

    registry_port: int
    mirror_port: int


@dataclass(frozen=True)
class Registry:
    """What the registry services need on either platform (the gateway's GatewaySettings minus secrets)."""

    namespaces: tuple[str, ...]
    users: tuple[User, ...]
    upstreams: tuple[Upstream, ...]  # docker.io first
    images: Images
    private_replicas: int
    cache_ttl: str
    mirror_client_cidrs: tuple[str, ...]
    docker_hub_username: str | None
    retention: tuple[RetentionRule, ...] = ()
    cache_max_gib: int | None = None  # None: no size budget, only cacheTtl


@dataclass(frozen=True)
class Secrets:
    """Secret config, each value already wrapped with `Output.secret` so it stays secret wherever it goes."""

    user_passwords: Mapping[str, pulumi.Output[str]]
    docker_hub_token: pulumi.Output[str] | None
    alert_slack_webhook: pulumi.Output[str] | None = None
    # Users without a configured password (only the `local` platform allows that: the program generates
    # one and exports it as a secret output, so trying owncr needs no step by hand).
    generated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    stack: str
    platform: Literal["digitalocean", "local"]
    registry: Registry
    secrets: Secrets
    cloud: Cloud | None  # set iff platform == "digitalocean"
    local: Local | None  # set iff platform == "local"


# ---------------------------------------------------------------------------------------------------------
# Reading


def known_keys() -> dict[str, dict[str, Any]]:
    """The project's config schema: key -> declaration, from Pulumi.yaml (the one home of defaults)."""
    project = yaml.safe_load(PROJECT_FILE.read_text(encoding="utf-8"))
    return {key: decl for key, decl in project["config"].items() if ":" not in key}


class _Raw:
    """Typed access to raw config strings, converting every parse failure into a ConfigError."""

    def __init__(self) -> None:
        self._config = pulumi.Config(PROJECT)

    def _value(self, key: str) -> str:
        value = self._config.get(key)
        if value is None:
            # The CLI fills every key that has a default; only keys without one can be missing.
            raise ConfigError(key, "(unset)", f"set it with `pulumi config set {key} ...`")
        return value

    def string(self, key: str) -> str:
        return self._value(key)

    def integer(self, key: str) -> int:
        value = self._value(key)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(key, value, "an integer is required") from None

    def boolean(self, key: str) -> bool:
        value = self._value(key)
        if value not in ("true", "false"):
            raise ConfigError(key, value, "true or false")
        return value == "true"

    def _json(self, key: str, shown: str) -> Any:
        value = self._value(key)
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(key, shown or value, "a JSON/YAML value of the documented shape") from None

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._json(key, "")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, "a list of strings")
        return tuple(value)

    def integers(self, key: str) -> tuple[int, ...]:
        value = self._json(key, "")
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise ConfigError(key, value, "a list of integers")
        return tuple(value)

    def mapping(self, key: str, *, secret: bool = False) -> dict[str, Any]:
        value = self._json(key, "[secret]" if secret else "")
        if not isinstance(value, dict):
            raise ConfigError(key, "[secret]" if secret else value, "an object {name: value}")
        return value


# ---------------------------------------------------------------------------------------------------------
# Validators (each returns the normalised value or raises ConfigError)


def _one_of(key: str, value: Any, allowed: tuple[Any, ...], why: str = "") -> Any:
    if value not in allowed:
        listed = ", ".join(str(a) if a != "" else '"" (empty)' for a in allowed)
        raise ConfigError(key, value, f"allowed: {listed}{why}")
    return value


def _hostname(key: str, value: str) -> str:
    if not is_host(value):
        raise ConfigError(
            key,
            value,
            "a lowercase DNS hostname with at least two labels (e.g. cr.example.com), labels of at most 63 "
            "characters, no port, no trailing dot",
        )
    return value


def _cidr(key: str, value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ConfigError(
            key, value, f"a CIDR with zero host bits such as 203.0.113.0/24 ({error})"
        ) from None


def _cidrs(key: str, values: tuple[str, ...], *, required: bool) -> tuple[str, ...]:
    if required and not values:
        raise ConfigError(key, list(values), "at least one CIDR (e.g. your office or CI egress /32)")
    if len(set(values)) != len(values):
        raise ConfigError(key, list(values), "each CIDR once")
    return tuple(str(_cidr(key, v)) for v in values)


def _vpc_cidr(value: str) -> str:
    network = _cidr("vpcCidr", value)
    private = any(network.version == 4 and network.subnet_of(block) for block in RFC1918)  # type: ignore[arg-type]
    if not private or not 16 <= network.prefixlen <= 24:
        raise ConfigError(
            "vpcCidr",
            value,
            "an RFC 1918 IPv4 block (10/8, 172.16/12, 192.168/16) with a prefix between /16 and /24 "
            "(DigitalOcean VPC limits)",
        )
    return str(network)


def _admin_cidrs(values: tuple[str, ...], allow_world: bool) -> tuple[str, ...]:
    cidrs = _cidrs("adminCidrs", values, required=True)
    world = [c for c in cidrs if ipaddress.ip_network(c) in WORLD]
    if world and not allow_world:
        raise ConfigError(
            "adminCidrs",
            list(values),
            f"{', '.join(world)} opens SSH and the Docker API to the whole Internet; list your own ranges, "
            "or set allowWorldAdminAccess: true to acknowledge it (e.g. CI runners with unknown IPs)",
        )
    return cidrs


def _namespaces(values: tuple[str, ...], upstream_hosts: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ConfigError("privateNamespaces", [], "at least one namespace")
    for ns in values:
        if not NAME_COMPONENT.fullmatch(ns):
            raise ConfigError(
                "privateNamespaces",
                ns,
                "an OCI name component: lowercase letters and digits separated by '.', '_', '__' or '-'",
            )
        if ns in RESERVED_NAMESPACES:
            raise ConfigError(
                "privateNamespaces", ns, "any name but `library` (Docker Hub's official images)"
            )
        if ns in upstream_hosts:
            raise ConfigError(
                "privateNamespaces", ns, f"a name that is not an upstream host ({', '.join(upstream_hosts)})"
            )
    if len(set(values)) != len(values):
        raise ConfigError("privateNamespaces", list(values), "each namespace once")
    return values


def _upstreams(raw: dict[str, Any], platform: str) -> tuple[Upstream, ...]:
    if DOCKER_HUB not in raw:
        raise ConfigError(
            "upstreams", raw, f"an object that contains {DOCKER_HUB} (served at the mirror's root)"
        )
    schemes = ("https",) if platform == "digitalocean" else ("https", "http")
    upstreams = []
    for host, url in raw.items():
        _hostname("upstreams", host)
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in schemes or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                "upstreams", {host: url}, f"a registry base URL with scheme {' or '.join(schemes)}"
            )
        upstreams.append(Upstream(host=host, url=url.rstrip("/")))
    return tuple(sorted(upstreams, key=lambda u: (u.host != DOCKER_HUB, u.host)))


def _users(raw: dict[str, Any], namespaces: tuple[str, ...]) -> tuple[User, ...]:
    users = []
    for name, rights in sorted(raw.items()):
        if not is_user_name(name):
            raise ConfigError(
                "users",
                name,
                "user names of letters (either case), digits, '.', '_' or '-', starting with a letter or "
                "digit (max 64)",
            )
        if not isinstance(rights, dict) or not set(rights) <= {"pull", "push"}:
            raise ConfigError("users", {name: rights}, "{pull: [namespaces], push: [namespaces]}")
        lists: dict[str, tuple[str, ...]] = {}
        for right in ("pull", "push"):
            listed = rights.get(right, [])
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise ConfigError(f"users.{name}.{right}", listed, "a list of namespaces")
            unknown = sorted(set(listed) - set(namespaces))
            if unknown:
                raise ConfigError(
                    f"users.{name}.{right}",
                    listed,
                    f"namespaces from privateNamespaces ({', '.join(namespaces)})",
                )
            lists[right] = tuple(sorted(set(listed)))
        users.append(User(name=name, pull=lists["pull"], push=lists["push"]))
    return tuple(users)


def _require_secret(key: str) -> None:
    if not runtime_config.is_config_secret(_full(key)):
        raise ConfigError(key, "[plain text]", f"a secret: `pulumi config set --secret {key} ...`")


def _passwords(
    raw: dict[str, Any], users: tuple[User, ...], *, generate_missing: bool
) -> dict[str, pulumi.Output[str]]:
    if raw:
        _require_secret("userPasswords")
    names = {u.name for u in users}
    extra = sorted(set(raw) - names)
    if extra:
        raise ConfigError("userPasswords", extra, "passwords only for users declared in `users`")
    passwords = {}
    for user in sorted(names):
        password = raw.get(user)
        if password is None and generate_missing:
            continue
        if not isinstance(password, str) or not password:
            raise ConfigError(
                "userPasswords",
                f"(no password for {user})",
                f"one per user: `pulumi config set --secret --path 'userPasswords.{user}' <password>`",
            )
        length = len(password.encode())
        if len(password) < MIN_PASSWORD_LENGTH or length > BCRYPT_MAX_BYTES:
            raise ConfigError(
                f"userPasswords.{user}",
                "[secret]",
                f"between {MIN_PASSWORD_LENGTH} characters and {BCRYPT_MAX_BYTES} bytes (bcrypt's limit)",
            )
        passwords[user] = pulumi.Output.secret(password)
    return passwords


def _images(raw: dict[str, Any]) -> Images:
    if set(raw) != {"nginx", "registry"}:
        raise ConfigError("images", raw, "exactly the keys nginx and registry")
    for name, image in raw.items():
        if not isinstance(image, str) or not PINNED_IMAGE.match(image):
            raise ConfigError(
                f"images.{name}", image, "an image pinned by digest: name[:tag]@sha256:<64 hex>"
            )
    return Images(nginx=raw["nginx"], registry=raw["registry"])


def _node_image(image: str, docker_version: str) -> None:
    ubuntu = UBUNTU_IMAGE.match(image)
    if not ubuntu:
        raise ConfigError("nodeImage", image, "a DigitalOcean Ubuntu LTS image slug such as ubuntu-24-04-x64")
    version = DOCKER_CE_VERSION.match(docker_version)
    if not version:
        raise ConfigError(
            "dockerVersion", docker_version, "a docker-ce apt version such as 5:28.5.2-1~ubuntu.24.04~noble"
        )
    if version.group(1) != f"{ubuntu.group(1)}.{ubuntu.group(2)}":
        raise ConfigError(
            "dockerVersion",
            docker_version,
            f"a docker-ce build for the node image's Ubuntu release ({image})",
        )


def _retention(raw: dict[str, Any], namespaces: tuple[str, ...]) -> tuple[RetentionRule, ...]:
    """The rules are checked by gateway/upkeep/retention.py (the code maintenance runs); its message names
    `retention.<namespace>[.<key>]` and what to set."""
    try:
        return check_rules((rule_from_mapping(ns, value) for ns, value in raw.items()), namespaces)
    except SettingsError as err:
        raise ConfigError("retention", raw, str(err)) from None


def _slack_webhook(raw: _Raw) -> pulumi.Output[str] | None:
    url = raw.string("alertSlackWebhook")
    if not url:
        return None
    _require_secret("alertSlackWebhook")
    if not url.startswith("https://"):
        raise ConfigError("alertSlackWebhook", "[secret]", "an https:// Slack incoming-webhook URL")
    return pulumi.Output.secret(url)


def _in_range(key: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(key, str(value), f"an integer from {low} to {high}")
    return value


def _check_credentials(schema: Mapping[str, Any]) -> None:
    """Provider tokens must be secrets; credentials never belong in plain owncr: config."""
    present = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    for key in PROVIDER_SECRETS:
        if key in present and not runtime_config.is_config_secret(key):
            raise ConfigError(
                key, "[plain text]", f"a secret: `pulumi config set --secret {key} ...`, or the env var"
            )
    for full in sorted(k for k in present if k.startswith(f"{PROJECT}:")):
        key = full.split(":", 1)[1]
        if key in schema:
            continue
        if CREDENTIAL_WORDS.search(key):
            raise ConfigError(
                key,
                "[hidden]",
                "no credentials in owncr: config; provider tokens go to `digitalocean:token` / "
                "`cloudflare:apiToken` as secrets (or DIGITALOCEAN_TOKEN / CLOUDFLARE_API_TOKEN)",
            )
        raise ConfigError(
            key, "(unknown key)", f"one of the keys of Pulumi.yaml: {', '.join(sorted(schema))}"
        )


# ---------------------------------------------------------------------------------------------------------


def load() -> Settings:
    """Read and validate the whole stack config once (and the deployer's environment)."""
    check_deployer_environment(os.environ)
    schema = known_keys()
    _check_credentials(schema)
    raw = _Raw()

    platform = _one_of("platform", raw.string("platform"), PLATFORMS)
    upstreams = _upstreams(raw.mapping("upstreams"), platform)
    namespaces = _namespaces(raw.strings("privateNamespaces"), tuple(u.host for u in upstreams))
    users = _users(raw.mapping("users"), namespaces)
    hub_user = raw.string("dockerHubUsername")
    hub_token = raw.string("dockerHubToken")
    if bool(hub_user) != bool(hub_token):
        raise ConfigError(
            "dockerHubUsername", hub_user, "set together with the secret dockerHubToken, or neither"
        )
    if hub_token:
        _require_secret("dockerHubToken")
    cache_ttl = raw.string("cacheTtl")
    if not is_go_duration(cache_ttl) or not re.search(r"[1-9]", cache_ttl):
        raise ConfigError("cacheTtl", cache_ttl, "a positive Go duration such as 168h or 90m")

    registry = Registry(
        namespaces=namespaces,
        users=users,
        upstreams=upstreams,
        images=_images(raw.mapping("images")),
        private_replicas=_in_range("privateReplicas", raw.integer("privateReplicas"), 1, 10),
        cache_ttl=cache_ttl,
        cache_max_gib=_in_range("cacheMaxGib", raw.integer("cacheMaxGib"), 0, 1_000_000) or None,
        mirror_client_cidrs=_cidrs("mirrorClientCidrs", raw.strings("mirrorClientCidrs"), required=True),
        docker_hub_username=hub_user or None,
        retention=_retention(raw.mapping("retention"), namespaces),
    )
    passwords = _passwords(
        raw.mapping("userPasswords", secret=True), users, generate_missing=platform == "local"
    )
    secrets = Secrets(
        user_passwords=passwords,
        docker_hub_token=pulumi.Output.secret(hub_token) if hub_token else None,
        alert_slack_webhook=_slack_webhook(raw),
        generated=tuple(sorted({u.name for u in users} - set(passwords))),
    )
    if platform == "local":
        _blob_redirect(raw, "the local platform")
    local = _local(raw) if platform == "local" else None
    cloud = _cloud(raw) if platform == "digitalocean" else None
    return Settings(
        stack=pulumi.get_stack(),
        platform=platform,
        registry=registry,
        secrets=secrets,
        cloud=cloud,
        local=local,
    )


def _local(raw: _Raw) -> Local:
    registry_port = _in_range("localRegistryPort", raw.integer("localRegistryPort"), 1024, 65535)
    mirror_port = _in_range("localMirrorPort", raw.integer("localMirrorPort"), 1024, 65535)
    if registry_port == mirror_port:
        raise ConfigError("localMirrorPort", str(mirror_port), "a port different from localRegistryPort")
    return Local(registry_port=registry_port, mirror_port=mirror_port)


def _cloud(raw: _Raw) -> Cloud:
    stack = pulumi.get_stack()
    if not STACK_NAME.match(stack):
        raise ConfigError(
            "(stack name)",
            stack,
            "lowercase letters, digits and '-', at most 20 (it is part of droplet hostnames)",
        )
    domain = _hostname("domain", raw.string("domain"))
    mirror_domain = _hostname("mirrorDomain", raw.string("mirrorDomain"))
    if not mirror_domain.endswith(f".{domain}"):
        raise ConfigError(
            "mirrorDomain",
            mirror_domain,
            f"a name inside domain {domain} (e.g. mirror.{domain}): the delegated zone holds both doors "
            "and their Let's Encrypt certificate",
        )
    node_size = raw.string("nodeSize")
    if not SIZE_PATTERN.match(node_size):
        raise ConfigError("nodeSize", node_size, "a DigitalOcean droplet size slug such as s-2vcpu-4gb")
    node_image = raw.string("nodeImage")
    docker_version = raw.string("dockerVersion")
    _node_image(node_image, docker_version)
    ssh_key = raw.string("sshPublicKey").strip()
    if ssh_key and not SSH_PUBLIC_KEY.match(ssh_key):
        shown = "[looks like a private key]" if "PRIVATE KEY" in ssh_key else ssh_key
        raise ConfigError(
            "sshPublicKey", shown, "one OpenSSH public key line (ssh-ed25519 AAAA... comment), or empty"
        )
    zone_id = raw.string("cloudflareZoneId")
    if not HEX32.match(zone_id):
        raise ConfigError("cloudflareZoneId", zone_id, "the 32-hex zone id from the Cloudflare dashboard")
    monitoring_alerts = raw.boolean("monitoringAlerts")
    emails = raw.strings("alertEmails")
    for email in emails:
        if not EMAIL.match(email):
            raise ConfigError("alertEmails", email, "e-mail addresses")
    if monitoring_alerts and not emails:
        raise ConfigError("alertEmails", [], "at least one address when monitoringAlerts is true")
    slack_channel = raw.string("alertSlackChannel")
    if bool(slack_channel) != bool(raw.string("alertSlackWebhook")):
        raise ConfigError(
            "alertSlackChannel", slack_channel, "set together with the secret alertSlackWebhook, or neither"
        )
    node_count = _one_of(
        "nodeCount",
        raw.integer("nodeCount"),
        NODE_COUNTS,
        " (a Raft majority must survive: 3 tolerates one lost manager, 5 two; 1 is for throwaway stacks)",
    )
    roll_nodes = raw.integers("rollNodes")
    for index in roll_nodes:
        if not 0 <= index < node_count:
            raise ConfigError("rollNodes", str(index), f"manager indexes from 0 to {node_count - 1}")
    if len(roll_nodes) > 1 and node_count > 1:
        # Replacing two managers of three at once loses the Raft majority (and every service with it).
        raise ConfigError("rollNodes", list(roll_nodes), "one manager at a time (e.g. [0], then [1])")
    return Cloud(
        region=_one_of("region", raw.string("region"), REGIONS, " (regions that accept new droplets)"),
        domain=domain,
        mirror_domain=mirror_domain,
        node_count=node_count,
        node_size=node_size,
        node_image=node_image,
        vpc_cidr=_vpc_cidr(raw.string("vpcCidr")),
        admin_cidrs=_admin_cidrs(raw.strings("adminCidrs"), raw.boolean("allowWorldAdminAccess")),
        allow_world_admin_access=raw.boolean("allowWorldAdminAccess"),
        storage=_storage(raw),
        cloudflare_zone_id=zone_id,
        ssh_public_key=ssh_key or None,
        roll_nodes=roll_nodes,
        docker_version=docker_version,
        monitoring_alerts=monitoring_alerts,
        alert_emails=emails,
        alert_slack_channel=slack_channel or None,
    )


def _blob_redirect(raw: _Raw, without_object_store: str | None) -> bool:
    """`blobRedirect`: "" (the default) means on wherever there is an object store (storage r2)."""
    value = _one_of("blobRedirect", raw.string("blobRedirect"), ("", "true", "false"))
    if without_object_store is None:
        return value != "false"
    if value == "true":
        raise ConfigError(
            "blobRedirect",
            value,
            f"false or empty with {without_object_store}: redirects hand out presigned URLs of an object "
            "store, and there is none (use storage r2, or unset blobRedirect)",
        )
    return False


def _storage(raw: _Raw) -> R2 | Nfs:
    kind = _one_of("storage", raw.string("storage"), STORAGE_KINDS)
    if kind == "nfs":
        _blob_redirect(raw, "storage nfs")
        size = raw.integer("nfsSizeGib")
        if size < NFS_MIN_GIB:
            raise ConfigError(
                "nfsSizeGib", str(size), f"at least {NFS_MIN_GIB} (DigitalOcean's minimum share size)"
            )
        return Nfs(size_gib=size)
    account_id = raw.string("cloudflareAccountId")
    if not HEX32.match(account_id):
        raise ConfigError(
            "cloudflareAccountId",
            account_id,
            "the 32-hex Cloudflare account id that owns the R2 bucket (storage r2)",
        )
    location = _one_of("r2Location", raw.string("r2Location"), R2_LOCATIONS)
    jurisdiction = _one_of("r2Jurisdiction", raw.string("r2Jurisdiction"), R2_JURISDICTIONS)
    if location and jurisdiction != "default":
        raise ConfigError(
            "r2Location",
            location,
            f'"" (empty) with r2Jurisdiction {jurisdiction}: the jurisdiction already fixes where data lives',
        )
    return R2(
        account_id=account_id,
        location=location or None,
        jurisdiction=jurisdiction,
        blob_redirect=_blob_redirect(raw, None),
    )
