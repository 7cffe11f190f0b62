"""`python -m gateway run ...`: the local runner's command line (docs/local.md, docs/architecture.md);
`python -m gateway maintenance ...`: retention and garbage collection of that running data plane
(gateway/upkeep/maintenance.py, docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from gateway.config import (
    DEFAULT_CACHE_TTL,
    DOCKER_HUB,
    JS_ENGINES,
    FilesystemStorage,
    GatewaySettings,
    S3Storage,
    SettingsError,
    Upstream,
    User,
)
from gateway.local import binaries
from gateway.local.runner import GatewayError, LocalGateway
from gateway.upkeep import maintenance, status
from gateway.upkeep.eviction import CachePolicy
from gateway.upkeep.retention import RetentionRule, check_rules, record, rule_from_cli


def _upstream(value: str) -> Upstream:
    host, sep, url = value.partition("=")
    return Upstream(host=host, url=url) if sep else Upstream(host=DOCKER_HUB, url=value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run nginx and the registries locally on 127.0.0.1")
    run.add_argument("--data", required=True, type=Path, help="directory for configs, logs and storage")
    run.add_argument("--registry-port", required=True, type=int)
    run.add_argument("--mirror-port", required=True, type=int)
    run.add_argument(
        "--metrics-port", type=int, help="nginx's Prometheus metrics on 127.0.0.1 (default: a free port)"
    )
    run.add_argument(
        "--upstream",
        action="append",
        required=True,
        metavar="[HOST=]URL",
        help="a bare URL is the Docker Hub stand-in; HOST=URL is served under /v2/HOST/",
    )
    run.add_argument("--namespace", action="append", required=True, help="a private namespace")
    run.add_argument(
        "--user",
        action="append",
        required=True,
        metavar="NAME:PASSWORD",
        help="may pull and push in every --namespace",
    )
    run.add_argument("--private-replicas", type=int, default=1)
    run.add_argument(
        "--nginx",
        default=binaries.default_nginx(),
        metavar="PATH",
        help="nginx with the njs module (default: %(default)s, the production version once "
        "scripts/install-tools ran, else Debian's)",
    )
    run.add_argument(
        "--registry",
        default=binaries.default_registry(),
        metavar="PATH",
        help="Distribution's registry binary (default: %(default)s)",
    )
    s3 = run.add_argument_group(
        "S3-compatible storage (default: a directory under --data)",
        "credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never from the command line",
    )
    s3.add_argument("--s3-endpoint", metavar="URL", help="e.g. http://127.0.0.1:5000 (path-style addressing)")
    s3.add_argument("--s3-bucket", metavar="NAME")
    s3.add_argument("--s3-region", metavar="R", default="auto", help="default: %(default)s (as R2)")
    s3.add_argument(
        "--blob-redirect",
        action="store_true",
        help="answer authorised blob GET/HEAD with a 307 to a presigned URL on --s3-endpoint",
    )
    run.add_argument(
        "--js-engine",
        choices=JS_ENGINES,
        help="njs engine for the router (njs >= 0.8.6; default: the module's own default)",
    )
    run.add_argument(
        "--retention",
        action="append",
        default=[],
        metavar="NAMESPACE=keep:N[,days:D][,protect:GLOB]",
        help="tag retention of a private namespace, applied by `maintenance` (repeatable; protect too)",
    )
    run.add_argument(
        "--cache-ttl",
        default=DEFAULT_CACHE_TTL,
        metavar="DURATION",
        help="`maintenance` evicts a mirrored image nobody pulled for this long (Go duration; default: "
        "%(default)s)",
    )
    run.add_argument(
        "--cache-max-gib",
        type=int,
        metavar="N",
        help="`maintenance` evicts the least recently pulled images beyond N GiB per cache "
        "(default: no budget)",
    )
    tend = sub.add_parser(
        "maintenance",
        help="retention, then garbage collection in a read-only window, of a running `run --data DIR`",
    )
    tend.add_argument("--data", required=True, type=Path, help="the --data directory of `run`")
    tend.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted (with sizes); change nothing"
    )
    show = sub.add_parser(
        "status", help="what a running `run --data DIR` did: requests, cache hits, upstreams, storage used"
    )
    show.add_argument("--data", required=True, type=Path, help="the --data directory of `run`")
    return parser.parse_args(argv)


def _storage(args: argparse.Namespace, environ: dict[str, str]) -> FilesystemStorage | S3Storage:
    if args.s3_endpoint is None and args.s3_bucket is None:
        if args.blob_redirect:
            raise SettingsError(
                "--blob-redirect needs --s3-endpoint and --s3-bucket: a directory has no URLs to redirect to"
            )
        return FilesystemStorage(str(args.data.resolve() / "storage"))
    if args.s3_endpoint is None or args.s3_bucket is None:
        raise SettingsError("--s3-endpoint and --s3-bucket go together")
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not environ.get(k)]
    if missing:
        raise SettingsError(f"--s3-endpoint: set {' and '.join(missing)} in the environment")
    return S3Storage(
        bucket=args.s3_bucket,
        endpoint=args.s3_endpoint,
        access_key=environ["AWS_ACCESS_KEY_ID"],
        secret_key=environ["AWS_SECRET_ACCESS_KEY"],
        region=args.s3_region,
        redirect=args.blob_redirect,
    )


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> GatewaySettings:
    namespaces = tuple(args.namespace)
    users = []
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep:
            raise SettingsError(f"--user {name!r}: expected NAME:PASSWORD")
        users.append(User(name=name, password=password, pull=namespaces, push=namespaces))
    return GatewaySettings(
        namespaces=namespaces,
        users=tuple(users),
        upstreams=tuple(_upstream(u) for u in args.upstream),
        storage=_storage(args, dict(os.environ) if environ is None else environ),
        # A fresh secret per run: it only has to be shared by the replicas of this run.
        http_secret=secrets.token_hex(32),
        private_replicas=args.private_replicas,
        js_engine=args.js_engine,
        cache_ttl=args.cache_ttl,
        cache_max_gib=args.cache_max_gib,
    )


def retention_from(args: argparse.Namespace, settings: GatewaySettings) -> tuple[RetentionRule, ...]:
    return check_rules((rule_from_cli(spec) for spec in args.retention), settings.namespaces)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


# The private registries' mode `maintenance` asked for (signals), applied by the main loop.
_requested: list[bool] = []


def _request_mode(signum: int, frame: object) -> None:
    _requested.append(signum == maintenance.READ_ONLY_SIGNAL)


def _write_maintenance_state(gateway: LocalGateway, rules: tuple[RetentionRule, ...]) -> None:
    """What `python -m gateway maintenance --data DIR` needs to reach this data plane."""
    path = gateway.data_dir / "state" / maintenance.STATE_FILE
    assert gateway.bundle is not None
    first = gateway.bundle.services[gateway.private_keys()[0]]
    info = {
        "pid": os.getpid(),
        "private_url": f"http://127.0.0.1:{first.port}",
        "private_config": first.files[0].path,
        "private_replicas": gateway.settings.private_replicas,
        "registry_bin": gateway.registry_bin,
        "metrics_url": gateway.metrics_url,
        "retention": [record(rule) for rule in rules],
        "cache_policy": CachePolicy.of(gateway.settings.cache_ttl, gateway.settings.cache_max_gib).record(),
    }
    path.write_text(json.dumps(info, indent=2))


def _apply_mode(gateway: LocalGateway, read_only: bool) -> None:
    mode = gateway.data_dir / "state" / maintenance.MODE_FILE
    try:
        gateway.set_private_read_only(read_only)
    except GatewayError as err:
        mode.write_text(f"failed: {err}")
        raise
    mode.write_text("read-only" if read_only else "writable")


def run_maintenance(args: argparse.Namespace) -> int:
    try:
        store = maintenance.LocalStore(args.data)
        if store.replicas == 1 and not args.dry_run:
            print(
                "maintenance: one private replica: pulls of private images fail while it restarts "
                "(twice, well under a second each); run with --private-replicas 2 to avoid that",
                file=sys.stderr,
            )
        maintenance.run(store, dry_run=args.dry_run)
    except maintenance.MaintenanceError as err:
        print(f"maintenance: {err}", file=sys.stderr)
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        store = maintenance.LocalStore(args.data)
        url = f"{store.metrics_url}/metrics"
        try:
            figures = status.Figures(status.scrape(url))
        except OSError as err:
            raise maintenance.MaintenanceError(f"metrics at {url}: {err}") from err
        print(status.report(figures, status.storage_used(store.private_bytes(), store.cache_bytes())), end="")
    except maintenance.MaintenanceError as err:
        print(f"status: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "maintenance":
        return run_maintenance(args)
    if args.command == "status":
        return run_status(args)
    try:
        settings = settings_from(args)
        rules = retention_from(args, settings)
    except SettingsError as err:
        print(f"gateway: invalid settings: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(maintenance.READ_ONLY_SIGNAL, _request_mode)
    signal.signal(maintenance.WRITABLE_SIGNAL, _request_mode)
    gateway = LocalGateway(
        settings,
        data_dir=args.data,
        registry_port=args.registry_port,
        mirror_port=args.mirror_port,
        metrics_port=args.metrics_port,
        nginx_bin=args.nginx,
        registry_bin=args.registry,
    )
    try:
        gateway.start()
        _write_maintenance_state(gateway, rules)
        urls = f"registry={gateway.registry_url} mirror={gateway.mirror_url} metrics={gateway.metrics_url}"
        ready = f"ready {urls} {gateway.versions}"
        print(ready, flush=True)
        while not (dead := gateway.dead()):
            while _requested:
                _apply_mode(gateway, _requested.pop(0))
            time.sleep(0.1)
        print(f"gateway: {', '.join(dead)} exited; see {gateway.data_dir / 'logs'}", file=sys.stderr)
        return 1
    except _Stop:
        return 0
    except GatewayError as err:
        print(f"gateway: {err}", file=sys.stderr)
        return 1
    finally:
        gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
