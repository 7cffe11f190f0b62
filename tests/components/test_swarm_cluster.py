"""SwarmCluster under Pulumi mocks: exactly what the engine would receive for the managers and bootstrap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components.engine.bootstrap import BootstrapConfig
from components.swarm_cluster import (
    BOOTSTRAP_COMMAND,
    BOOTSTRAP_SHA256,
    NfsMount,
    SwarmCluster,
    SwarmClusterArgs,
)

DROPLET = "digitalocean:index/droplet:Droplet"
RESERVED_IP = "digitalocean:index/reservedIp:ReservedIp"
ASSIGNMENT = "digitalocean:index/reservedIpAssignment:ReservedIpAssignment"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SSH_KEY = "digitalocean:index/sshKey:SshKey"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
COMMAND = "command:local:Command"
VPC_ID = "5a4f0c2e-0000-4000-8000-000000000001"
TAGS = ("owncr", "env:test", "role:manager")


def make_args(**overrides: Any) -> SwarmClusterArgs:
    values: dict[str, Any] = {
        "stack": "test",
        "region": "fra1",
        "node_count": 3,
        "node_size": "s-2vcpu-4gb",
        "node_image": "ubuntu-24-04-x64",
        "vpc_id": VPC_ID,
        "vpc_cidr": "10.20.0.0/24",
        "tags": TAGS,
        "ssh_public_key": None,
        "docker_version": "5:28.5.2-1~ubuntu.24.04~noble",
    }
    values.update(overrides)
    return SwarmClusterArgs(**values)


async def settled(cluster: SwarmCluster) -> None:
    """Wait until every registration the assertions look at has reached the mocks."""
    outputs: list[pulumi.Output[Any]] = [cluster.bootstrap.id, cluster.client_key_pem, cluster.docker_host]
    outputs += [d.id for d in cluster.droplets] + cluster.public_ips + cluster.vpc_ips
    await asyncio.gather(*(o.future() for o in outputs))


def plain(value: Any) -> Any:
    return unwrap_rpc_secret(value) if is_rpc_secret(value) else value


def by_index(mocks: Any, typ: str, stem: str) -> list[Any]:
    """Resources of `typ` named `<stem><i>`, ordered by i."""
    found = {int(r.name[len(stem) :]): r for r in mocks.of_type(typ) if r.name.startswith(stem)}
    return [found[i] for i in sorted(found)]


@pulumi.runtime.test
async def test_droplets_sit_in_the_vpc_with_monitoring_tags_key_and_secret_user_data(mocks):
    await settled(SwarmCluster("swarm", make_args()))
    droplets = by_index(mocks, DROPLET, "swarm-manager-")
    assert len(droplets) == 3
    (ssh_key,) = mocks.of_type(SSH_KEY)
    fingerprint = mocks.computed[SSH_KEY](ssh_key, "")["fingerprint"]
    for index, droplet in enumerate(droplets):
        inputs = droplet.inputs
        assert inputs["name"] == f"owncr-test-manager-{index}"
        assert inputs["vpcUuid"] == VPC_ID
        assert inputs["monitoring"] is True
        assert inputs["tags"] == list(TAGS)
        assert (inputs["region"], inputs["size"], inputs["image"]) == (
            "fra1",
            "s-2vcpu-4gb",
            "ubuntu-24-04-x64",
        )
        assert inputs["sshKeys"] == [fingerprint]
        assert is_rpc_secret(inputs["userData"]), "user data carries the server key: must be secret"
        user_data = unwrap_rpc_secret(inputs["userData"])
        assert user_data.startswith("#cloud-config\n")
        files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
        server_key = mocks.computed[PRIVATE_KEY](mocks.named(f"swarm-docker-server-{index}-key"), "")
        assert files["/etc/docker/tls/server-key.pem"] == server_key["privateKeyPem"]


@pulumi.runtime.test
async def test_children_are_parented_to_the_component(mocks):
    cluster = SwarmCluster("swarm", make_args(node_count=1))
    await settled(cluster)
    for child in [*cluster.droplets, cluster.bootstrap]:
        assert "owncr:compute:SwarmCluster$" in await child.urn.future()


@pulumi.runtime.test
async def test_monitoring_can_be_turned_off(mocks):
    await settled(SwarmCluster("swarm", make_args(monitoring=False, node_count=1)))
    assert [d.inputs["monitoring"] for d in mocks.of_type(DROPLET)] == [False]


@pulumi.runtime.test
async def test_each_node_gets_a_reserved_ip_bound_to_its_droplet(mocks):
    cluster = SwarmCluster("swarm", make_args())
    await settled(cluster)
    reserved = by_index(mocks, RESERVED_IP, "swarm-ip-")
    assignments = by_index(mocks, ASSIGNMENT, "swarm-ip-assignment-")
    droplet_ids = [int(str(await d.id.future())) for d in cluster.droplets]
    public_ips = [await ip.future() for ip in cluster.public_ips]
    assert [r.inputs["region"] for r in reserved] == ["fra1"] * 3
    assert "dropletId" not in reserved[0].inputs, "the IP exists before (and apart from) its droplet"
    assert [a.inputs["dropletId"] for a in assignments] == droplet_ids
    assert [a.inputs["ipAddress"] for a in assignments] == public_ips
    assert len(set(public_ips)) == 3
    assert await cluster.docker_host.future() == f"tcp://{public_ips[0]}:2376"


@pulumi.runtime.test
async def test_server_certificates_name_the_reserved_ip_and_client_cert_is_for_clients(mocks):
    cluster = SwarmCluster("swarm", make_args())
    await settled(cluster)
    public_ips = [await ip.future() for ip in cluster.public_ips]
    assert len(mocks.of_type(CERT_REQUEST)) == 3 + 1  # one per server, one client
    for index in range(3):
        csr = mocks.named(f"swarm-docker-server-{index}-csr").inputs
        assert csr["ipAddresses"] == [public_ips[index], "127.0.0.1"]
        assert csr["dnsNames"] == [f"owncr-test-manager-{index}"]
        signed = mocks.named(f"swarm-docker-server-{index}").inputs
        assert "server_auth" in signed["allowedUses"] and "client_auth" not in signed["allowedUses"]
    client = mocks.named("swarm-docker-client").inputs
    assert "client_auth" in client["allowedUses"] and "server_auth" not in client["allowedUses"]
    assert mocks.named("swarm-docker-ca").inputs["isCaCertificate"] is True
    assert await cluster.client_key_pem.is_secret()


@pulumi.runtime.test
async def test_bootstrap_gets_everything_through_secret_environment_and_reruns_on_replacement(mocks):
    cluster = SwarmCluster("swarm", make_args())
    await settled(cluster)
    (command,) = mocks.of_type(COMMAND)
    inputs = command.inputs
    assert inputs["create"] == BOOTSTRAP_COMMAND
    assert "PEM" not in inputs["create"] and "SWMTKN" not in inputs["create"]
    assert is_rpc_secret(inputs["environment"])
    env = unwrap_rpc_secret(inputs["environment"])
    config = BootstrapConfig.from_environ(env)  # exactly what the module will parse
    public_ips = [await ip.future() for ip in cluster.public_ips]
    vpc_ips = [await ip.future() for ip in cluster.vpc_ips]
    assert [(n.address, n.vpc_ip) for n in config.nodes] == list(zip(public_ips, vpc_ips, strict=True))
    assert config.ca_pem == await cluster.ca_cert_pem.future()
    assert config.key_pem == await cluster.client_key_pem.future()
    droplet_ids = [await d.id.future() for d in cluster.droplets]
    assert inputs["triggers"] == [*droplet_ids, BOOTSTRAP_SHA256]


@pulumi.runtime.test
async def test_generated_ssh_key_is_secret_and_a_given_key_is_used_as_is(mocks):
    generated = SwarmCluster("gen", make_args(node_count=1))
    given = SwarmCluster(
        "given", make_args(node_count=1, stack="other", ssh_public_key="ssh-ed25519 AAAAC3 me")
    )
    await settled(generated)
    await settled(given)
    assert generated.ssh_private_key is not None and await generated.ssh_private_key.is_secret()
    assert given.ssh_private_key is None
    keys = {k.name: k.inputs for k in mocks.of_type(SSH_KEY)}
    assert keys["given-ssh"]["publicKey"] == "ssh-ed25519 AAAAC3 me"
    assert keys["gen-ssh"]["publicKey"].startswith("ssh-ed25519 ")
    assert [k.name for k in mocks.of_type(PRIVATE_KEY) if k.name.endswith("ssh-key")] == ["gen-ssh-key"]


@pytest.mark.parametrize("count", [1, 3, 5])
@pulumi.runtime.test
async def test_node_count_shapes_the_cluster(mocks, count):
    await settled(SwarmCluster("swarm", make_args(node_count=count)))
    assert len(mocks.of_type(DROPLET)) == count
    assert len(mocks.of_type(RESERVED_IP)) == count
    assert len(mocks.of_type(ASSIGNMENT)) == count
    assert len([c for c in mocks.of_type(SIGNED_CERT) if "server" in c.name]) == count
    (command,) = mocks.of_type(COMMAND)  # one bootstrap for the whole cluster
    assert len(json.loads(plain(command.inputs["environment"])["OWNCR_SWARM_NODES"])) == count


@pulumi.runtime.test
async def test_nfs_mount_reaches_the_user_data(mocks):
    nfs = NfsMount(
        host=pulumi.Output.from_input("10.20.0.50"), export_path="/share-1", mount_point="/mnt/reg"
    )
    await settled(SwarmCluster("swarm", make_args(node_count=1, nfs=nfs)))
    user_data = plain(mocks.of_type(DROPLET)[0].inputs["userData"])
    assert "10.20.0.50:/share-1" in user_data and "/mnt/reg" in user_data and "nfs-common" in user_data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_count": 2}, "node_count 2"),
        ({"node_count": 4}, "node_count 4"),
        ({"node_image": "centos-stream-9-x64"}, "centos-stream-9-x64"),
        ({"tags": ()}, "tags"),
        ({"nfs": NfsMount(host="10.0.0.2", export_path="/x", mount_point="relative")}, "absolute"),
    ],
)
def test_bad_args_are_rejected_with_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(**overrides)


@pytest.mark.parametrize("roll", [(), (1,)])
@pulumi.runtime.test
async def test_only_rolled_managers_take_changed_user_data_key_and_image(mocks, roll):
    # ignore_changes also applies to `pulumi up --replace` (the old values in the state are used), so
    # rolling a manager is done by leaving it out of ignore_changes, one at a time (settings.py).
    ignored: dict[str, list[str]] = {}

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        if args.type_ == DROPLET:
            ignored[args.name] = list(args.opts.ignore_changes or [])

    opts = pulumi.ResourceOptions(transformations=[record])
    await settled(SwarmCluster("swarm", make_args(roll_nodes=roll), opts=opts))
    expected = {
        f"swarm-manager-{i}": [] if i in roll else ["user_data", "ssh_keys", "image"] for i in range(3)
    }
    assert ignored == expected
