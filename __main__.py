"""owncr: composition only. settings -> providers -> components -> exports.

`platform: digitalocean` (`deploy_cloud`) builds the network, storage, the swarm managers, the edge and
the firewall, then the registry services; `platform: local` (`deploy_local`) creates no DigitalOcean or
Cloudflare resource, only the same registry services on the local Docker engine. Both export the URLs
and the client snippets the same way (`export_client_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_digitalocean as digitalocean
import pulumi_random as random

import settings as owncr_settings
from components import gateway_wiring
from components.edge import Edge, EdgeArgs, containerd_hosts, daemon_json
from components.local_swarm import LocalSwarm
from components.monitoring import NodeAlerts, NodeAlertsArgs
from components.network import Network, NetworkArgs, NodeFirewall, NodeFirewallArgs
from components.plan import maintenance_access
from components.registry_services import (
    LOCAL_DOCKER_HOST,
    DockerEngine,
    RegistryServices,
    RegistryServicesArgs,
)
from components.storage import RegistryStorage, storage_for
from components.swarm_cluster import SwarmCluster, SwarmClusterArgs
from components.uptime import DoorChecks, DoorChecksArgs, SlackTarget


@dataclass(frozen=True)
class Deployment:
    services: RegistryServices
    storage: RegistryStorage | None  # None on the local platform
    login_command: pulumi.Input[str] | None = None  # instead of the services' plain one


def export_client_settings(
    registry: owncr_settings.Registry, registry_url: pulumi.Input[str], mirror_url: str
) -> None:
    upstream_pairs = [(u.host, u.url) for u in registry.upstreams]
    pulumi.export("registry_url", registry_url)
    pulumi.export("mirror_url", mirror_url)
    pulumi.export("docker_daemon_json", daemon_json(mirror_url))
    pulumi.export("containerd_hosts_toml", containerd_hosts(mirror_url, upstream_pairs))


def export_maintenance(settings: owncr_settings.Settings, engine: DockerEngine) -> None:
    """What `scripts/maintenance` needs (the deployer's Docker API access, the retention rules, the
    caches' eviction policy), one secret output: it holds the deployer's client key."""
    registry = settings.registry
    access = maintenance_access.access(
        settings.stack,
        registry.retention,
        registry.cache_ttl,
        registry.cache_max_gib,
        engine.host,
        engine.ca_pem,
        engine.cert_pem,
        engine.key_pem,
    )
    pulumi.export("maintenance", pulumi.Output.secret(access))


def deploy_cloud(settings: owncr_settings.Settings, cloud: owncr_settings.Cloud) -> Deployment:
    registry = settings.registry
    # Explicit providers; each token is the secret stack config, or (None) the provider's env variable.
    do_provider = digitalocean.Provider(
        "digitalocean", token=pulumi.Config("digitalocean").get_secret("token")
    )
    cf_provider = cloudflare.Provider(
        "cloudflare", api_token=pulumi.Config("cloudflare").get_secret("apiToken")
    )
    cloud_opts = pulumi.ResourceOptions(providers=[do_provider, cf_provider])

    network = Network(
        "network",
        NetworkArgs(stack=settings.stack, region=cloud.region, cidr=cloud.vpc_cidr),
        opts=cloud_opts,
    )
    storage = storage_for(
        "storage",
        cloud.storage,
        stack=settings.stack,
        region=cloud.region,
        vpc_id=network.vpc_id,
        opts=cloud_opts,
    )
    cluster = SwarmCluster(
        "swarm",
        SwarmClusterArgs(
            stack=settings.stack,
            region=cloud.region,
            node_count=cloud.node_count,
            node_size=cloud.node_size,
            node_image=cloud.node_image,
            vpc_id=network.vpc_id,
            vpc_cidr=cloud.vpc_cidr,
            tags=network.node_tags,
            ssh_public_key=cloud.ssh_public_key,
            roll_nodes=cloud.roll_nodes,
            docker_version=cloud.docker_version,
            monitoring=True,
            nfs=storage.nfs_mount,
        ),
        opts=cloud_opts,
    )
    edge = Edge(
        "edge",
        EdgeArgs(
            stack=settings.stack,
            region=cloud.region,
            domain=cloud.domain,
            mirror_domain=cloud.mirror_domain,
            cloudflare_zone_id=cloud.cloudflare_zone_id,
            vpc_id=network.vpc_id,
            selector_tag=network.selector_tag,
        ),
        opts=cloud_opts,
    )
    NodeFirewall(
        "firewall",
        NodeFirewallArgs(
            stack=settings.stack,
            selector_tag=network.selector_tag,
            admin_cidrs=cloud.admin_cidrs,
            load_balancer_id=edge.load_balancer.id,
        ),
        opts=cloud_opts,
    )
    if cloud.monitoring_alerts:
        NodeAlerts(
            "alerts",
            NodeAlertsArgs(
                stack=settings.stack, selector_tag=network.selector_tag_name, emails=cloud.alert_emails
            ),
            opts=cloud_opts,
        )
        slack = settings.secrets.alert_slack_webhook
        DoorChecks(
            "uptime",
            DoorChecksArgs(
                stack=settings.stack,
                doors=(cloud.domain, cloud.mirror_domain),
                emails=cloud.alert_emails,
                slack=SlackTarget(channel=cloud.alert_slack_channel, url=slack)
                if cloud.alert_slack_channel and slack is not None
                else None,
            ),
            opts=cloud_opts,
        )

    export_client_settings(registry, edge.registry_url, edge.mirror_url)
    pulumi.export("load_balancer_ip", edge.ip)
    pulumi.export("node_public_ips", cluster.public_ips)
    pulumi.export("node_vpc_ips", cluster.vpc_ips)
    storage.export()
    pulumi.export("ssh_command", pulumi.Output.concat("ssh root@", cluster.public_ips[0]))
    engine = DockerEngine(
        host=cluster.docker_host,
        ca_pem=cluster.ca_cert_pem,
        cert_pem=cluster.client_cert_pem,
        key_pem=cluster.client_key_pem,
    )
    export_maintenance(settings, engine)

    services = RegistryServices(
        "registry",
        RegistryServicesArgs(
            plan=gateway_wiring.cloud_plan(
                settings.stack,
                registry,
                node_count=cloud.node_count,
                nfs_mount_point=storage.nfs_mount_point,
            ),
            build=gateway_wiring.cloud_build(
                registry,
                domain=cloud.domain,
                mirror_domain=cloud.mirror_domain,
                vpc_cidr=cloud.vpc_cidr,
                s3=storage.s3,
                blob_redirect=storage.blob_redirect,
            ),
            secrets=gateway_wiring.secret_inputs(settings.secrets, storage.s3_keys),
            engine=engine,
            registry_door=cloud.domain,
            # The Engine API has no swarm (and no TLS) until the bootstrap has run.
            depends_on=[cluster.bootstrap],
        ),
    )
    return Deployment(services, storage)


def deploy_local(settings: owncr_settings.Settings, local: owncr_settings.Local) -> Deployment:
    registry = settings.registry
    local_swarm = LocalSwarm("local-swarm", LOCAL_DOCKER_HOST, ports=(local.registry_port, local.mirror_port))
    registry_door = f"{gateway_wiring.LOCAL_REGISTRY_HOST}:{local.registry_port}"
    # A user without a configured password gets a generated one, kept as a secret and exported as one:
    # trying the local stack needs no step by hand.
    generated = {
        user: pulumi.Output.secret(random.RandomPassword(f"password-{user}", length=24, special=False).result)
        for user in settings.secrets.generated
    }
    secrets = gateway_wiring.secret_inputs(settings.secrets, None)
    secrets |= {gateway_wiring.password_key(user): password for user, password in generated.items()}
    local_mirror_url = f"http://{gateway_wiring.LOCAL_REGISTRY_HOST}:{local.mirror_port}"
    services = RegistryServices(
        "registry",
        RegistryServicesArgs(
            plan=gateway_wiring.local_plan(settings.stack, registry, local),
            build=gateway_wiring.local_build(registry),
            secrets=secrets,
            values={gateway_wiring.LOCAL_CLIENT_CIDRS: local_swarm.bridge_cidrs},
            engine=DockerEngine(host=LOCAL_DOCKER_HOST),
            registry_door=registry_door,
            # Services need the swarm.
            depends_on=[local_swarm.init],
        ),
    )
    export_client_settings(registry, f"http://{registry_door}", local_mirror_url)
    export_maintenance(settings, DockerEngine(host=LOCAL_DOCKER_HOST))
    if generated:
        pulumi.export("generated_passwords", pulumi.Output.secret(generated))
    return Deployment(services, None, login_command(registry_door, sorted(generated)))


def login_command(registry_door: str, generated: list[str]) -> str:
    """`docker login` for the first user whose password was generated, reading it from the stack."""
    if not generated:
        return f"docker login {registry_door}"
    user = generated[0]
    read = f"import json,sys; print(json.load(sys.stdin)['{user}'])"
    return (
        f'pulumi stack output --show-secrets generated_passwords --json | python3 -c "{read}" | '
        f"docker login {registry_door} -u {user} --password-stdin"
    )


settings = owncr_settings.load()
if settings.cloud is not None:
    deployment = deploy_cloud(settings, settings.cloud)
elif settings.local is not None:
    deployment = deploy_local(settings, settings.local)
else:
    raise AssertionError("settings.load() returns either cloud or local settings")
services, storage = deployment.services, deployment.storage
pulumi.export("docker_login_command", deployment.login_command or services.docker_login_command)
