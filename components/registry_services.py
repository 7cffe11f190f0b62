"""RegistryServices: the gateway's rendered files and services deployed onto a Docker Swarm.

Creates, under one component (type `owncr:registry:RegistryServices`):
- a `docker.Provider` for the swarm's manager (mutual TLS on 2376 in the cloud, the local socket for the
  `local` stack); the project disables the default docker provider, so nothing else can reach a socket;
- an overlay network `owncr-<stack>-net` (unencrypted: see the comment at its creation) on which each
  service answers to the DNS name the gateway chose (`ServiceFiles.name`, as a network alias);
- one `docker.ServiceConfig` per non-secret rendered file and one `docker.Secret` per secret file, named
  `owncr-<stack>-<role>-<sha256[:12]>`, keyed for secrets (see `swarm_specs.object_name`);
- one `docker.Service` per Bundle entry, built from `swarm_specs.service_specs` (the same plain specs
  `tests/services/` applies to a real swarm);
- for filesystem storage in a Docker volume (the `local` stack), that volume;
- a `command.local.Command` running `components/engine/rollout.py` after the services, so that `up` ends
  only once Swarm has rolled every changed service out (and only then deletes replaced objects).

Exposes `docker_login_command`, `service_names` (Bundle key -> Swarm service name) and `network_name`.

The Bundle arrives twice (see `render_bundle`): `layout`, rendered from plain placeholder secrets, decides
every resource and name that must be known at preview; `bundle`, rendered once inside `Output.all(...)`
from the real secrets, supplies the file contents only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker
import pulumi_random as random
from pulumi_command import local

from components import engine, physical_name
from components.gateway_wiring import HTPASSWD_SALT_KEY, HTTP_SECRET
from components.plan import swarm_specs
from components.plan.swarm_specs import ServicePlan, ServiceSpec, SwarmFile
from components.service_args import service_args
from gateway import names
from gateway.render.bundle import Bundle

TYPE = "owncr:registry:RegistryServices"
ROLLOUT_COMMAND = "python3 -m components.engine.rollout"
ROLLOUT_SHA256 = engine.program_sha256("rollout")
LOCAL_DOCKER_HOST = "unix:///var/run/docker.sock"


class LayoutMismatch(ValueError):
    """The real render differs in shape from the placeholder render, or leaks a secret into a config."""


def render_bundle(
    build: Callable[[Mapping[str, str]], Bundle],
    secrets: Mapping[str, pulumi.Input[str]],
    values: Mapping[str, pulumi.Input[str]] | None = None,
) -> tuple[Bundle, pulumi.Output[Bundle]]:
    """Render the gateway twice: with placeholders (plain, known at preview) and with the real secrets.

    `build` maps secret values by key (e.g. "http_secret", "password:alice", "s3_secret_key") to a Bundle;
    it must be pure. The placeholder render decides the graph's shape; the real one, run in ONE
    `Output.all(...).apply(...)`, only fills in contents. The real render is checked to have exactly the
    placeholder's shape and to carry no secret value in a non-secret file (which would become a readable
    Swarm config and a plain-text stack state entry).
    """
    plain = dict(values or {})
    overlap = set(plain) & set(secrets)
    if overlap:
        raise ValueError(f"keys both secret and plain: {sorted(overlap)}")
    placeholders = {k: f"placeholder-{k}-{'x' * 16}"[:72] for k in [*secrets, *plain]}
    layout = build(placeholders)

    def real(resolved: dict[str, str]) -> Bundle:
        bundle = build(resolved)
        if swarm_specs.shape(bundle) != swarm_specs.shape(layout):
            raise LayoutMismatch(
                "the gateway rendered a different set of services or files with the real secrets"
            )
        for key, svc in bundle.services.items():
            for f in svc.files:
                leaked = [
                    k
                    for k, v in resolved.items()
                    if k in secrets and not f.secret and len(v) >= 8 and v in f.content
                ]
                if leaked:
                    raise LayoutMismatch(f"{key}: non-secret file {f.path} contains the secret(s) {leaked}")
        return bundle

    return layout, pulumi.Output.all(**secrets, **plain).apply(real)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class DockerEngine:
    """How to reach the swarm manager's Engine API: mutual TLS (all three PEMs) or a local socket."""

    host: pulumi.Input[str]
    ca_pem: pulumi.Input[str] | None = None
    cert_pem: pulumi.Input[str] | None = None
    key_pem: pulumi.Input[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.ca_pem, self.cert_pem, self.key_pem)]
        if any(given) and not all(given):
            raise ValueError("DockerEngine: ca_pem, cert_pem and key_pem go together (mutual TLS)")


