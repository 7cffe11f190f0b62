"""SwarmCluster: the Docker Swarm managers of one stack, their cloud-init, and the swarm bootstrap.

Creates, under one component (`owncr:compute:SwarmCluster`):
- an SSH key (the user's public key, or an ED25519 key generated with pulumi-tls);
- the Docker API PKI (tls_pki.py): a CA, one server certificate per manager, a deployer client cert;
- per manager i: a `ReservedIp` created BEFORE its droplet (so the server certificate can name it), the
  droplet `owncr-<stack>-manager-<i>` in the VPC with monitoring, the given tags, the SSH key and the
  secret cloud-init user data (cloud_init.py), and a `ReservedIpAssignment` binding the IP to it;
- ONE `pulumi_command.local.Command` that runs `components/engine/bootstrap.py` on the deployer.

Why the Docker API over mutual TLS from the deployer (see bootstrap.py for the full argument): a
CI runner's IP is unknown, so whatever it talks to may be open to the world and must be strongly
authenticated; mutual TLS against our own CA authenticates both ends without trusting a fresh droplet's
SSH host key on first use, the reserved IPs keep the server certificates valid across droplet
replacement, and the join token travels only inside TLS between two API calls (never in a shell
command, a log or the Pulumi state). The bootstrap's inputs (CA, client cert and key, node list) reach
it only through the Command's secret `environment`, never through its `create` text or output.

Replacement: the Command's triggers are the droplet ids and the bootstrap's own hash, so replacing any
droplet (node 0 included) re-runs it: the fresh node joins the existing swarm and its dead predecessor
is removed; the other members are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_tls as tls
from pulumi_command import local

from components import engine, physical_name, tls_pki
from components.engine import bootstrap
from components.plan.cloud_init import (
    DOCKER_API_PORT,
    CloudInitSettings,
    NfsShare,
    NodeTls,
    docker_repo_distro,
    render_user_data,
)

NODE_COUNTS = (1, 3, 5)
# Relative to the project directory, where Pulumi runs the program and its providers; a fixed string
# so that no machine-specific path makes the Command differ between deployers. System `python3` on
# purpose: the module is stdlib-only and must not depend on the program's virtualenv.
BOOTSTRAP_COMMAND = "python3 -m components.engine.bootstrap"
BOOTSTRAP_SHA256 = engine.program_sha256("bootstrap")


@dataclass(frozen=True, kw_only=True)
class NfsMount:
    host: pulumi.Input[str]  # NFS server address inside the VPC
    export_path: pulumi.Input[str]  # the share's mount path
    mount_point: str = "/mnt/owncr"  # where every node mounts it (registry services bind-mount below it)


@dataclass(frozen=True, kw_only=True)
class SwarmClusterArgs:
    stack: str  # physical names owncr-{stack}-manager-{i}
    region: str
    node_count: int  # 1, 3 or 5 (validated by settings.py already)
    node_size: str
    node_image: str  # e.g. "ubuntu-24-04-x64"
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    tags: tuple[str, ...]  # DO tag NAMES the droplets carry (the firewall and LB select by them)
    ssh_public_key: str | None  # None -> generate an ED25519 key with pulumi-tls
    roll_nodes: tuple[int, ...] = ()  # managers that take changed user data / key / image (replaced)
    docker_version: str  # pinned apt version string of docker-ce
    monitoring: bool = True
    nfs: NfsMount | None = None

    def __post_init__(self) -> None:
        if self.node_count not in NODE_COUNTS:
            raise ValueError(f"node_count {self.node_count} must be one of {NODE_COUNTS} (Raft quorum)")
        if not self.stack:
            raise ValueError("stack must not be empty")
        if not self.tags:
            raise ValueError("tags must name at least one tag: the firewall and load balancer select by them")
        docker_repo_distro(self.node_image)
        if self.nfs is not None and not self.nfs.mount_point.startswith("/"):
            raise ValueError(f"nfs.mount_point {self.nfs.mount_point!r} must be an absolute path")


def hostname(stack: str, index: int) -> str:
    return physical_name(stack, f"manager-{index}")


class SwarmCluster(pulumi.ComponentResource):
    droplets: list[digitalocean.Droplet]
    public_ips: list[pulumi.Output[str]]
    vpc_ips: list[pulumi.Output[str]]
    docker_host: pulumi.Output[str]
    ca_cert_pem: pulumi.Output[str]
    client_cert_pem: pulumi.Output[str]
    client_key_pem: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str] | None
    bootstrap: local.Command

    def __init__(self, name: str, args: SwarmClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:compute:SwarmCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        if args.ssh_public_key is None:
            generated = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
            public_key: pulumi.Input[str] = generated.public_key_openssh
            self.ssh_private_key = pulumi.Output.secret(generated.private_key_openssh)
        else:
            public_key = args.ssh_public_key
            self.ssh_private_key = None
        ssh_key = digitalocean.SshKey(
            f"{name}-ssh", name=physical_name(args.stack, "ssh"), public_key=public_key, opts=child
        )

        ca = tls_pki.certificate_authority(f"{name}-docker-ca", f"owncr {args.stack} Docker API CA", self)
        client = tls_pki.issue(
            f"{name}-docker-client", ca=ca, common_name="owncr deployer", usage="client_auth", parent=self
        )

        self.droplets = []
        self.public_ips = []
        self.vpc_ips = []
        assignments: list[digitalocean.ReservedIpAssignment] = []
        for index in range(args.node_count):
            host = hostname(args.stack, index)
            reserved = digitalocean.ReservedIp(f"{name}-ip-{index}", region=args.region, opts=child)
            server = tls_pki.issue(
                f"{name}-docker-server-{index}",
                ca=ca,
                common_name=host,
                usage="server_auth",
                parent=self,
                ip_addresses=[reserved.ip_address, "127.0.0.1"],
                dns_names=[host],
            )
            droplet = digitalocean.Droplet(
                f"{name}-manager-{index}",
                name=host,
                region=args.region,
                size=args.node_size,
                image=args.node_image,
                vpc_uuid=args.vpc_id,
                monitoring=args.monitoring,
                tags=list(args.tags),
                ssh_keys=[ssh_key.fingerprint],
                user_data=self._user_data(args, ca.cert_pem, server),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # Delete first: a successor must not coexist with its predecessor, which would
                    # otherwise still be a healthy manager when the bootstrap runs (a 4-member Raft).
                    delete_before_replace=True,
                    # These force replacement: a change must not replace every manager at once (that
                    # loses the Raft quorum and every service). Only the managers in `roll_nodes` (one
                    # at a time, settings.py) take it; ignore_changes would also make a `--replace`
                    # rebuild the droplet from the OLD values kept in the state.
                    ignore_changes=[] if index in args.roll_nodes else ["user_data", "ssh_keys", "image"],
                ),
            )
            assignments.append(
                digitalocean.ReservedIpAssignment(
                    f"{name}-ip-assignment-{index}",
                    droplet_id=droplet.id.apply(int),
                    ip_address=reserved.ip_address,
                    # Unassign from the old droplet before assigning to its successor, never after.
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
            )
            self.droplets.append(droplet)
            self.public_ips.append(reserved.ip_address)
            self.vpc_ips.append(droplet.ipv4_address_private)

        self.docker_host = pulumi.Output.concat("tcp://", self.public_ips[0], f":{DOCKER_API_PORT}")
        self.ca_cert_pem = ca.cert_pem
        self.client_cert_pem = client.cert_pem
        self.client_key_pem = client.key_pem

        nodes = pulumi.Output.all(*self.public_ips, *self.vpc_ips).apply(
            lambda ips: list(zip(ips[: args.node_count], ips[args.node_count :], strict=True))
        )
        environment = pulumi.Output.all(nodes, ca.cert_pem, client.cert_pem, client.key_pem).apply(
            lambda v: bootstrap.environment(
                nodes=v[0], ca_cert_pem=v[1], client_cert_pem=v[2], client_key_pem=v[3]
            )
        )
        self.bootstrap = local.Command(
            f"{name}-bootstrap",
            create=BOOTSTRAP_COMMAND,
            environment=pulumi.Output.secret(environment),
            # A replaced droplet (new id) or a changed bootstrap re-runs it; it is idempotent.
            triggers=[*(d.id for d in self.droplets), BOOTSTRAP_SHA256],
            # The API is reached on the reserved IPs, so they must point at the droplets first.
            opts=pulumi.ResourceOptions(parent=self, depends_on=assignments),
        )

        self.register_outputs(
            {
                "droplets": self.droplets,
                "public_ips": self.public_ips,
                "vpc_ips": self.vpc_ips,
                "docker_host": self.docker_host,
                "ca_cert_pem": self.ca_cert_pem,
                "client_cert_pem": self.client_cert_pem,
                "client_key_pem": self.client_key_pem,
                "ssh_private_key": self.ssh_private_key,
                "bootstrap": self.bootstrap,
            }
        )

    @staticmethod
    def _user_data(
        args: SwarmClusterArgs, ca_cert_pem: pulumi.Output[str], server: tls_pki.IssuedCert
    ) -> pulumi.Output[str]:
        nfs = args.nfs
        rendered = pulumi.Output.all(
            ca_cert_pem,
            server.cert_pem,
            server.key_pem,
            nfs.host if nfs else "",
            nfs.export_path if nfs else "",
        ).apply(
            lambda v: render_user_data(
                CloudInitSettings(
                    node_image=args.node_image,
                    docker_version=args.docker_version,
                    tls=NodeTls(ca_cert_pem=v[0], server_cert_pem=v[1], server_key_pem=v[2]),
                    nfs=NfsShare(host=v[3], export_path=v[4], mount_point=nfs.mount_point) if nfs else None,
                )
            )
        )
        # The server's private key is inside: the whole user data is a secret.
        return pulumi.Output.secret(rendered)
