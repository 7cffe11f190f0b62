"""The data plane's files, rendered from one GatewaySettings: for production (Swarm services, container
paths, Distribution 3.x) and for a local run (loopback ports, a data directory, the binaries that
gateway/local/binaries.py picks).

`Bundle.services` is keyed "nginx", "private" (locally also "private-2", ... one per replica) and
"cache-<upstream id>" (the bundle keys of gateway/names.py); each `ServiceFiles` lists the files to
place at their absolute paths, and the command that runs with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import names
from gateway.config import FilesystemStorage, GatewaySettings
from gateway.render import layout as L
from gateway.render import registry_config
from gateway.render.htpasswd import render_htpasswd
from gateway.render.nginx import (
    DRAIN_SH,
    EGRESS_JS,
    METRICS_JS,
    OWNCR_JS,
    PULLS_JS,
    REFERRERS_JS,
    ROUTER_JS,
    STORE_JS,
    render_nginx_conf,
    render_njs_names,
    render_routes,
    render_salt_conf,
    render_store,
)


@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute path the reader opens
    content: str
    secret: bool


@dataclass(frozen=True)
class ServiceFiles:
    name: str  # Swarm service name (production) or process label (local)
    command: tuple[str, ...]
    files: tuple[RenderedFile, ...]
    port: int
    debug_addr: str = ""  # a registry's http.debug.addr (its Prometheus metrics); nginx: none


@dataclass(frozen=True)
class Bundle:
    services: dict[str, ServiceFiles]

    def files(self) -> tuple[RenderedFile, ...]:
        return tuple(f for s in self.services.values() for f in s.files)


def _port(listen: str) -> int:
    """The port of an nginx `listen` or an http.addr: "8080 proxy_protocol", "127.0.0.1:5000", ":5000"."""
    return int(listen.split()[0].rsplit(":", 1)[-1])


def _debug_addr(lay: L.Layout, key: str) -> str:
    """A registry's http.debug.addr (in production one private service stands for every replica)."""
    return lay.debug[key][0]


def _render(settings: GatewaySettings, lay: L.Layout, *, registry_bin: str, nginx_bin: str) -> Bundle:
    conf = f"{lay.config_dir}/nginx/nginx.conf"
    router = f"{lay.config_dir}/nginx/router.js"
    egress = f"{lay.config_dir}/nginx/egress.js"
    referrers = f"{lay.config_dir}/nginx/referrers.js"
    store_js = f"{lay.config_dir}/nginx/store.js"
    metrics = f"{lay.config_dir}/nginx/metrics.js"
    pulls = f"{lay.config_dir}/nginx/pulls.js"
    routes = f"{lay.config_dir}/nginx/routes.json"
    # Imported by the other modules from their directory (js_path): names as they import them.
    owncr = f"{lay.config_dir}/nginx/owncr.js"
    njs_names = f"{lay.config_dir}/nginx/names.js"
    htpasswd = f"{lay.secret_dir}/htpasswd"
    salt = f"{lay.secret_dir}/auth-salt.conf"
    store = f"{lay.secret_dir}/store.json"
    nginx_conf = render_nginx_conf(
        settings,
        lay,
        router_file=router,
        egress_file=egress,
        referrers_file=referrers,
        store_file=store,
        metrics_file=metrics,
        pulls_file=pulls,
        routes_file=routes,
        htpasswd_file=htpasswd,
        salt_file=salt,
        # Production logs go to the container's stdout (docker service logs); locally to a file.
        access_log="/dev/stdout" if lay.production else f"{lay.state_dir}/access.log",
        worker_processes="auto" if lay.production else "2",
    )
    nginx_command: tuple[str, ...] = (nginx_bin, "-c", conf, "-p", lay.state_dir)
    # In production every service starts under the drain wrapper (gateway/render/drain.sh): a stopping task
    # keeps serving until its callers moved away (nginx: the load balancer, by a failing /healthz; a
    # registry: nginx, by re-resolving its name), then stops gracefully. Locally processes just stop.
    drain_files: tuple[RenderedFile, ...] = ()
    registry_stop: tuple[str, ...] = ()
    if lay.production:
        drain = f"{lay.config_dir}/drain.sh"
        nginx_command = ("sh", drain, f"{lay.state_dir}/{L.DRAIN_FLAG}", "QUIT", *nginx_command)
        registry_stop = ("sh", drain, "-", "TERM")
        drain_files = (RenderedFile(drain, DRAIN_SH.read_text(), secret=False),)
    if lay.production and isinstance(settings.storage, FilesystemStorage):
        # The store (njs/store.js) writes below the shared storage as nginx's workers, which are not
        # root, while the registries (root) own the rest: its directory is made theirs before nginx starts.
        store_dir = f"{settings.storage.root.rstrip('/')}/{names.STORE_PREFIX}"
        prepare = 'mkdir -p "$0" && chown "$1" "$0" && shift && exec "$@"'
        nginx_command = ("sh", "-c", prepare, store_dir, L.NGINX_USER, *nginx_command)
    services = {
        names.NGINX_KEY: ServiceFiles(
            name=names.NGINX_SERVICE if lay.production else names.NGINX_KEY,
            command=nginx_command,
            files=(
                RenderedFile(conf, nginx_conf, secret=False),
                RenderedFile(router, ROUTER_JS.read_text(), secret=False),
                RenderedFile(egress, EGRESS_JS.read_text(), secret=False),
                RenderedFile(referrers, REFERRERS_JS.read_text(), secret=False),
                RenderedFile(store_js, STORE_JS.read_text(), secret=False),
                RenderedFile(metrics, METRICS_JS.read_text(), secret=False),
                RenderedFile(pulls, PULLS_JS.read_text(), secret=False),
                RenderedFile(owncr, OWNCR_JS.read_text(), secret=False),
                RenderedFile(njs_names, render_njs_names(settings), secret=False),
                RenderedFile(routes, render_routes(settings), secret=False),
                RenderedFile(htpasswd, render_htpasswd(settings.users, settings.htpasswd_key), secret=True),
                RenderedFile(salt, render_salt_conf(settings), secret=True),
                RenderedFile(store, render_store(settings.storage), secret=True),
                *drain_files,
            ),
            port=_port(lay.registry_listen),
        )
    }
    # Registry configs hold the storage keys (and upstream tokens): secrets.
    for i, addr in enumerate(lay.private_addrs):
        key = names.private_key(i)
        path = f"{lay.secret_dir}/{key}.yml"
        services[key] = ServiceFiles(
            name=names.PRIVATE_SERVICE if lay.production else key,
            command=(*registry_stop, registry_bin, "serve", path),
            files=(
                RenderedFile(
                    path,
                    registry_config.dump(
                        registry_config.private_config(settings, addr, debug_addr=_debug_addr(lay, key))
                    ),
                    True,
                ),
                *drain_files,
            ),
            port=_port(addr),
            debug_addr=_debug_addr(lay, key),
        )
    for upstream in settings.upstreams:
        key = names.cache_key(upstream.id)
        addr = lay.cache_addrs[upstream.host]
        path = f"{lay.secret_dir}/{key}.yml"
        content = registry_config.dump(
            registry_config.cache_config(
                settings, upstream, addr, lay.egress_urls[upstream.host], debug_addr=_debug_addr(lay, key)
            )
        )
        services[key] = ServiceFiles(
            name=names.cache_service(upstream.id) if lay.production else key,
            command=(*registry_stop, registry_bin, "serve", path),
            files=(RenderedFile(path, content, secret=True), *drain_files),
            port=_port(addr),
            debug_addr=_debug_addr(lay, key),
        )
    return Bundle(services)


