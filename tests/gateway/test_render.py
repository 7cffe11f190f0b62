"""The renderers: settings validation, htpasswd, the files of a local and a production render, and
`nginx -t` on the production render exactly as rendered (in a private mount namespace where the Swarm
service names resolve and the container paths exist)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from gateway import __main__ as gateway_main
from gateway.config import FilesystemStorage, GatewaySettings, S3Storage, SettingsError, Upstream, User
from gateway.local import binaries
from gateway.names import cache_key, private_key
from gateway.render import layout
from gateway.render.bundle import Bundle, render_local, render_production
from gateway.render.htpasswd import bcrypt_base64 as htpasswd_base64
from gateway.render.htpasswd import hash_password, render_htpasswd
from tests.gateway.routing_fixtures import HTTP_SECRET

HUB_TOKEN = "dckr_pat_hub-token-value"  # noqa: S105 (test value)
S3 = S3Storage(
    bucket="owncr",
    endpoint="https://acct.r2.cloudflarestorage.com",
    access_key="AKIAEXAMPLE",
    secret_key="s3-secret-key-value",  # noqa: S106 (test value)
)
SETTINGS = GatewaySettings(
    namespaces=("acme", "team/ops"),
    users=(User("alice", "alice-password", push=("acme",)), User("bob", "bob-password", pull=("team/ops",))),
    upstreams=(
        Upstream("docker.io", "https://registry-1.docker.io", username="owncr", password=HUB_TOKEN),
        Upstream("ghcr.io", "https://ghcr.io"),
    ),
    storage=S3,
    http_secret=HTTP_SECRET,
    private_replicas=3,
    mirror_client_cidrs=("203.0.113.0/24",),
    trusted_proxy_cidrs=("10.10.0.0/16",),
    registry_host="cr.example.org",
    mirror_host="mirror.cr.example.org",
)


def local(settings: GatewaySettings = SETTINGS, data_dir: str = "/srv/owncr") -> Bundle:
    return render_local(
        settings,
        data_dir=data_dir,
        registry_port=5000,
        mirror_port=5001,
        auth_port=5002,
        private_ports=tuple(range(6000, 6000 + settings.private_replicas)),
        cache_ports={u.host: 7000 + i for i, u in enumerate(settings.upstreams)},
        egress_ports={u.host: 7100 + i for i, u in enumerate(settings.upstreams)},
        metrics_port=7200,
        debug_ports={
            **{private_key(i): 7300 + i for i in range(settings.private_replicas)},
            **{cache_key(u.id): 7400 + i for i, u in enumerate(settings.upstreams)},
        },
        registry_bin=binaries.default_registry(),
        nginx_bin=binaries.default_nginx(),
    )


def configs(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {k: yaml.safe_load(s.files[0].content) for k, s in bundle.services.items() if k != "nginx"}


# ---- settings validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"namespaces": ()}, "at least one private namespace"),
        ({"namespaces": ("Acme",)}, "namespace 'Acme'"),
        ({"namespaces": ("acme", "acme")}, "duplicates"),
        ({"namespaces": ("ghcr.io",), "users": ()}, "at least one user"),
        ({"namespaces": ("ghcr.io",), "users": (User("a1", "password1"),)}, "collide with upstream hosts"),
        ({"users": (User("alice", "password1"), User("alice", "password2"))}, "duplicate names"),
        ({"users": (User("eve", "password1", pull=("other",)),)}, "are not private namespaces"),
        ({"upstreams": (Upstream("ghcr.io", "https://ghcr.io"),)}, "'docker.io'"),
        ({"http_secret": "short"}, "http_secret"),
        ({"private_replicas": 0}, "private_replicas"),
        ({"mirror_client_cidrs": ("10.0.0.1/8",)}, "mirror_client_cidrs"),
        ({"mirror_client_cidrs": ["10.0.0.0/8"]}, "tuple"),
        ({"trusted_proxy_cidrs": ("nope",)}, "trusted_proxy_cidrs"),
        ({"cache_ttl": "7 days"}, "cache_ttl"),
        ({"cache_ttl": "24h\n"}, "cache_ttl"),
        ({"namespaces": ("acme\n",)}, "namespace 'acme"),
        ({"mirror_host": "cr.example.org"}, "must differ"),
        ({"registry_host": "CR.example.org"}, "registry_host"),
        # nginx's server_name holds no port; a DNS label has at most 63 characters.
        ({"registry_host": "cr.example.org:443"}, "registry_host"),
        ({"mirror_host": "m" * 64 + ".example.org"}, "mirror_host"),
        ({"login_burst": 0}, "login_burst"),
    ],
)
def test_invalid_settings_are_rejected_with_the_field_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        replace(SETTINGS, **change)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: User("al:ice", "password1"), "user name"),
        (lambda: User("al ice", "password1"), "user name"),
        # The router takes /v2/<host>/ only when <host> is a repository name component, which has no ':'.
        (lambda: Upstream("ghcr.io:443", "https://ghcr.io"), "upstream host"),
        (lambda: User("alice", "short"), "at least 8"),
        (lambda: User("alice", "x" * 73), "72 bytes"),
        (lambda: Upstream("ghcr.io", "https://ghcr.io/path"), "without a path"),
        (lambda: Upstream("ghcr.io", "https://ghcr.io", username="u"), "together"),
        (lambda: FilesystemStorage("relative"), "absolute"),
        (lambda: replace(S3, chunk_size=1024), "5 MiB"),
        (lambda: replace(S3, endpoint="r2.example"), "no URL"),
    ],
)
def test_invalid_parts_are_rejected(make: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        make()


def test_settings_take_what_distribution_and_htpasswd_take() -> None:
    # Go's time.ParseDuration, microseconds with the micro sign too; htpasswd user names of either case.
    assert replace(SETTINGS, cache_ttl="500\u00b5s").cache_ttl == "500\u00b5s"
    assert replace(SETTINGS, cache_ttl="1h30m").cache_ttl == "1h30m"
    assert User("CI-Bot", "password1", pull=("acme",)).name == "CI-Bot"
    assert replace(SETTINGS, mirror_host="m" * 63 + ".example.org").mirror_host.startswith("m" * 63)


def test_secrets_stay_out_of_reprs() -> None:
    text = repr(SETTINGS)
    for secret in (HUB_TOKEN, "alice-password", S3.secret_key, SETTINGS.http_secret):
        assert secret not in text


# ---- htpasswd ------------------------------------------------------------------------------------


KEY = "htpasswd-salt-key-of-this-deployment"


def test_htpasswd_is_deterministic_bcrypt_and_verifiable() -> None:
    text = render_htpasswd(SETTINGS.users, KEY)
    assert text == render_htpasswd(SETTINGS.users, KEY)  # no diff, no rolling restart on `pulumi up`
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert set(lines) == {"alice", "bob"}
    assert lines["alice"].startswith("$2b$10$")
    assert bcrypt.checkpw(b"alice-password", lines["alice"].encode())
    assert not bcrypt.checkpw(b"bob-password", lines["alice"].encode())
    # Another user or another password gets another salt.
    assert hash_password("carol", "alice-password", KEY)[:29] != lines["alice"][:29]
    assert hash_password("alice", "alice-password2", KEY)[:29] != lines["alice"][:29]


def test_htpasswd_salts_cannot_be_recomputed_from_a_guess_without_the_key() -> None:
    """A bcrypt line shows its salt. Were the salt a function of (name, password) alone, whoever reads
    the file would test a guess with one cheap hash instead of a bcrypt: keyed, a guess needs the
    deployment's key, and the same password differs between deployments."""
    line = hash_password("alice", "alice-password", KEY)
    salt = line[:29]
    guess = "alice-password"  # noqa: S105 (the attacker's right guess)
    unkeyed = hashlib.sha256(b"owncr-htpasswd\0alice\0" + guess.encode()).digest()  # the old scheme
    assert salt[7:] != htpasswd_base64(unkeyed[:16])
    assert hash_password("alice", guess, "another-deployments-key")[:29] != salt
    with pytest.raises(ValueError, match="at least 16 characters"):
        hash_password("alice", guess, "short")


