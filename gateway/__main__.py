"""`python -m gateway run ...`: the local runner's command line (docs/local.md, docs/architecture.md)."""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from pathlib import Path

from gateway import binaries
from gateway.config import (
    DOCKER_HUB,
    JS_ENGINES,
    FilesystemStorage,
    GatewaySettings,
    SettingsError,
    Upstream,
    User,
)
from gateway.runner import GatewayError, LocalGateway


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
    run.add_argument(
        "--js-engine",
        choices=JS_ENGINES,
        help="njs engine for the router (njs >= 0.8.6; default: the module's own default)",
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
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
        storage=FilesystemStorage(str(args.data.resolve() / "storage")),
        # A fresh secret per run: it only has to be shared by the replicas of this run.
        http_secret=secrets.token_hex(32),
        private_replicas=args.private_replicas,
        js_engine=args.js_engine,
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from(args)
    except SettingsError as err:
        print(f"gateway: invalid settings: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    gateway = LocalGateway(
        settings,
        data_dir=args.data,
        registry_port=args.registry_port,
        mirror_port=args.mirror_port,
        nginx_bin=args.nginx,
        registry_bin=args.registry,
    )
    try:
        gateway.start()
        ready = f"ready registry={gateway.registry_url} mirror={gateway.mirror_url} {gateway.versions}"
        print(ready, flush=True)
        while not (dead := gateway.dead()):
            time.sleep(0.5)
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
