"""nginx.conf (Jinja2 templates in gateway/render/templates), routes.json (read by njs/router.js) and
names.js (the vocabulary of gateway/names.py, for the njs modules).

Every decision is made here in Python; the templates only place the values. They get the vocabulary as
`N` (gateway/names.py), `internal(route, rest)` for a route's internal URI and `oci_error(name, ...)`
for an error answer's body: no template spells a route or an error body itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path, PurePosixPath

import jinja2

from gateway import names
from gateway.config import DOCKER_HUB, NAME_COMPONENT, FilesystemStorage, GatewaySettings, S3Storage
from gateway.names import MANIFEST_TYPES
from gateway.render.layout import DRAIN_FLAG, NJS_MODULE, Layout, blob_cache_dir
from gateway.render.registry_config import READ_ONLY_HEADER

TEMPLATES = Path(__file__).parent / "templates"
NJS = Path(__file__).parent / "njs"
ROUTER_JS = NJS / "router.js"
EGRESS_JS = NJS / "egress.js"
REFERRERS_JS = NJS / "referrers.js"
METRICS_JS = NJS / "metrics.js"
PULLS_JS = NJS / "pulls.js"  # the mirror's last-pull records, written to the store
STORE_JS = NJS / "store.js"  # how nodes agree: objects on the shared storage (referrers.js's lock)
OWNCR_JS = NJS / "owncr.js"  # shared by the other modules; imports the generated names.js
# The CA bundle the egress verifies https upstreams with: the same path in the official nginx image
# (Alpine's ca-certificates) and on Debian.
UPSTREAM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
# Every service runs drain.sh, the one-replica caches included: a changed byte rolls them all. Its
# comments still name the files by their paths before the 2026-12 move (gateway/render.py is
# gateway/render/bundle.py, components/lb_health.py is components/plan/lb_health.py) until it
# changes for a reason of its own.
DRAIN_SH = Path(__file__).parent / "drain.sh"
# With blob redirects, how long nginx serves its copy of a blob it streamed from a cache's upstream: only
# the fleet that waited for that fill gets it; from then on the cache answers with a redirect to the
# bucket, so blob bytes stop crossing the droplets (templates/routes.conf.j2).
REDIRECT_FILL_SECONDS = 1
# A cache's blob redirect is shared this long: well inside the 20 minutes its presigned URL is valid for
# (Distribution's S3 driver), whatever blob_cache_minutes says.
REDIRECT_KEEP_SECONDS = 300
# Statuses router.js refuses with (its fail() calls), each an internal location with an OCI body.
REFUSAL_STATUSES = (400, 403, 404, 405, 415)
# The longest a blob download from the private registry may pause between two reads (storage slow to
# answer, or a replica gone): noticed and retried on another replica if nothing was sent yet.
PRIVATE_BLOB_SECONDS = 60
# nginx's read-ahead of one download (proxy_buffer_size + 2 proxy_buffers), sized with its memory limit
# (components/plan/swarm_specs.py NGINX_LIMITS) for several hundred slow downloads per node.
DOWNLOAD_BUFFER_KIB = 320
# The tag cache's size on the state dir (in production the task's tmpfs, inside the same limit).
TAG_CACHE_MIB = 32

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # nginx configuration, not HTML  # noqa: S701
)


def nginx_string(text: str) -> str:
    """`text` as a single-quoted nginx string (its newlines written as \\n, which nginx turns back)."""
    if any(c in text for c in "'\\$"):
        raise ValueError(f"not safe in an nginx string (quote, backslash or variable): {text!r}")
    return "'" + text.replace("\n", "\\n") + "'"


def oci_error(name: str, detail: object = None, **fields: str) -> str:
    """The templates' one way to write an error answer: gateway/names.py's body, quoted for nginx."""
    return nginx_string(names.error_body(name, detail, **fields))


_ENV.globals.update(N=names, internal=names.uri, oci_error=oci_error)


def auth_salt(settings: GatewaySettings) -> str:
    """Salt of the login cache keys, derived from the http secret so no extra secret is configured."""
    return hmac.new(settings.http_secret.encode(), b"owncr-auth-cache", hashlib.sha256).hexdigest()


def render_salt_conf(settings: GatewaySettings) -> str:
    return f'js_var $owncr_auth_salt "{auth_salt(settings)}";\n'


def render_routes(settings: GatewaySettings) -> str:
    """What router.js decides from: private namespaces and rights per user (upstreams: names.js)."""
    data = {
        "namespaces": sorted(settings.namespaces, key=len, reverse=True),
        "users": {u.name: {"pull": list(u.pullable), "push": list(u.push)} for u in settings.users},
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_store(storage: FilesystemStorage | S3Storage) -> str:
    """The store file store.js reads (a secret: it holds the bucket's keys): where the gateway's own
    objects live on the storage the registries share."""
    if isinstance(storage, FilesystemStorage):
        config: dict[str, object] = {"kind": "filesystem", "root": storage.root.rstrip("/")}
    else:
        config = {
            "kind": "s3",
            "endpoint": storage.endpoint.rstrip("/"),
            "bucket": storage.bucket,
            "region": storage.region,
            "pathStyle": storage.force_path_style,
            "accessKey": storage.access_key,
            "secretKey": storage.secret_key,
        }
    return json.dumps(config, indent=1, sort_keys=True) + "\n"


def render_njs_names(settings: GatewaySettings) -> str:
    return names.njs_names((u.host for u in settings.upstreams), DOCKER_HUB, NAME_COMPONENT.pattern)


def render_nginx_conf(
    settings: GatewaySettings,
    layout: Layout,
    *,
    router_file: str,
    egress_file: str,
    referrers_file: str,
    store_file: str,
    metrics_file: str,
    pulls_file: str,
    routes_file: str,
    htpasswd_file: str,
    salt_file: str,
    access_log: str,
    worker_processes: str,
) -> str:
    # Re-resolved in the background (nginx >= 1.27.3 open source: http://nginx.org/r/server, `resolve`).
    resolve = " resolve" if layout.resolver else ""
    cache_answer = cache_answer_seconds(settings.upstream_timeout_seconds)
    return _ENV.get_template("nginx.conf.j2").render(
        njs_module=NJS_MODULE,
        js_engine=settings.js_engine,
        nginx_user=layout.nginx_user,
        worker_processes=worker_processes,
        state_dir=layout.state_dir,
        access_log=access_log,
        router_file=router_file,
        njs_dir=str(PurePosixPath(router_file).parent),
        egress_file=egress_file,
        referrers_file=referrers_file,
        store_file=store_file,
        store_write_seconds=names.STORE_WRITE_SECONDS,
        private_answer_seconds=names.PRIVATE_ANSWER_SECONDS,
        private_blob_seconds=PRIVATE_BLOB_SECONDS,
        download_buffer_kib=DOWNLOAD_BUFFER_KIB,
        tag_cache_mib=TAG_CACHE_MIB,
        store_ca_file=UPSTREAM_CA_FILE
        if isinstance(settings.storage, S3Storage) and settings.storage.endpoint.startswith("https://")
        else "",
        metrics_file=metrics_file,
        pulls_file=pulls_file,
        pulls_flush_seconds=names.PULLS_FLUSH_SECONDS,
        pulls_refresh_seconds=names.PULLS_REFRESH_SECONDS,
        metrics_listen=layout.metrics_listen,
        debug_servers=[{"key": key, "server": server} for key, (_, server) in sorted(layout.debug.items())],
        manifest_types=", ".join(MANIFEST_TYPES),
        routes_file=routes_file,
        htpasswd_file=htpasswd_file,
        salt_file=salt_file,
        auth_listen=layout.auth_listen,
        auth_cache_seconds=settings.auth_cache_seconds,
        tag_cache_seconds=settings.tag_cache_seconds,
        login_rate=settings.login_rate,
        login_burst=settings.login_burst,
        # TLS ends at the load balancer in production; Distribution builds relative URLs anyway.
        forwarded_proto="https" if layout.production else "$scheme",
        mirror_client_cidrs=settings.mirror_client_cidrs,
        trusted_proxy_cidrs=settings.trusted_proxy_cidrs,
        private_servers=layout.private_servers,
        # Never out of rotation as a whole: in production the same Swarm name is listed several times,
        # locally a replica restarting for maintenance would leave reads with no live server for seconds.
        private_server_params=" max_fails=0" + resolve,
        caches=[
            {
                "upstream": names.cache_route(u.id, "plain"),  # the nginx upstream block: the cache itself
                "routes": {v: names.cache_route(u.id, v) for v in names.CACHE_VARIANTS},
                "server": layout.cache_servers[u.host] + resolve,
            }
            for u in settings.upstreams
        ],
        resolver=layout.resolver,
        egresses=[
            {
                "host": u.host,
                "id": u.id,
                "route": names.egress_route(u.id),
                "listen": layout.egress_listens[u.host],
                "origin": u.url,
            }
            for u in settings.upstreams
        ],
        egress_resolver=layout.egress_resolver,
        egress_trusted=" ".join(sorted({names.origin_key(u.url) for u in settings.upstreams})),
        upstream_ca_file=UPSTREAM_CA_FILE
        if any(u.url.startswith("https://") for u in settings.upstreams)
        else "",
        upstream_timeout_seconds=settings.upstream_timeout_seconds,
        upstream_stream_timeout_seconds=settings.upstream_stream_timeout_seconds,
        upstream_down_seconds=settings.upstream_down_seconds,
        cache_answer_seconds=cache_answer,
        cache_blob_read_seconds=cache_answer + settings.upstream_stream_timeout_seconds,
        blob_cache_dir=blob_cache_dir(layout.state_dir),
        blob_cache_mib=settings.blob_cache_mib,
        blob_cache_minutes=settings.blob_cache_minutes,
        blob_fill_seconds=blob_fill_seconds(settings),
        redirect_keep_seconds=REDIRECT_KEEP_SECONDS,
        # A waiting client gets the blob once the first fetch completes: as long as a transfer may take.
        blob_lock_seconds=900,
        drain_flag=f"{layout.state_dir}/{DRAIN_FLAG}",
        registry_listen=layout.registry_listen,
        mirror_listen=layout.mirror_listen,
        registry_host=settings.registry_host,
        mirror_host=settings.mirror_host,
        # Doors sharing one port are told apart by Host: a catch-all answers other names (/healthz only).
        default_listen=layout.registry_listen if layout.registry_listen == layout.mirror_listen else "",
        answers=(*REFUSAL_STATUSES, "ping"),
        # Answers are produced by the static handler failing to find a file: a root that does not exist.
        no_files_root=f"{layout.state_dir}/no-files",
        read_only_header=READ_ONLY_HEADER,
        # Docker retries a refused layer upload 5 times, 5 s to 25 s apart (about 75 s in all).
        read_only_retry_after=30,
    )


def cache_answer_seconds(upstream_timeout_seconds: int) -> int:
    """How long a door waits for a cache's answer to a manifest or tag-list request (and for a blob's
    first bytes). A miss makes at most three calls through the egress, each bounded there (the ping,
    the token, the manifest: upstream_timeout_seconds each); a cache still silent after those and a
    margin is hung (a request of its stuck on a dead peer), and the door answers without it."""
    return 3 * upstream_timeout_seconds + 5


def blob_fill_seconds(settings: GatewaySettings) -> int:
    """How long nginx keeps a blob body it fetched from a cache (templates/routes.conf.j2)."""
    storage = settings.storage
    if isinstance(storage, S3Storage) and storage.redirect:
        return REDIRECT_FILL_SECONDS
    return settings.blob_cache_minutes * 60