def render_production(settings: GatewaySettings, *, door_ports: tuple[int, int] | None = None) -> Bundle:
    """The Swarm deployment: one private service (all replicas share config and http.secret).

    Behind the load balancer (the default) both doors share GATEWAY_PORT with PROXY protocol, which
    needs `trusted_proxy_cidrs`; `door_ports` puts the doors on two container ports instead (a
    single-node swarm without a load balancer)."""
    if door_ports is None and not settings.trusted_proxy_cidrs:
        raise ValueError(
            "production needs trusted_proxy_cidrs (the load balancer's range, e.g. the VPC CIDR)"
        )
    lay = L.production_layout(settings, door_ports)
    return _render(settings, lay, registry_bin="registry", nginx_bin="nginx")


def render_local(
    settings: GatewaySettings,
    *,
    data_dir: str,
    registry_port: int,
    mirror_port: int,
    auth_port: int,
    private_ports: tuple[int, ...],
    cache_ports: dict[str, int],
    egress_ports: dict[str, int],
    metrics_port: int,
    debug_ports: dict[str, int],
    egress_resolver: str | None = None,
    nginx_user: str | None = None,
    registry_bin: str,
    nginx_bin: str,
) -> Bundle:
    """Everything on 127.0.0.1 under `data_dir`; each private replica is its own process. The doors
    expect PROXY protocol only when `settings.trusted_proxy_cidrs` is set."""
    if len(private_ports) != settings.private_replicas:
        raise ValueError(f"need {settings.private_replicas} private ports, got {private_ports}")
    for what, ports in (("cache", cache_ports), ("egress", egress_ports)):
        missing = {u.host for u in settings.upstreams} - set(ports)
        if missing:
            raise ValueError(f"no {what} port for upstreams {sorted(missing)}")
    registries = {names.private_key(i) for i in range(settings.private_replicas)}
    registries |= {names.cache_key(u.id) for u in settings.upstreams}
    if set(debug_ports) != registries:
        raise ValueError(f"need debug ports for exactly {sorted(registries)}, got {sorted(debug_ports)}")
    proxy = " proxy_protocol" if settings.trusted_proxy_cidrs else ""
    lay = L.Layout(
        production=False,
        config_dir=f"{data_dir}/config",
        secret_dir=f"{data_dir}/secrets",
        state_dir=f"{data_dir}/state",
        registry_listen=f"127.0.0.1:{registry_port}{proxy}",
        mirror_listen=f"127.0.0.1:{mirror_port}{proxy}",
        auth_listen=f"127.0.0.1:{auth_port}",
        private_servers=tuple(f"127.0.0.1:{p}" for p in private_ports),
        cache_servers={h: f"127.0.0.1:{p}" for h, p in cache_ports.items()},
        private_addrs=tuple(f"127.0.0.1:{p}" for p in private_ports),
        cache_addrs={h: f"127.0.0.1:{p}" for h, p in cache_ports.items()},
        nginx_user=nginx_user,
        egress_listens={h: f"127.0.0.1:{p}" for h, p in egress_ports.items()},
        egress_urls={h: f"http://127.0.0.1:{p}" for h, p in egress_ports.items()},
        egress_resolver=egress_resolver,
        metrics_listen=f"127.0.0.1:{metrics_port}",
        debug={key: (f"127.0.0.1:{p}", f"127.0.0.1:{p}") for key, p in debug_ports.items()},
    )
    return _render(settings, lay, registry_bin=registry_bin, nginx_bin=nginx_bin)
