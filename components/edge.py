"""The edge: DNS delegation, the Let's Encrypt certificate, the load balancer, and client snippets.

`Edge` (`owncr:edge:Edge`) creates:
- a DigitalOcean DNS `Domain` for `domain` (e.g. cr.example.com) and, in the Cloudflare zone, one NS record
  per DigitalOcean name server delegating it (DNS-only: NS records cannot be proxied, and the doors must
  not be either, since Cloudflare's proxy caps request bodies at 100 MB and `docker push` sends layers
  of several GB in one request);
- a `lets_encrypt` `Certificate` for both doors. DigitalOcean issues it through DNS-01 in the delegated
  zone and renews it by itself before expiry (https://docs.digitalocean.com/products/networking/load-balancers/how-to/ssl-termination/);
  the load balancer refers to it by NAME, which survives renewal (a renewal creates a new certificate id).
  The name carries a hash of the domains, so a change of domains creates the new certificate under a new
  name before the old one is deleted (names are unique per account);
- the load balancer, selecting the nodes by tag: HTTPS 443 -> HTTP 8080, HTTP 80 redirected to HTTPS,
  health check GET /healthz on 8080, PROXY protocol (the mirror door allows clients by their real IP);
- A records for both doors, in the delegated DigitalOcean zone.

Exposes `load_balancer`, `ip`, `certificate_name`, `registry_url`, `mirror_url`. Also the pure functions
`daemon_json` and `containerd_hosts` that render the client snippets for a mirror URL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_digitalocean as digitalocean

from components import physical_name
from components.plan import lb_health
from gateway.config import DOCKER_HUB
from gateway.render.layout import GATEWAY_PORT as NGINX_PORT

DO_NAME_SERVERS = ("ns1.digitalocean.com", "ns2.digitalocean.com", "ns3.digitalocean.com")
# DigitalOcean's maximum (https://docs.digitalocean.com/products/networking/load-balancers/details/limits/):
# a multi-GB layer upload or download through a slow link must not be cut by the load balancer.
IDLE_TIMEOUT_SECONDS = 600
NS_TTL = 3600
A_TTL = 300
CERTIFICATE_CREATE_TIMEOUT = "45m"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True, kw_only=True)
class EdgeArgs:
    stack: str
    region: str
    domain: str
    mirror_domain: str  # inside `domain` (settings.py)
    cloudflare_zone_id: str
    vpc_id: pulumi.Input[str]
    selector_tag: str  # the one tag the nodes carry that is unique to this stack

    def __post_init__(self) -> None:
        if not self.mirror_domain.endswith(f".{self.domain}"):
            raise ValueError(f"mirror_domain {self.mirror_domain} must lie inside domain {self.domain}")

    @property
    def doors(self) -> tuple[str, str]:
        return (self.domain, self.mirror_domain)


def certificate_name(stack: str, domains: Sequence[str]) -> str:
    """A name that changes whenever the certificate's domains change (create-before-delete needs it)."""
    digest = hashlib.sha256(",".join(domains).encode()).hexdigest()[:10]
    return physical_name(stack, f"tls-{digest}")