def test_the_salt_key_never_appears_in_a_rendered_file() -> None:
    settings = replace(SETTINGS, htpasswd_salt_key=KEY)
    assert all(KEY not in f.content for f in local(settings).files())
    assert render_htpasswd(settings.users, KEY) in [f.content for f in local(settings).files()]


# ---- local render --------------------------------------------------------------------------------


def test_local_bundle_has_every_service_and_marks_secrets() -> None:
    bundle = local()
    assert list(bundle.services) == [
        "nginx",
        "private",
        "private-2",
        "private-3",
        "cache-docker-io",
        "cache-ghcr-io",
    ]
    for f in bundle.files():
        assert f.path.startswith("/srv/owncr/")
        secret_content = any(s in f.content for s in (HUB_TOKEN, S3.secret_key, SETTINGS.http_secret, "$2b$"))
        assert f.secret or not secret_content, f.path
    nginx_files = {Path(f.path).name: f for f in bundle.services["nginx"].files}
    secret = {n for n, f in nginx_files.items() if f.secret}
    assert (set(nginx_files), secret) == (
        {
            "nginx.conf",
            "router.js",
            "egress.js",
            "referrers.js",
            "store.js",
            "metrics.js",
            "pulls.js",
            "owncr.js",
            "names.js",
            "routes.json",
            "htpasswd",
            "auth-salt.conf",
            "store.json",
        },
        {"htpasswd", "auth-salt.conf", "store.json"},
    )
    # The store's file names the bucket and holds its keys (njs/store.js signs its own requests).
    store = json.loads(nginx_files["store.json"].content)
    assert store == {
        "kind": "s3",
        "endpoint": S3.endpoint.rstrip("/"),
        "bucket": S3.bucket,
        "region": S3.region,
        "pathStyle": S3.force_path_style,
        "accessKey": S3.access_key,
        "secretKey": S3.secret_key,
    }


