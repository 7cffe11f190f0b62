"""The network around the nodes: VPC, the tags that select the nodes, and the cloud firewall.

`Network` (`owncr:network:Network`) creates the VPC and the DigitalOcean tags the droplets carry and exposes
`vpc_id`, `vpc_cidr`, `node_tags` (every tag name a droplet carries) and `selector_tag` (the one tag, unique
to this stack, by which the firewall and the load balancer pick the nodes: `droplet_tag` takes one tag).

`NodeFirewall` (`owncr:network:NodeFirewall`) is separate because it needs the load balancer's id, which
the edge creates after the VPC. Inbound, nothing but:
- 8080/tcp (nginx) from the load balancer only;
- 22/tcp (SSH, key-only), 2376/tcp (Docker API, mutual TLS) and 9145/tcp (the gateway's Prometheus metrics)
  from `admin_cidrs`;
- 2377/tcp (swarm management), 7946/tcp+udp (gossip), 4789/udp (VXLAN overlay) from the nodes' tag;
outbound is open (apt, Docker Hub and other upstreams, R2). Swarm ports:
https://docs.docker.com/engine/swarm/swarm-tutorial/#open-protocols-and-ports-between-the-hosts

DigitalOcean cloud firewalls filter VPC traffic too and know only TCP, UDP and ICMP
(https://docs.digitalocean.com/products/networking/firewalls/details/limits/): hence the swarm rules by tag,
and hence no IPsec ESP (IP protocol 50) between nodes, which an `encrypted` overlay network needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean

from components import physical_name
from components.plan.cloud_init import DOCKER_API_PORT
from gateway.render.layout import GATEWAY_PORT as NGINX_PORT
from gateway.render.layout import METRICS_PORT

SSH_PORT = 22
SWARM_PORTS = (("tcp", "2377"), ("tcp", "7946"), ("udp", "7946"), ("udp", "4789"))
EVERYWHERE = ["0.0.0.0/0", "::/0"]


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    stack: str
    region: str
    cidr: str  # validated by settings.py: RFC 1918, /16../24

    def __post_init__(self) -> None:
        if not self.stack or not self.region or "/" not in self.cidr:
            raise ValueError(f"stack, region and a CIDR are required, got {self!r}")


def node_tag_names(stack: str) -> tuple[str, str, str, str]:
    """Tags of every node: project, environment, role, and the stack-unique selector (last)."""
    return ("owncr", f"env:{stack}", "role:manager", physical_name(stack, "node"))


class Network(pulumi.ComponentResource):
    vpc: digitalocean.Vpc
    vpc_id: pulumi.Output[str]
    vpc_cidr: str
    node_tags: tuple[str, ...]
    selector_tag: str
    selector_tag_name: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:network:Network", name, None, opts)
        self.node_tags = node_tag_names(args.stack)
        self.selector_tag = self.node_tags[-1]
        # `owncr`, `env:<stack>` and `role:manager` are shared by every stack of the account, and the
        # provider's Delete removes a tag account-wide (untagging every droplet that has it): destroying
        # dev would strip prod's droplets. So only the stack's own tag is ever deleted; the shared ones
        # are left in the account when a stack goes (retain_on_delete, kept in state, so it also holds
        # once a later version stops declaring them). Creating an existing tag adopts it.
        tags = [
            digitalocean.Tag(
                f"{name}-tag-{n}",
                name=tag,
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=tag != self.selector_tag),
            )
            for n, tag in enumerate(self.node_tags)
        ]
        self.selector = tags[-1]
        # For resources that select the nodes by tag: depending on the Tag resource (through its name)
        # makes them wait for it on a first `up`.
        self.selector_tag_name: pulumi.Output[str] = self.selector.name
        self.vpc = digitalocean.Vpc(
            f"{name}-vpc",
            name=physical_name(args.stack, "vpc"),
            region=args.region,
            ip_range=args.cidr,
            description=f"owncr {args.stack}: swarm managers, load balancer, NFS",
            # The droplets are created in this VPC with these tag names; making the VPC wait for the
            # tags makes every droplet wait for them too, as the provider docs' examples do.
            opts=pulumi.ResourceOptions(parent=self, depends_on=tags),
        )
        self.vpc_id = self.vpc.id
        self.vpc_cidr = args.cidr
        self.register_outputs({"vpc_id": self.vpc_id, "selector_tag": self.selector_tag})


@dataclass(frozen=True, kw_only=True)
class NodeFirewallArgs:
    stack: str
    selector_tag: str
    admin_cidrs: tuple[str, ...]  # validated by settings.py (world only when acknowledged)
    load_balancer_id: pulumi.Input[str]

    def __post_init__(self) -> None:
        if not self.admin_cidrs:
            raise ValueError(
                "admin_cidrs must not be empty: the deployer reaches the Docker API through them"
            )


def _inbound(
    protocol: str,
    port: int | str,
    *,
    addresses: list[str] | None = None,
    load_balancers: list[pulumi.Input[str]] | None = None,
    tags: list[str] | None = None,
) -> digitalocean.FirewallInboundRuleArgs:
    return digitalocean.FirewallInboundRuleArgs(
        protocol=protocol,
        port_range=str(port),
        action="allow",
        source_addresses=addresses,
        source_load_balancer_uids=load_balancers,
        source_tags=tags,
    )


class NodeFirewall(pulumi.ComponentResource):
    firewall: digitalocean.Firewall

    def __init__(self, name: str, args: NodeFirewallArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:network:NodeFirewall", name, None, opts)
        admin = list(args.admin_cidrs)
        nodes = [args.selector_tag]
        inbound = [
            _inbound("tcp", NGINX_PORT, load_balancers=[args.load_balancer_id]),
            _inbound("tcp", SSH_PORT, addresses=admin),
            _inbound("tcp", DOCKER_API_PORT, addresses=admin),
            # Read-only counters, no secrets; where the operators' Prometheus scrapes from.
            _inbound("tcp", METRICS_PORT, addresses=admin),
            *(_inbound(protocol, port, tags=nodes) for protocol, port in SWARM_PORTS),
        ]
        outbound = [
            digitalocean.FirewallOutboundRuleArgs(
                protocol="tcp", port_range="1-65535", destination_addresses=EVERYWHERE
            ),
            digitalocean.FirewallOutboundRuleArgs(
                protocol="udp", port_range="1-65535", destination_addresses=EVERYWHERE
            ),
            digitalocean.FirewallOutboundRuleArgs(protocol="icmp", destination_addresses=EVERYWHERE),
        ]
        self.firewall = digitalocean.Firewall(
            f"{name}-firewall",
            name=physical_name(args.stack, "nodes"),
            tags=nodes,
            inbound_rules=inbound,
            outbound_rules=outbound,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"firewall_id": self.firewall.id})