class Edge(pulumi.ComponentResource):
    load_balancer: digitalocean.LoadBalancer
    ip: pulumi.Output[str]
    certificate_name: pulumi.Output[str]
    registry_url: str
    mirror_url: str

    def __init__(self, name: str, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:edge:Edge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        zone = digitalocean.Domain(f"{name}-zone", name=args.domain, opts=child)
        delegation = [
            cloudflare.DnsRecord(
                f"{name}-ns-{n}",
                zone_id=args.cloudflare_zone_id,
                name=args.domain,
                type="NS",
                content=server,
                ttl=NS_TTL,
                proxied=False,
                comment=f"owncr {args.stack}: {args.domain} is served by DigitalOcean DNS",
                opts=child,
            )
            for n, server in enumerate(DO_NAME_SERVERS)
        ]
        certificate = digitalocean.Certificate(
            f"{name}-certificate",
            name=certificate_name(args.stack, args.doors),
            type="lets_encrypt",
            domains=list(args.doors),
            opts=pulumi.ResourceOptions(
                parent=self,
                # Let's Encrypt validates through the DigitalOcean zone: it must exist and be delegated.
                depends_on=[zone, *delegation],
                # Right after the NS delegation, validation waits for resolvers to see the new name
                # servers (up to the parent zone's NS TTL); the provider's own create timeout (10 min,
                # digitalocean/certificate/resource_certificate.go) would fail a first `up` that is fine.
                custom_timeouts=pulumi.CustomTimeouts(create=CERTIFICATE_CREATE_TIMEOUT),
            ),
        )
        self.certificate_name = certificate.name
        self.load_balancer = digitalocean.LoadBalancer(
            f"{name}-lb",
            name=physical_name(args.stack, "lb"),
            region=args.region,
            vpc_uuid=args.vpc_id,
            size_unit=1,
            droplet_tag=args.selector_tag,
            forwarding_rules=[
                digitalocean.LoadBalancerForwardingRuleArgs(
                    entry_port=443,
                    entry_protocol="https",
                    target_port=NGINX_PORT,
                    target_protocol="http",
                    certificate_name=certificate.name,
                ),
                # Only there to be redirected (redirect_http_to_https); nothing is served over plain HTTP.
                digitalocean.LoadBalancerForwardingRuleArgs(
                    entry_port=80, entry_protocol="http", target_port=NGINX_PORT, target_protocol="http"
                ),
            ],
            redirect_http_to_https=True,
            healthcheck=digitalocean.LoadBalancerHealthcheckArgs(
                port=NGINX_PORT,
                protocol="http",
                path=lb_health.HEALTH_PATH,
                check_interval_seconds=lb_health.INTERVAL_SECONDS,
                response_timeout_seconds=lb_health.RESPONSE_TIMEOUT_SECONDS,
                healthy_threshold=lb_health.HEALTHY_THRESHOLD,
                unhealthy_threshold=lb_health.UNHEALTHY_THRESHOLD,
            ),
            enable_proxy_protocol=True,
            # Backend keepalive would send many clients' requests over one backend connection that
            # carries ONE PROXY header: nginx would see the first client's address for all of them.
            enable_backend_keepalive=False,
            http_idle_timeout_seconds=IDLE_TIMEOUT_SECONDS,
            # The A records below are ours; DigitalOcean must not add its own for the certificate.
            disable_lets_encrypt_dns_records=True,
            opts=child,
        )
        self.ip = self.load_balancer.ip
        for role, host in (("registry", args.domain), ("mirror", args.mirror_domain)):
            digitalocean.DnsRecord(
                f"{name}-a-{role}",
                domain=zone.id,
                type="A",
                name=relative_name(host, args.domain),
                value=self.ip,
                ttl=A_TTL,
                opts=child,
            )
        self.registry_url = f"https://{args.domain}"
        self.mirror_url = f"https://{args.mirror_domain}"
        self.register_outputs(
            {
                "ip": self.ip,
                "certificate_name": self.certificate_name,
                "registry_url": self.registry_url,
                "mirror_url": self.mirror_url,
            }
        )


def relative_name(host: str, zone: str) -> str:
    """A record name inside `zone`: "@" for the apex, else the labels before it."""
    return "@" if host == zone else host.removesuffix(f".{zone}")


# ---------------------------------------------------------------------------------------------------------
# Client snippets (pure)


def daemon_json(mirror_url: str) -> str:
    """Docker's /etc/docker/daemon.json entry: Docker Hub pulls go to the mirror door first.

    https://docs.docker.com/docker-hub/image-library/mirror/#configure-the-docker-daemon
    """
    return json.dumps({"registry-mirrors": [mirror_url]}, indent=2) + "\n"


def containerd_hosts(mirror_url: str, upstreams: Sequence[tuple[str, str]]) -> dict[str, str]:
    """containerd's hosts.toml per upstream host: path -> content.

    Docker Hub is at the mirror's root (containerd appends /v2/...); every other upstream lives under
    /v2/<host>/ on the mirror, which containerd only sends with `override_path = true`
    (https://github.com/containerd/containerd/blob/main/docs/hosts.md#override_path-field).
    """
    files = {}
    for host, url in upstreams:
        hub = host == DOCKER_HUB
        mirror = mirror_url if hub else f"{mirror_url}/v2/{host}"
        lines = [
            f'server = "{DOCKER_HUB_SERVER if hub else url}"',
            "",
            f'[host."{mirror}"]',
            '  capabilities = ["pull", "resolve"]',
            *([] if hub else ["  override_path = true"]),
        ]
        files[f"/etc/containerd/certs.d/{host}/hosts.toml"] = "\n".join(lines) + "\n"
    return files