def test_storage_roots_are_separate_and_r2_shaped() -> None:
    cfg = configs(local())
    roots = {k: c["storage"]["s3"]["rootdirectory"] for k, c in cfg.items()}
    assert roots == {
        "private": "/private",
        "private-2": "/private",
        "private-3": "/private",
        "cache-docker-io": "/cache/docker.io",
        "cache-ghcr-io": "/cache/ghcr.io",
    }
    s3 = cfg["private"]["storage"]["s3"]
    assert (s3["regionendpoint"], s3["region"], s3["forcepathstyle"], s3["chunksize"]) == (
        S3.endpoint,
        "auto",
        True,
        16 * 1024 * 1024,
    )
    for c in cfg.values():
        assert c["storage"]["redirect"] == {"disable": True}
        assert c["http"]["secret"] == SETTINGS.http_secret  # one secret shared by every private replica
        assert c["http"]["relativeurls"] is True
    fs = configs(local(replace(SETTINGS, storage=FilesystemStorage("/data"))))
    assert fs["private"]["storage"]["filesystem"] == {"rootdirectory": "/data/private"}
    assert fs["cache-ghcr-io"]["storage"]["filesystem"] == {"rootdirectory": "/data/cache/ghcr.io"}
    assert all(c["storage"]["redirect"] == {"disable": True} for c in fs.values())


def test_blob_redirect_turns_on_redirects_of_every_registry() -> None:
    """The private registry and every cache: each serves blobs of its own root from the same bucket."""
    cfg = configs(local(replace(SETTINGS, storage=replace(S3, redirect=True))))
    assert set(cfg) == {"private", "private-2", "private-3", "cache-docker-io", "cache-ghcr-io"}
    assert all(c["storage"]["redirect"] == {"disable": False} for c in cfg.values())


CLI = ["run", "--data", "x", "--registry-port", "1", "--mirror-port", "2", "--upstream", "http://h:3"]
CLI += ["--namespace", "team", "--user", "alice:alice-secret-1"]
S3_FLAGS = ["--s3-endpoint", "http://127.0.0.1:9", "--s3-bucket", "b"]
AWS_ENV = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}


def test_nginx_passes_redirects_through_untouched() -> None:
    """A presigned Location must reach the client byte for byte, and no 3xx is ever intercepted."""
    conf = next(f.content for f in local().services["nginx"].files if f.path.endswith("nginx.conf"))
    assert "proxy_redirect off;" in conf
    assert "proxy_redirect " not in conf.replace("proxy_redirect off;", "")
    assert not re.search(r"error_page[^;]*\b3\d\d\b", conf), "a 3xx would be replaced by nginx"


def _cli_storage(flags: list[str], env: dict[str, str]) -> FilesystemStorage | S3Storage:
    return gateway_main.settings_from(gateway_main.parse_args([*CLI, *flags]), env).storage