@dataclass(frozen=True, kw_only=True)
class RegistryServicesArgs:
    plan: ServicePlan
    # Pure: values by key -> the gateway's Bundle. Called with every key of `secrets` and `values`, plus
    # HTTP_SECRET (generated here). See render_bundle.
    build: Callable[[Mapping[str, str]], Bundle]
    secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    values: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # plain Outputs, e.g. a CIDR
    engine: DockerEngine
    registry_door: str  # host[:port] clients log in to, e.g. "cr.example.com" or "127.0.0.1:5000"
    # Resources the services need first (the swarm's bootstrap: the Engine API has no swarm before it).
    depends_on: Sequence[pulumi.Resource] = ()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _content(bundle: Bundle, f: SwarmFile) -> str:
    return next(r.content for r in bundle.services[f.service].files if r.path == f.path)


class RegistryServices(pulumi.ComponentResource):
    layout: Bundle  # the placeholder render: which services and files exist (contents are NOT the real ones)
    docker_login_command: pulumi.Output[str]
    service_names: dict[str, str]
    network_name: str
    rollout: local.Command

    def __init__(
        self, name: str, args: RegistryServicesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        plan = args.plan
        engine = args.engine
        self.provider = docker.Provider(
            f"{name}-docker",
            host=engine.host,
            ca_material=engine.ca_pem,
            cert_material=engine.cert_pem,
            key_material=pulumi.Output.secret(engine.key_pem) if engine.key_pem is not None else None,
            # The provider pings the engine when it is configured, which the engine does as soon as
            # its inputs are known: seconds into a first `up`, long before cloud-init has installed
            # Docker. No ping, and configured only once the swarm bootstrap has run.
            disable_docker_daemon_check=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=list(args.depends_on))

        # One http.secret shared by every private replica (uploads hop replicas; distribution#2519).
        http_secret = random.RandomPassword(
            f"{name}-http-secret", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        # Keys the content hash in the names of secret objects (see swarm_specs.content_hash).
        name_key = random.RandomPassword(
            f"{name}-object-name-key", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        # Keys the htpasswd salts (gateway/render/htpasswd.py); never deployed, so the htpasswd secret alone
        # lets nobody test password guesses cheaply.
        salt_key = random.RandomPassword(
            f"{name}-htpasswd-salt-key", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        generated = {
            HTTP_SECRET: pulumi.Output.secret(http_secret.result),
            HTPASSWD_SALT_KEY: pulumi.Output.secret(salt_key.result),
        }
        layout, bundle = render_bundle(args.build, {**args.secrets, **generated}, args.values)

        self.layout = layout
        self.network_name = physical_name(plan.stack, "net")
        network = docker.Network(
            f"{name}-net",
            name=self.network_name,
            driver="overlay",
            # Not `encrypted`: that option tunnels node-to-node traffic in IPsec ESP (IP protocol 50), and
            # DigitalOcean cloud firewalls filter VPC traffic too but pass only TCP, UDP and ICMP, so an
            # encrypted overlay would silently cut services off across nodes. The overlay stays inside the
            # account's private VPC; credentials travel as Swarm secrets (Raft, mutual TLS), not on it.
            # https://docs.docker.com/engine/network/drivers/overlay/#encrypt-traffic-on-an-overlay-network
            # https://docs.digitalocean.com/products/networking/firewalls/details/limits/
            attachable=False,
            # Every network argument forces a replacement (the provider has no update), and Swarm
            # refuses a second network with the same name: the old one must go first (its services
            # are replaced with it, as they reference its id).
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )
        after: list[pulumi.Resource] = [network]
        if plan.storage_mount is not None and plan.storage_mount.type == "volume":
            after.append(docker.Volume(f"{name}-data", name=plan.storage_mount.source, opts=child))

        objects: dict[str, tuple[pulumi.Output[str], pulumi.Output[str]]] = {}  # role -> (id, name)
        for f in swarm_specs.swarm_files(layout):
            objects[f.role] = self._file_object(name, plan.stack, f, bundle, name_key.result, child)

        specs = swarm_specs.service_specs(layout, plan)
        self.service_names = {s["key"]: s["name"] for s in specs}
        # Creation order, for a first deploy and for an update that adds an upstream (Pulumi waits for
        # each service to converge before creating what depends on it): the private registries, then
        # nginx (it re-resolves the registries' names while it runs, so it starts without the caches),
        # then the caches, which ask their upstream for its login challenge through nginx's egress as
        # they start (gateway/render/njs/egress.js) and exit if nothing answers.
        by_key = {spec["key"]: spec for spec in specs}

        def created(keys: Sequence[str], after_these: Sequence[pulumi.Resource]) -> list[docker.Service]:
            opts = pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[*after, *after_these])
            )
            return [self._service(name, by_key[key], network, objects, opts) for key in keys]

        private = created([k for k in by_key if k == names.PRIVATE_KEY], [])
        nginx = created([names.NGINX_KEY], private)
        caches = created([k for k in by_key if k.startswith(names.CACHE_KEY_PREFIX)], nginx)
        services = [*private, *nginx, *caches]
        self.rollout = self._rollout(name, engine, specs, objects, services)

        self.docker_login_command = pulumi.Output.from_input(f"docker login {args.registry_door}")
        self.register_outputs(
            {
                "docker_login_command": self.docker_login_command,
                "service_names": self.service_names,
                "network_name": self.network_name,
            }
        )

    def _rollout(
        self,
        name: str,
        engine: DockerEngine,
        specs: Sequence[ServiceSpec],
        objects: Mapping[str, tuple[pulumi.Output[str], pulumi.Output[str]]],
        services: Sequence[docker.Service],
    ) -> local.Command:
        """Wait (components/engine/rollout.py) until Swarm has rolled every service out: the provider's
        own wait returns too early, and Pulumi deletes the replaced configs and secrets right after."""
        environment: dict[str, pulumi.Input[str]] = {
            "OWNCR_DOCKER_HOST": engine.host,
            "OWNCR_SERVICES": json.dumps([s["name"] for s in specs]),
        }
        if engine.ca_pem is not None and engine.cert_pem is not None and engine.key_pem is not None:
            environment |= {
                "OWNCR_DOCKER_CA_PEM": engine.ca_pem,
                "OWNCR_DOCKER_CERT_PEM": engine.cert_pem,
                "OWNCR_DOCKER_KEY_PEM": engine.key_pem,
            }
        return local.Command(
            f"{name}-rollout",
            create=ROLLOUT_COMMAND,
            environment=pulumi.Output.secret(environment),
            # Re-run whenever a service changes: its spec, or the (content-hashed) objects it mounts.
            triggers=[
                ROLLOUT_SHA256,
                json.dumps(specs, sort_keys=True),
                *(objects[role][1] for role in sorted(objects)),
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(services)),
        )

    @staticmethod
    def _file_object(
        name: str,
        stack: str,
        f: SwarmFile,
        bundle: pulumi.Output[Bundle],
        name_key: pulumi.Output[str],
        opts: pulumi.ResourceOptions,
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        content = bundle.apply(lambda b: _content(b, f))
        # The name carries a hash of the content, so a change rolls the service and an unchanged file
        # causes no diff. For secret files it is keyed: htpasswd is a pure function of the passwords
        # (deterministic bcrypt salt), and a bare hash in a plain name would be a guessing oracle.
        key = name_key if f.secret else pulumi.Output.from_input("")
        obj_name = pulumi.Output.unsecret(
            pulumi.Output.all(content, key).apply(lambda a: swarm_specs.object_name(stack, f, a[0], a[1]))
        )
        labels = swarm_specs.object_labels(stack, f)
        if f.secret:
            secret = docker.Secret(
                f"{name}-{f.role}",
                name=obj_name,
                data=pulumi.Output.secret(content.apply(_b64)),
                labels=[docker.SecretLabelArgs(label=k, value=v) for k, v in labels.items()],
                opts=opts,
            )
            return secret.id, obj_name
        # render_bundle proved this file carries no secret value; without unsecret, one user password
        # in the same render would hide every nginx.conf diff behind [secret].
        data = pulumi.Output.unsecret(content.apply(_b64))
        labels_args = [docker.ServiceConfigLabelArgs(label=k, value=v) for k, v in labels.items()]
        config = docker.ServiceConfig(
            f"{name}-{f.role}", name=obj_name, data=data, labels=labels_args, opts=opts
        )
        return config.id, obj_name

    @staticmethod
    def _service(
        name: str,
        spec: ServiceSpec,
        network: docker.Network,
        objects: Mapping[str, tuple[pulumi.Output[str], pulumi.Output[str]]],
        opts: pulumi.ResourceOptions,
    ) -> docker.Service:
        return docker.Service(
            f"{name}-{spec['key']}",
            **service_args(spec, objects, network.id),
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    # The engine fills in the image's platforms on create (the docker client resolves
                    # the image; the provider reads them back) and the field is not computed: without
                    # this, every preview after the first `up` would want to remove them.
                    ignore_changes=["taskSpec.placement.platforms"],
                    # A replacement (a changed name or mode) must remove the old service first: Swarm
                    # refuses a second service with the same name.
                    delete_before_replace=True,
                ),
            ),
        )
