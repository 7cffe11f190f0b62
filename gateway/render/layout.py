"""Where everything lives: the ports and container paths of production (its services by their names in
gateway/names.py), and the loopback ports and data-directory paths of a local run. The one place these
are decided; the Pulumi components import the production constants from here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import GatewaySettings, Upstream
from gateway.names import NGINX_SERVICE, PRIVATE_SERVICE, cache_key, cache_service, private_key

# Production (Swarm); the services' names are gateway/names.py's.
GATEWAY_PORT = 8080  # host-mode port the load balancer forwards to, PROXY protocol, both doors + /healthz
REGISTRY_PORT = 5000  # every registry container, overlay network only
# The caches' egress servers in the gateway (gateway/render/njs/egress.js): upstream i on
# EGRESS_PORT + i, reached by its cache over the overlay network only (not published).
EGRESS_PORT = 8100
AUTH_PORT = 8099  # nginx's internal Basic-auth checker, bound to the container's loopback
# nginx's metrics server (templates/metrics.conf.j2): published on each node, never behind the load
# balancer; the firewall opens it to the admin addresses only (components/network.py).
METRICS_PORT = 9145
# Each registry's debug server (Distribution's Prometheus metrics), overlay network only: nginx's metrics
# server relays it.
DEBUG_PORT = 5001
CONFIG_DIR = "/etc/owncr"  # Swarm configs (not secret)
# Swarm secrets keep their default place, one flat file name each (a secret target without a directory).
SECRET_DIR = "/run/secrets"  # noqa: S105 (a directory, not a secret)
# nginx's pid, temp files and caches: a directory the official nginx image already has (nginx creates
# the subdirectories, not this one).
STATE_DIR = "/var/cache/nginx"
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"  # same path in Debian and the nginx image
NGINX_USER = "nginx"  # the official nginx image's worker user
# Docker's embedded DNS server, in every container on a user-defined (overlay) network.
SWARM_DNS = "127.0.0.11"
DRAIN_FLAG = "draining"  # in the state dir: present while a stopping gateway drains (drain.sh)


@dataclass(frozen=True)
class Layout:
    """Every address and path one render needs; built by `production_layout` or `local_layout`."""

    production: bool
    config_dir: str  # nginx.conf, router.js, routes.json, each registry's config dir below it
    secret_dir: str  # htpasswd, auth-cache salt, registry configs holding credentials
    state_dir: str  # nginx pid, temp paths, caches, logs
    registry_listen: str  # nginx `listen` argument of each door
    mirror_listen: str
    auth_listen: str
    private_servers: tuple[str, ...]  # host:port entries of the nginx upstream block
    cache_servers: dict[str, str]  # upstream host -> host:port
    private_addrs: tuple[str, ...]  # each private registry's http.addr
    cache_addrs: dict[str, str]  # upstream host -> the cache's http.addr
    nginx_user: str | None
    egress_listens: dict[str, str]  # upstream host -> nginx `listen` of its egress server
    egress_urls: dict[str, str]  # upstream host -> the URL its cache calls the upstream by (remoteurl)
    # DNS server the egress resolves upstream, token and CDN hosts with; None: only IP literals resolve.
    egress_resolver: str | None
    metrics_listen: str  # nginx `listen` of the metrics server
    # Bundle key (private, private-2, cache-<upstream id>) -> (its registry's http.debug.addr, the host:port
    # nginx reaches it by).
    debug: dict[str, tuple[str, str]]
    # DNS server nginx re-resolves upstream names with while it runs (`server ... resolve`); None:
    # addresses resolved once at start (loopback ports locally).
    resolver: str | None = None


def production_layout(settings: GatewaySettings, door_ports: tuple[int, int] | None = None) -> Layout:
    """Swarm service names and container paths. Both doors share GATEWAY_PORT and are told apart by
    hostname, unless `door_ports` gives each door its own container port (a single-node trial)."""
    if door_ports is not None and (AUTH_PORT in door_ports or door_ports[0] == door_ports[1]):
        raise ValueError(f"door ports {door_ports} must differ from each other and from {AUTH_PORT}")
    proxy = " proxy_protocol" if settings.trusted_proxy_cidrs else ""
    ports = (GATEWAY_PORT, GATEWAY_PORT) if door_ports is None else door_ports
    # Every service is reached by DNS round robin (components/plan/swarm_specs.py): the private service's
    # name resolves to each replica's own address, re-resolved while nginx runs (`resolver`), so a
    # replaced or lost task leaves the rotation without a reload; a name resolved once at start would
    # keep pointing at stopped tasks. Listed once: each replica is one peer, so a read that failed on one
    # is retried on another (listed twice, a lost replica was two peers, and a retry could land on it
    # again: seen in scripts/ha-drill as a manifest read that failed after 10 s on a live node).
    private = f"{PRIVATE_SERVICE}:{REGISTRY_PORT}"
    return Layout(
        production=True,
        config_dir=CONFIG_DIR,
        secret_dir=SECRET_DIR,
        state_dir=STATE_DIR,
        registry_listen=f"{ports[0]}{proxy}",
        mirror_listen=f"{ports[1]}{proxy}",
        auth_listen=f"127.0.0.1:{AUTH_PORT}",
        private_servers=(private,),
        cache_servers={u.host: f"{cache_service(u.id)}:{REGISTRY_PORT}" for u in settings.upstreams},
        private_addrs=(f":{REGISTRY_PORT}",),
        cache_addrs={u.host: f":{REGISTRY_PORT}" for u in settings.upstreams},
        nginx_user=NGINX_USER,
        egress_listens={u.host: str(EGRESS_PORT + i) for i, u in enumerate(settings.upstreams)},
        egress_urls={
            u.host: f"http://{NGINX_SERVICE}:{EGRESS_PORT + i}" for i, u in enumerate(settings.upstreams)
        },
        egress_resolver=SWARM_DNS,
        metrics_listen=str(METRICS_PORT),
        # The private service's name resolves to every replica: each scrape reads one of them.
        debug={
            key: (f":{DEBUG_PORT}", f"{service}:{DEBUG_PORT}")
            for key, service in (
                (private_key(0), PRIVATE_SERVICE),
                *((cache_key(u.id), cache_service(u.id)) for u in settings.upstreams),
            )
        },
        resolver=SWARM_DNS,
    )


def blob_cache_dir(state_dir: str) -> str:
    """nginx's blob cache (templates/proxy.conf.j2); in production a volume on the node's disk, not the
    task's tmpfs (components/plan/swarm_specs.py)."""
    return f"{state_dir}/blobs"


def system_resolver(upstreams: tuple[Upstream, ...], resolv_conf: str = "/etc/resolv.conf") -> str | None:
    """A local run's DNS server for the egress: the machine's first nameserver, needed only when an
    upstream is named by host (every test stand-in is an IP literal)."""

    def literal(url: str) -> bool:
        try:
            ipaddress.ip_address(urlsplit(url).hostname or "")
        except ValueError:
            return False
        return True

    if all(literal(u.url) for u in upstreams):
        return None
    try:
        lines = open(resolv_conf).read().splitlines()  # noqa: SIM115, PTH123 - one small read
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return f"[{fields[1]}]" if ":" in fields[1] else fields[1]
    raise ValueError(f"no nameserver in {resolv_conf}: the egress cannot resolve the upstream hosts")
