"""From the stack's settings to the gateway's `Bundle`: the pure `build` functions RegistryServices renders.

Each builder returns `build(values) -> Bundle`, where `values` maps the keys of `secret_inputs` (and of
any plain Output passed alongside, e.g. the local engine's bridge CIDR) to their resolved strings. The
component calls `build` twice (placeholders at preview, real values inside one `Output.all`), so a
builder must not depend on anything but its arguments.

Cloud: both doors on port 8080 behind the load balancer (PROXY protocol from the VPC range), told apart
by hostname. Local (one node, no load balancer): the doors on two container ports, no PROXY protocol.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

import pulumi

from components import physical_name
from components.plan.swarm_specs import Port, ServicePlan, StorageMount
from gateway.config import DOCKER_HUB, FilesystemStorage, GatewaySettings, S3Storage, Upstream, User
from gateway.render import bundle as gateway_render
from gateway.render import layout as gateway_layout
from gateway.render.bundle import Bundle
from settings import Local, Registry, Secrets

HTTP_SECRET = "http_secret"  # noqa: S105 (a key name, not a secret)
HTPASSWD_SALT_KEY = "htpasswd_salt_key"  # noqa: S105 (a key name)
HUB_TOKEN = "docker_hub_token"  # noqa: S105 (a key name)
S3_ACCESS_KEY = "s3_access_key"
S3_SECRET_KEY = "s3_secret_key"  # noqa: S105 (a key name)
LOCAL_CLIENT_CIDRS = "local_client_cidrs"  # plain: the local engine's docker_gwbridge subnet(s)

# Where filesystem storage is mounted in every registry container (a Docker volume locally, the node's
# NFS mount in the cloud); each registry uses its own directory below it (gateway.render.registry_config).
STORAGE_ROOT = "/var/lib/registry"
# Container ports of the two doors on the local platform (published on the configured localhost ports).
LOCAL_REGISTRY_DOOR = gateway_layout.GATEWAY_PORT
LOCAL_MIRROR_DOOR = gateway_layout.GATEWAY_PORT + 1
# The local registry door answers by IP literal: the doors are told apart by port, and nginx still
# needs a server_name (127.0.0.1 passes the gateway's hostname check; `localhost` has no dot).
LOCAL_REGISTRY_HOST = "127.0.0.1"
LOCAL_MIRROR_HOST = "127.0.0.2"

Build = Callable[[Mapping[str, str]], Bundle]


def password_key(user: str) -> str:
    return f"password:{user}"


def secret_inputs(
    secrets: Secrets, s3_keys: tuple[pulumi.Input[str], pulumi.Input[str]] | None
) -> dict[str, pulumi.Input[str]]:
    """The configured secrets the render needs, by the key `build` reads them under (RegistryServices
    adds HTTP_SECRET and HTPASSWD_SALT_KEY, which it generates)."""
    values: dict[str, pulumi.Input[str]] = {}
    values |= {password_key(user): pw for user, pw in secrets.user_passwords.items()}
    if secrets.docker_hub_token is not None:
        values[HUB_TOKEN] = secrets.docker_hub_token
    if s3_keys is not None:
        values[S3_ACCESS_KEY], values[S3_SECRET_KEY] = s3_keys
    return values


def _settings(
    registry: Registry,
    values: Mapping[str, str],
    *,
    storage: FilesystemStorage | S3Storage,
    mirror_client_cidrs: tuple[str, ...],
    trusted_proxy_cidrs: tuple[str, ...],
    registry_host: str,
    mirror_host: str,
) -> GatewaySettings:
    upstreams = tuple(
        Upstream(
            host=u.host,
            url=u.url,
            username=registry.docker_hub_username if u.host == DOCKER_HUB and HUB_TOKEN in values else None,
            password=values.get(HUB_TOKEN) if u.host == DOCKER_HUB else None,
        )
        for u in registry.upstreams
    )
    return GatewaySettings(
        namespaces=registry.namespaces,
        users=tuple(
            User(name=u.name, password=values[password_key(u.name)], pull=u.pull, push=u.push)
            for u in registry.users
        ),
        upstreams=upstreams,
        storage=storage,
        http_secret=values[HTTP_SECRET],
        htpasswd_salt_key=values[HTPASSWD_SALT_KEY],
        private_replicas=registry.private_replicas,
        mirror_client_cidrs=mirror_client_cidrs,
        trusted_proxy_cidrs=trusted_proxy_cidrs,
        cache_ttl=registry.cache_ttl,
        registry_host=registry_host,
        mirror_host=mirror_host,
    )


def cloud_build(
    registry: Registry,
    *,
    domain: str,
    mirror_domain: str,
    vpc_cidr: str,
    s3: tuple[str, str] | None,
    blob_redirect: bool = False,
) -> Build:
    """Production render. `s3` is (bucket, endpoint) for R2; None means filesystem storage on NFS.
    `blob_redirect` (R2 only): registries answer blob GETs with presigned R2 URLs."""
    if blob_redirect and s3 is None:
        raise ValueError("blob_redirect needs S3 storage (R2): a filesystem has no URLs to redirect to")

    def build(values: Mapping[str, str]) -> Bundle:
        storage: FilesystemStorage | S3Storage = (
            S3Storage(
                bucket=s3[0],
                endpoint=s3[1],
                access_key=values[S3_ACCESS_KEY],
                secret_key=values[S3_SECRET_KEY],
                redirect=blob_redirect,
            )
            if s3 is not None
            else FilesystemStorage(STORAGE_ROOT)
        )
        settings = _settings(
            registry,
            values,
            storage=storage,
            mirror_client_cidrs=registry.mirror_client_cidrs,
            # The load balancer connects from its address inside the VPC; only it may set the client
            # address through PROXY protocol.
            trusted_proxy_cidrs=(vpc_cidr,),
            registry_host=domain,
            mirror_host=mirror_domain,
        )
        return gateway_render.render_production(settings)

    return build


def bridge_cidrs(stdout: str) -> str:
    """The CIDRs a local `docker network inspect docker_gwbridge` printed, space-separated; junk dropped."""
    found = []
    for word in stdout.split():
        try:
            found.append(str(ipaddress.ip_network(word, strict=False)))
        except ValueError:
            continue
    return " ".join(found)


def local_build(registry: Registry) -> Build:
    """Single-node swarm on the user's engine: production paths and service names, doors by port.

    Published ports reach the container through Docker's proxy (or its NAT), so a local client shows
    up with an address of the engine's `docker_gwbridge` network; the mirror door admits those besides
    the configured CIDRs.
    """

    def build(values: Mapping[str, str]) -> Bundle:
        # bridge_cidrs drops what is no CIDR (the placeholder of the preview-time render, see render_bundle).
        bridge = bridge_cidrs(values.get(LOCAL_CLIENT_CIDRS, "")).split()
        extra = tuple(c for c in bridge if c not in registry.mirror_client_cidrs)
        settings = _settings(
            registry,
            values,
            storage=FilesystemStorage(STORAGE_ROOT),
            mirror_client_cidrs=registry.mirror_client_cidrs + extra,
            trusted_proxy_cidrs=(),
            registry_host=LOCAL_REGISTRY_HOST,
            mirror_host=LOCAL_MIRROR_HOST,
        )
        return gateway_render.render_production(settings, door_ports=(LOCAL_REGISTRY_DOOR, LOCAL_MIRROR_DOOR))

    return build


def cloud_plan(
    stack: str, registry: Registry, *, node_count: int, nfs_mount_point: str | None
) -> ServicePlan:
    """nginx on every manager's host port 8080 (the load balancer's target) and 9145 (its metrics); storage
    R2, or the NFS share every node mounts at `nfs_mount_point` (bind-mounted into each registry)."""
    return ServicePlan(
        stack=stack,
        nginx_image=registry.images.nginx,
        registry_image=registry.images.registry,
        node_count=node_count,
        private_replicas=registry.private_replicas,
        # The doors (the load balancer's target) and the metrics, which the firewall opens to the admins.
        nginx_ports=tuple(
            Port(published=port, target=port)
            for port in (gateway_layout.GATEWAY_PORT, gateway_layout.METRICS_PORT)
        ),
        nginx_proxy_protocol=True,
        storage_mount=StorageMount(type="bind", source=nfs_mount_point, target=STORAGE_ROOT)
        if nfs_mount_point is not None
        else None,
    )


def local_plan(stack: str, registry: Registry, local: Local) -> ServicePlan:
    """Both doors on the configured host ports, storage in one Docker volume."""
    return ServicePlan(
        stack=stack,
        nginx_image=registry.images.nginx,
        registry_image=registry.images.registry,
        node_count=1,
        private_replicas=registry.private_replicas,
        nginx_ports=(
            Port(published=local.registry_port, target=LOCAL_REGISTRY_DOOR),
            Port(published=local.mirror_port, target=LOCAL_MIRROR_DOOR),
        ),
        nginx_proxy_protocol=False,
        storage_mount=StorageMount(type="volume", source=physical_name(stack, "data"), target=STORAGE_ROOT),
    )