def test_runner_on_s3_takes_credentials_from_the_environment() -> None:
    storage = _cli_storage([*S3_FLAGS, "--blob-redirect"], AWS_ENV)
    assert isinstance(storage, S3Storage)
    assert (storage.endpoint, storage.bucket, storage.region, storage.redirect) == (
        S3_FLAGS[1],
        "b",
        "auto",
        True,
    )
    assert (storage.access_key, storage.secret_key) == ("id", "key")
    plain = _cli_storage(S3_FLAGS, AWS_ENV)
    assert isinstance(plain, S3Storage) and not plain.redirect
    assert isinstance(_cli_storage([], {}), FilesystemStorage)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--blob-redirect"], AWS_ENV, "--blob-redirect needs --s3-endpoint and --s3-bucket"),
        (S3_FLAGS[:2], AWS_ENV, "--s3-endpoint and --s3-bucket go together"),
        (S3_FLAGS, {"AWS_ACCESS_KEY_ID": "id"}, "set AWS_SECRET_ACCESS_KEY in the environment"),
        (S3_FLAGS, {}, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"),
    ],
)
def test_runner_refuses_incomplete_s3_flags(flags: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _cli_storage(flags, env)


def test_retention_rules_name_a_private_namespace_on_either_storage() -> None:
    # Push times come from the storage the registry writes, a directory or a bucket (store_readers.py).
    for flags, env in (([], {}), (S3_FLAGS, AWS_ENV)):
        args = gateway_main.parse_args([*CLI, *flags, "--retention", "team=keep:3"])
        assert gateway_main.retention_from(args, gateway_main.settings_from(args, env))
        stranger = gateway_main.parse_args([*CLI, *flags, "--retention", "nobody=keep:3"])
        with pytest.raises(SettingsError, match="retention.nobody: not a private namespace"):
            gateway_main.retention_from(stranger, gateway_main.settings_from(stranger, env))


def test_upstream_credentials_only_in_their_cache_config() -> None:
    bundle = local()
    holders = [f.path for f in bundle.files() if HUB_TOKEN in f.content]
    assert holders == ["/srv/owncr/secrets/cache-docker-io.yml"]
    cfg = configs(bundle)
    # Each cache calls its upstream through its own egress server, which alone names the upstream.
    assert cfg["cache-docker-io"]["proxy"] == {
        "remoteurl": "http://127.0.0.1:7100",
        "ttl": "0s",  # Distribution's scheduler off: maintenance evicts (gateway/upkeep/eviction.py)
        "username": "owncr",
        "password": HUB_TOKEN,
    }
    assert cfg["cache-ghcr-io"]["proxy"] == {"remoteurl": "http://127.0.0.1:7101", "ttl": "0s"}
    # Caches share their root and maintenance evicts below it: no descriptor may outlive an eviction.
    assert "cache" not in cfg["cache-docker-io"]["storage"]
    assert "proxy" not in cfg["private"]
    conf = next(f.content for f in bundle.files() if f.path.endswith("nginx.conf"))
    for origin, listen in (
        ("https://registry-1.docker.io", "127.0.0.1:7100"),
        ("https://ghcr.io", "127.0.0.1:7101"),
    ):
        assert f"listen {listen};" in conf
        assert f"set $owncr_egress_origin {origin};" in conf
    # https upstreams: certificates verified, names resolved per request (the machine's nameserver).
    assert "proxy_ssl_verify on;" in conf


def test_routes_json_carries_rights_and_names_js_the_upstreams() -> None:
    nginx = {Path(f.path).name: f.content for f in local().services["nginx"].files}
    routes = json.loads(nginx["routes.json"])
    assert routes == {
        "namespaces": ["team/ops", "acme"],
        "users": {"alice": {"pull": ["acme"], "push": ["acme"]}, "bob": {"pull": ["team/ops"], "push": []}},
    }
    assert "alice-password" not in nginx["routes.json"]
    prefix = "export default "
    module = nginx["names.js"].split("\n", 1)[1]
    assert module.startswith(prefix) and module.endswith(";\n")
    vocabulary = json.loads(module.removeprefix(prefix).removesuffix(";\n"))
    assert vocabulary["hub"] == "docker-io"
    assert vocabulary["upstreamIds"] == {"docker.io": "docker-io", "ghcr.io": "ghcr-io"}
    assert vocabulary["upstreams"]["ghcr-io"] == {
        "host": "ghcr.io",
        "routes": {"plain": "cache_ghcr-io", "tag": "cache_ghcr-io_tag", "blob": "cache_ghcr-io_blob"},
    }


def test_local_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    bundle = local(replace(SETTINGS, trusted_proxy_cidrs=()), data_dir=str(tmp_path))
    for f in bundle.files():
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
    (tmp_path / "state").mkdir()
    done = subprocess.run(
        [*bundle.services["nginx"].command, "-t"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "proxy_protocol" not in bundle.services["nginx"].files[0].content


# ---- production render ---------------------------------------------------------------------------


def test_production_bundle_uses_swarm_names_and_container_paths() -> None:
    bundle = render_production(SETTINGS)
    assert {k: (s.name, s.port) for k, s in bundle.services.items()} == {
        "nginx": ("owncr-gateway", 8080),
        "private": ("owncr-registry-private", 5000),
        "cache-docker-io": ("owncr-registry-cache-docker-io", 5000),
        "cache-ghcr-io": ("owncr-registry-cache-ghcr-io", 5000),
    }
    for f in bundle.files():
        assert f.path.startswith((layout.CONFIG_DIR + "/", layout.SECRET_DIR + "/")), f.path
        assert f.secret == f.path.startswith(layout.SECRET_DIR + "/")
    conf = bundle.services["nginx"].files[0].content
    # Once per group (small reads; writes and blob reads): the name resolves to every replica (DNS round
    # robin), re-resolved through Swarm's DNS while nginx runs (a replaced task's new address); each
    # replica one peer, so a retry goes to another. Writes and blob reads never reuse a connection (a
    # pooled one to a lost node hangs them).
    for group in ("private", "private_fresh"):
        block = conf.split(f"upstream {group} {{", 1)[1].split("}", 1)[0]
        assert block.count("server owncr-registry-private:5000 max_fails=0 resolve;") == 1, block
        assert ("keepalive" in block) == (group == "private"), block
    assert "server owncr-registry-cache-ghcr-io:5000 resolve;" in conf
    assert "resolver 127.0.0.11 valid=5s ipv6=off;" in conf and "zone upstream_private 64k;" in conf
    # Started under the drain wrapper; /healthz answers 503 while the drain flag exists (every server).
    flag = f"{layout.STATE_DIR}/{layout.DRAIN_FLAG}"
    drain = f"{layout.CONFIG_DIR}/drain.sh"
    assert bundle.services["nginx"].command[:4] == ("sh", drain, flag, "QUIT")
    # The registries too: they serve until nginx has re-resolved their name, then get SIGTERM.
    assert bundle.services["private"].command[:4] == ("sh", drain, "-", "TERM")
    assert conf.count(f"if (-f {flag})") == 3
    assert conf.count("listen 8080 proxy_protocol") == 3  # both doors and the default server
    assert "server_name cr.example.org;" in conf and "server_name mirror.cr.example.org;" in conf
    assert "set_real_ip_from 10.10.0.0/16;" in conf and "real_ip_header proxy_protocol;" in conf
    assert "user nginx;" in conf and "X-Forwarded-Proto https" in conf
    cfg = configs(bundle)
    assert cfg["private"]["http"]["addr"] == ":5000"
    assert bundle.services["private"].command == (
        "sh",
        f"{layout.CONFIG_DIR}/drain.sh",
        "-",
        "TERM",
        "registry",
        "serve",
        f"{layout.SECRET_DIR}/private.yml",
    )


def test_production_with_doors_on_two_ports_for_a_single_node() -> None:
    bundle = render_production(replace(SETTINGS, trusted_proxy_cidrs=()), door_ports=(8080, 8081))
    conf = bundle.services["nginx"].files[0].content
    assert "listen 8080;" in conf and "listen 8081;" in conf
    assert "proxy_protocol" not in conf and "default_server" not in conf
    assert bundle.services["nginx"].port == 8080


@pytest.mark.parametrize("ports", [(8080, 8080), (8080, layout.AUTH_PORT)])
def test_production_door_ports_must_not_collide(ports: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="must differ"):
        render_production(SETTINGS, door_ports=ports)


def test_production_needs_the_load_balancer_range() -> None:
    with pytest.raises(ValueError, match="trusted_proxy_cidrs"):
        render_production(replace(SETTINGS, trusted_proxy_cidrs=()))


NGINX_T_IN_NAMESPACE = r"""
set -eu
# Only this mount namespace sees the changes: /etc through an overlay, /run and /var/cache as tmpfs.
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-work" /etc
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/cache
cat "$W/hosts" >> /etc/hosts
grep -q '^nginx:' /etc/passwd || echo 'nginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
grep -q '^nginx:' /etc/group || echo 'nginx:x:101:' >> /etc/group
# Only into the overlay and the tmpfs mounts: nothing on the host's own filesystems is written.
cp -R "$W/root/etc/." /etc/
cp -R "$W/root/run/." /run/
mkdir -p /var/cache/nginx  # the official nginx image has it
exec "$@"
"""


def nginx_t_in_namespace(
    work: Path, command: list[str], hosts: list[str]
) -> subprocess.CompletedProcess[str]:
    (work / "hosts").write_text("".join(f"127.0.0.1 {h}\n" for h in hosts))
    for d in ("etc-up", "etc-work"):
        shutil.rmtree(work / d, ignore_errors=True)
        (work / d).mkdir()
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        NGINX_T_IN_NAMESPACE,
        "sh",
        *command,
        "-t",
    ]
    return subprocess.run(
        argv, env={**os.environ, "W": str(work)}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
@pytest.mark.parametrize("door_ports", [None, (8080, 8081)], ids=["load-balancer", "doors-by-port"])
def test_production_render_passes_nginx_t_as_rendered(
    tmp_path: Path, door_ports: tuple[int, int] | None
) -> None:
    """`nginx -t` on the exact production files at their container paths. What differs from a Swarm
    node: the service names resolve to 127.0.0.1 (via /etc/hosts in the namespace), and the `nginx`
    user and /var/cache/nginx are added as the official image has them."""
    settings = SETTINGS if door_ports is None else replace(SETTINGS, trusted_proxy_cidrs=())
    bundle = render_production(settings, door_ports=door_ports)
    for f in bundle.files():
        target = tmp_path / "root" / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    names = [s.name for k, s in bundle.services.items() if k != "nginx"]
    # nginx's own command line, after the drain wrapper (`sh drain.sh <flag> QUIT`), not needed by nginx -t.
    nginx = bundle.services["nginx"].command[4:]
    command = [binaries.default_nginx() if c == "nginx" else c for c in nginx]
    done = nginx_t_in_namespace(tmp_path, command, names)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    # The upstream names are resolved while nginx runs (`server ... resolve`), so unknown names do not
    # stop it; that needs the `resolver` line: without it the same files fail.
    assert nginx_t_in_namespace(tmp_path, command, []).returncode == 0
    conf = tmp_path / "root" / bundle.services["nginx"].files[0].path.lstrip("/")
    conf.write_text("".join(line for line in conf.read_text().splitlines(True) if "resolver " not in line))
    failed = nginx_t_in_namespace(tmp_path, command, names)
    assert failed.returncode != 0 and "no resolver defined to resolve" in failed.stderr, failed.stderr


def test_metrics_server_listens_apart_and_relays_only_each_registrys_metrics() -> None:
    """Production: its own port, without PROXY protocol (the load balancer never forwards it); each
    registry's debug server on the overlay, relayed by name for /metrics only (never pprof)."""
    bundle = render_production(SETTINGS)
    conf = bundle.services["nginx"].files[0].content
    assert conf.count(f"listen {layout.METRICS_PORT};") == 1
    assert f"listen {layout.METRICS_PORT} proxy_protocol" not in conf
    relays = re.findall(r"location = /metrics/(\S+) \{\s+#[^\n]*\n\s+set \$owncr_debug_server (\S+);", conf)
    assert relays == [
        ("cache-docker-io", f"owncr-registry-cache-docker-io:{layout.DEBUG_PORT}"),
        ("cache-ghcr-io", f"owncr-registry-cache-ghcr-io:{layout.DEBUG_PORT}"),
        ("private", f"owncr-registry-private:{layout.DEBUG_PORT}"),
    ]
    assert conf.count("proxy_pass http://$owncr_debug_server/metrics;") == len(relays)
    assert "/debug/" not in conf
    for key, cfg in configs(bundle).items():
        assert cfg["http"]["debug"] == {
            "addr": f":{layout.DEBUG_PORT}",
            "prometheus": {"enabled": True, "path": "/metrics"},
        }, key
    # Locally every registry process gets its own debug port, and the metrics server its own.
    local_bundle = local()
    assert "listen 127.0.0.1:7200;" in local_bundle.services["nginx"].files[0].content
    debug = {k: c["http"]["debug"]["addr"] for k, c in configs(local_bundle).items()}
    assert len(set(debug.values())) == len(debug) == SETTINGS.private_replicas + len(SETTINGS.upstreams)
