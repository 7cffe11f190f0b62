"""__main__.py under mocks with every committed stack file: the security-relevant inputs, exactly.

Each stack (plus an NFS variant of dev) runs ONCE per session in its own mock session (`recorded`); the
tests below assert on what the engine would have received. Wire names are camelCase (pulumi-api-facts
§7.4.1); secrets arrive wrapped (`is_rpc_secret`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pulumi
import pytest
from pulumi.runtime.rpc import is_rpc_secret

from components import physical_name
from components.edge import DO_NAME_SERVERS, EdgeArgs, certificate_name, containerd_hosts, daemon_json
from components.network import NetworkArgs, NodeFirewallArgs
from components.plan import maintenance_access
from components.storage import NfsStorageArgs, R2Storage, R2StorageArgs
from tests.skips import skip_for_stack

DO = "digitalocean:index"
CF = "cloudflare:index"
FIREWALL = f"{DO}/firewall:Firewall"
LOAD_BALANCER = f"{DO}/loadBalancer:LoadBalancer"
DROPLET = f"{DO}/droplet:Droplet"
API_TOKEN = f"{CF}/apiToken:ApiToken"
R2_BUCKET = f"{CF}/r2Bucket:R2Bucket"
CF_RECORD = f"{CF}/dnsRecord:DnsRecord"
DO_RECORD = f"{DO}/dnsRecord:DnsRecord"
R2_ITEM_READ, R2_ITEM_WRITE = "6a018a9f2fc74eb6b293b0c548f38b39", "2efd5506f9c8494dacb1fa10a3e7d5b6"
SELECTOR = "owncr-test-node"  # physical_name("test", "node"): the mocks' stack is "test"
EVERYWHERE = ["0.0.0.0/0", "::/0"]


async def _s3(run) -> dict[str, Any]:
    """S3 credentials of an R2 stack, awaited while the run's event loop lives."""
    storage = run.namespace.get("storage")
    if not isinstance(storage, R2Storage):
        return {}
    return {
        "secret": await storage.secret_access_key.future(),
        "is_secret": await storage.secret_access_key.is_secret(),
        "token_value": await storage.token.value.future(),
    }


@pytest.fixture
def run(recorded, committed_stack):
    return recorded(committed_stack, collect=_s3)


@pytest.fixture
def cloud_run(run):
    if not run.cloud:
        skip_for_stack("not a DigitalOcean stack")
    return run


def cfg(run, key: str) -> Any:
    value = run.config[f"owncr:{key}"]
    return json.loads(value) if value[:1] in "[{" else value


# ---------------------------------------------------------------------------------------------------------
# Firewall


def test_firewall_allows_exactly_lb_admin_metrics_and_swarm_traffic(cloud_run):
    firewall = cloud_run.one(FIREWALL)
    lb_id = cloud_run.id_of(cloud_run.one(LOAD_BALANCER))
    admin = cfg(cloud_run, "adminCidrs")
    assert firewall.inputs["tags"] == [SELECTOR]
    assert cloud_run.plain(firewall.inputs["inboundRules"]) == [
        {"protocol": "tcp", "portRange": "8080", "action": "allow", "sourceLoadBalancerUids": [lb_id]},
        {"protocol": "tcp", "portRange": "22", "action": "allow", "sourceAddresses": admin},
        {"protocol": "tcp", "portRange": "2376", "action": "allow", "sourceAddresses": admin},
        {"protocol": "tcp", "portRange": "9145", "action": "allow", "sourceAddresses": admin},
        {"protocol": "tcp", "portRange": "2377", "action": "allow", "sourceTags": [SELECTOR]},
        {"protocol": "tcp", "portRange": "7946", "action": "allow", "sourceTags": [SELECTOR]},
        {"protocol": "udp", "portRange": "7946", "action": "allow", "sourceTags": [SELECTOR]},
        {"protocol": "udp", "portRange": "4789", "action": "allow", "sourceTags": [SELECTOR]},
    ]
    assert cloud_run.plain(firewall.inputs["outboundRules"]) == [
        {"protocol": "tcp", "portRange": "1-65535", "destinationAddresses": EVERYWHERE},
        {"protocol": "udp", "portRange": "1-65535", "destinationAddresses": EVERYWHERE},
        {"protocol": "icmp", "destinationAddresses": EVERYWHERE},
    ]


def test_world_admin_access_only_where_acknowledged(cloud_run):
    firewall = cloud_run.one(FIREWALL)
    sources = {
        a for r in cloud_run.plain(firewall.inputs["inboundRules"]) for a in r.get("sourceAddresses", [])
    }
    world = sources & set(EVERYWHERE)
    assert not world or cfg(cloud_run, "allowWorldAdminAccess") == "true"


# ---------------------------------------------------------------------------------------------------------
# Droplets, load balancer, certificate, DNS


def test_droplets_live_in_the_vpc_with_the_selector_tag(cloud_run):
    vpc = cloud_run.one(f"{DO}/vpc:Vpc")
    assert vpc.inputs["ipRange"] == cfg(cloud_run, "vpcCidr")
    droplets = cloud_run.of_type(DROPLET)
    assert len(droplets) == int(cfg(cloud_run, "nodeCount"))
    for droplet in droplets:
        assert droplet.inputs["vpcUuid"] == cloud_run.id_of(vpc)
        assert SELECTOR in droplet.inputs["tags"]
        assert droplet.inputs["monitoring"] is True
        assert droplet.inputs["size"] == cfg(cloud_run, "nodeSize")


def test_load_balancer_terminates_tls_and_forwards_to_nginx(cloud_run):
    lb = cloud_run.one(LOAD_BALANCER)
    cert = cloud_run.one(f"{DO}/certificate:Certificate")
    assert lb.inputs["dropletTag"] == SELECTOR and "dropletIds" not in lb.inputs
    assert lb.inputs["vpcUuid"] == cloud_run.id_of(cloud_run.one(f"{DO}/vpc:Vpc"))
    assert lb.inputs["forwardingRules"] == [
        {
            "entryPort": 443,
            "entryProtocol": "https",
            "targetPort": 8080,
            "targetProtocol": "http",
            "certificateName": cert.inputs["name"],
        },
        {"entryPort": 80, "entryProtocol": "http", "targetPort": 8080, "targetProtocol": "http"},
    ]
    assert lb.inputs["redirectHttpToHttps"] is True
    assert lb.inputs["healthcheck"] == {
        "port": 8080,
        "protocol": "http",
        "path": "/healthz",
        # The lowest values DigitalOcean's provider accepts (interval, timeout 3..300; thresholds 2..10).
        "checkIntervalSeconds": 3,
        "responseTimeoutSeconds": 3,
        "healthyThreshold": 2,
        "unhealthyThreshold": 2,
    }
    assert lb.inputs["enableProxyProtocol"] is True
    assert lb.inputs["enableBackendKeepalive"] is False
    assert lb.inputs["httpIdleTimeoutSeconds"] == 600
    assert lb.inputs["disableLetsEncryptDnsRecords"] is True


def test_certificate_is_lets_encrypt_for_both_doors(cloud_run):
    cert = cloud_run.one(f"{DO}/certificate:Certificate")
    doors = [cfg(cloud_run, "domain"), cfg(cloud_run, "mirrorDomain")]
    assert cert.inputs["type"] == "lets_encrypt"
    assert cert.inputs["domains"] == doors
    assert cert.inputs["name"] == certificate_name("test", doors)


def test_certificate_name_changes_with_its_domains():
    one = certificate_name("prod", ["cr.example.com", "mirror.cr.example.com"])
    assert one == certificate_name("prod", ["cr.example.com", "mirror.cr.example.com"])
    assert one != certificate_name("prod", ["cr.example.com", "pull.cr.example.com"])
    assert len(one) <= 255 and one.startswith("owncr-prod-tls-")


def test_delegation_records_are_dns_only_ns_records(cloud_run):
    records = cloud_run.of_type(CF_RECORD)
    assert records, "the delegation needs NS records in the Cloudflare zone"
    for record in records:
        assert record.inputs["proxied"] is False
        assert record.inputs["type"] == "NS"
        assert record.inputs["name"] == cfg(cloud_run, "domain")
        assert record.inputs["zoneId"] == cfg(cloud_run, "cloudflareZoneId")
    assert sorted(r.inputs["content"] for r in records) == list(DO_NAME_SERVERS)
    zone = cloud_run.one(f"{DO}/domain:Domain")
    assert zone.inputs["name"] == cfg(cloud_run, "domain")


def test_both_doors_point_at_the_load_balancer(cloud_run):
    lb_ip = cloud_run.outputs["load_balancer_ip"]
    records = {r.inputs["name"]: r.inputs for r in cloud_run.of_type(DO_RECORD)}
    label = cfg(cloud_run, "mirrorDomain").removesuffix("." + cfg(cloud_run, "domain"))
    assert set(records) == {"@", label}
    for record in records.values():
        assert (record["type"], record["value"], record["domain"]) == ("A", lb_ip, cfg(cloud_run, "domain"))


# ---------------------------------------------------------------------------------------------------------
# Storage


def test_r2_token_names_exactly_one_bucket_with_object_read_write_only(cloud_run):
    if cfg(cloud_run, "storage") != "r2":
        skip_for_stack("NFS stack")
    bucket = cloud_run.one(R2_BUCKET)
    token = cloud_run.one(API_TOKEN)
    account, jurisdiction = cfg(cloud_run, "cloudflareAccountId"), cfg(cloud_run, "r2Jurisdiction")
    assert bucket.inputs["accountId"] == account and bucket.inputs["jurisdiction"] == jurisdiction
    [policy] = token.inputs["policies"]
    assert policy["effect"] == "allow"
    # In id order, as the provider reads them back (tests/components/readback.py).
    assert policy["permissionGroups"] == sorted([{"id": R2_ITEM_READ}, {"id": R2_ITEM_WRITE}], key=str)
    resources = json.loads(policy["resources"])
    assert resources == {
        f"com.cloudflare.edge.r2.bucket.{account}_{jurisdiction}_{bucket.inputs['name']}": "*"
    }
    assert "condition" not in token.inputs and "expiresOn" not in token.inputs


def test_r2_bucket_aborts_abandoned_multipart_uploads(cloud_run):
    if cfg(cloud_run, "storage") != "r2":
        skip_for_stack("NFS stack")
    bucket = cloud_run.one(R2_BUCKET)
    lifecycle = cloud_run.one(f"{CF}/r2BucketLifecycle:R2BucketLifecycle")
    assert lifecycle.inputs["accountId"] == bucket.inputs["accountId"]
    assert lifecycle.inputs["bucketName"] == bucket.inputs["name"]
    assert lifecycle.inputs["jurisdiction"] == bucket.inputs["jurisdiction"]
    (rule,) = lifecycle.inputs["rules"]
    assert rule["enabled"] is True and rule["conditions"] == {"prefix": ""}  # the whole bucket
    condition = rule["abortMultipartUploadsTransition"]["condition"]
    assert condition == {
        "type": "Age",
        "maxAge": 3 * 24 * 3600,
    }  # 3 days (the mock hands ints over as floats)
    assert "deleteObjectsTransition" not in rule  # objects are the registries' to delete, never R2's


def test_s3_secret_is_the_sha256_of_the_token_value_and_secret(cloud_run):
    s3 = cloud_run.extra
    if not s3:
        skip_for_stack("NFS stack")
    assert s3["is_secret"]
    assert s3["secret"] == hashlib.sha256(s3["token_value"].encode()).hexdigest()


def test_nfs_variant_puts_the_share_in_the_vpc_and_creates_nothing_in_cloudflare_r2(recorded):
    nfs = recorded("dev", {"storage": "nfs"})
    share = nfs.one(f"{DO}/nfs:Nfs")
    assert share.inputs["vpcId"] == nfs.id_of(nfs.one(f"{DO}/vpc:Vpc"))
    assert share.inputs["size"] == 50 and share.inputs["performanceTier"] == "standard"
    assert not nfs.of_type(R2_BUCKET) and not nfs.of_type(API_TOKEN)
    assert {"nfs_host", "nfs_mount_path"} <= set(nfs.outputs)
    assert "bucket_name" not in nfs.outputs


# ---------------------------------------------------------------------------------------------------------
# Secrets and exports


def test_provider_tokens_reach_the_providers_as_secrets(cloud_run):
    do_provider = cloud_run.one("pulumi:providers:digitalocean")
    cf_provider = cloud_run.one("pulumi:providers:cloudflare")
    assert is_rpc_secret(do_provider.inputs["token"])
    assert is_rpc_secret(cf_provider.inputs["apiToken"])
    for resource in cloud_run.resources:
        package = resource.typ.split(":")[0]
        if package in ("digitalocean", "cloudflare"):
            # "<provider urn>::<id>": the program's explicit provider, never a default one.
            assert f"$pulumi:providers:{package}::{package}::" in resource.provider, resource.name


def test_secret_inputs_are_marked_secret(cloud_run):
    for droplet in cloud_run.of_type(DROPLET):
        assert is_rpc_secret(droplet.inputs["userData"]), droplet.name  # carries the server's TLS key
    for command in cloud_run.of_type("command:local:Command"):
        assert is_rpc_secret(command.inputs["environment"]), command.name


def test_exports_hold_no_secret_but_the_secret_maintenance_access(run):
    assert run.secret_outputs == {"maintenance"}
    text = json.dumps({k: v for k, v in run.outputs.items() if k != "maintenance"})
    secrets = [v for k, v in run.config.items() if "token" in k.lower()]
    secrets += list(json.loads(run.config.get("owncr:userPasswords", "{}")).values())
    if run.extra:
        secrets += [run.extra["secret"], run.extra["token_value"]]
    assert secrets or not run.cloud
    assert not [s for s in secrets if s and s in text]
    assert "PRIVATE KEY" not in text


def test_exports_are_the_documented_ones(cloud_run):
    assert set(cloud_run.outputs) >= {
        "registry_url",
        "mirror_url",
        "load_balancer_ip",
        "node_public_ips",
        "node_vpc_ips",
        "ssh_command",
        "docker_daemon_json",
        "containerd_hosts_toml",
    }
    domain, mirror = cfg(cloud_run, "domain"), cfg(cloud_run, "mirrorDomain")
    assert cloud_run.outputs["registry_url"] == f"https://{domain}"
    assert cloud_run.outputs["mirror_url"] == f"https://{mirror}"
    assert len(cloud_run.outputs["node_public_ips"]) == int(cfg(cloud_run, "nodeCount"))
    assert cloud_run.outputs["ssh_command"] == f"ssh root@{cloud_run.outputs['node_public_ips'][0]}"
    assert json.loads(cloud_run.outputs["docker_daemon_json"]) == {"registry-mirrors": [f"https://{mirror}"]}
    hosts = cloud_run.outputs["containerd_hosts_toml"]
    assert set(hosts) == {f"/etc/containerd/certs.d/{h}/hosts.toml" for h in cfg(cloud_run, "upstreams")}


def test_maintenance_output_is_the_deployers_access_and_the_stacks_retention(run):
    """What the maintenance workflow reads (components/cli/maintenance.py): the Docker API the
    deployer uses (the first manager over mutual TLS; the local socket), the private service, the rules."""
    access = run.outputs["maintenance"]
    services = {r.inputs["name"] for r in run.of_type("docker:index/service:Service")}
    assert access["private_service"] in services and access["private_service"].endswith("-private")
    rules = json.loads(run.config.get("owncr:retention", "{}"))
    assert {r["namespace"]: r for r in access["retention"]} == {
        ns: {"namespace": ns, "keep": r.get("keep"), "days": r.get("days"), "protect": r.get("protect", [])}
        for ns, r in rules.items()
    }
    env = maintenance_access.environment(access)
    assert maintenance_access.settings_from(env)[0] == access["private_service"]
    if run.cloud:
        assert access["docker_host"] == f"tcp://{run.outputs['node_public_ips'][0]}:2376"
        assert "BEGIN CERTIFICATE" in access["ca_pem"] and "BEGIN CERTIFICATE" in access["cert_pem"]
        assert "PRIVATE KEY" in access["key_pem"]
        assert {"OWNCR_DOCKER_CA_PEM", "OWNCR_DOCKER_CERT_PEM", "OWNCR_DOCKER_KEY_PEM"} <= set(env)
    else:
        assert access["docker_host"] == "unix:///var/run/docker.sock"
        assert not any(k.endswith("_PEM") for k in env)


def test_monitoring_alerts_follow_the_flag(cloud_run):
    alerts = cloud_run.of_type(f"{DO}/monitorAlert:MonitorAlert")
    if cfg(cloud_run, "monitoringAlerts") != "true":
        assert alerts == []
        return
    emails = cfg(cloud_run, "alertEmails")
    assert {a.inputs["type"] for a in alerts} == {
        "v1/insights/droplet/cpu",
        "v1/insights/droplet/memory_utilization_percent",
        "v1/insights/droplet/disk_utilization_percent",
    }
    for alert in alerts:
        assert alert.inputs["alerts"] == {"emails": emails}
        assert alert.inputs["tags"] == [SELECTOR]


def test_local_stacks_create_no_cloud_resource(run):
    if run.cloud:
        skip_for_stack("cloud stack")
    cloud = [r.typ for r in run.resources if r.typ.split(":")[0] in ("digitalocean", "cloudflare")]
    cloud += [
        r.typ
        for r in run.resources
        if r.typ in ("pulumi:providers:digitalocean", "pulumi:providers:cloudflare")
    ]
    assert cloud == []


# ---------------------------------------------------------------------------------------------------------
# Client snippets


def test_containerd_hosts_put_docker_hub_at_the_root_and_others_under_v2_host():
    files = containerd_hosts(
        "https://mirror.cr.example.com",
        [("docker.io", "https://registry-1.docker.io"), ("ghcr.io", "https://ghcr.io")],
    )
    assert files["/etc/containerd/certs.d/docker.io/hosts.toml"] == (
        'server = "https://registry-1.docker.io"\n\n'
        '[host."https://mirror.cr.example.com"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    assert files["/etc/containerd/certs.d/ghcr.io/hosts.toml"] == (
        'server = "https://ghcr.io"\n\n'
        '[host."https://mirror.cr.example.com/v2/ghcr.io"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )


def test_daemon_json_lists_the_mirror_door():
    assert json.loads(daemon_json("https://mirror.cr.example.com")) == {
        "registry-mirrors": ["https://mirror.cr.example.com"]
    }


# ---------------------------------------------------------------------------------------------------------
# Determinism: a second `pulumi up` must see identical inputs (no diff, no replacement)


def _canonical(run) -> list[tuple[str, str, str]]:
    return sorted((r.typ, r.name, json.dumps(run.plain(r.inputs), sort_keys=True)) for r in run.resources)


def test_two_runs_give_identical_inputs(recorded, record_program, committed_stack):
    first = recorded(committed_stack, collect=_s3)
    second = record_program(committed_stack)
    differing = sorted(set(_canonical(first)) ^ set(_canonical(second)))
    assert not differing, differing[:4]
    assert len(first.resources) == len(second.resources)
    assert first.outputs == second.outputs


def test_preview_of_every_stack_succeeds(mock_session, run_program, committed_stack):
    """`pulumi preview` (unknown computed values, e.g. of a brand-new stack) must not fail."""
    with mock_session(preview=True) as mocks:

        @pulumi.runtime.test
        def body():
            return run_program(committed_stack).outputs.get("registry_url", pulumi.Output.from_input(""))

        _ = body()
        assert mocks.resources


# ---------------------------------------------------------------------------------------------------------
# Component arguments refuse what the components cannot build (settings.py already refused it for users)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: EdgeArgs(
                stack="s",
                region="fra1",
                domain="cr.example.com",
                mirror_domain="mirror.example.org",
                cloudflare_zone_id="0" * 32,
                vpc_id="v",
                selector_tag="t",
            ),
            "mirror_domain mirror.example.org must lie inside domain cr.example.com",
            id="mirror-outside-domain",
        ),
        pytest.param(
            lambda: NodeFirewallArgs(stack="s", selector_tag="t", admin_cidrs=(), load_balancer_id="lb"),
            "admin_cidrs must not be empty",
            id="no-admin-cidr",
        ),
        pytest.param(
            lambda: NfsStorageArgs(stack="s", region="fra1", size_gib=10, vpc_id="v"),
            "size_gib 10 is below DigitalOcean's 50 GiB minimum",
            id="nfs-too-small",
        ),
        pytest.param(
            lambda: R2StorageArgs(
                stack="s", account_id="a", jurisdiction="default", location=None, s3_endpoint="x"
            ),
            "account_id and an https S3 endpoint are required",
            id="r2-endpoint-not-https",
        ),
        pytest.param(
            lambda: NetworkArgs(stack="s", region="fra1", cidr="10.0.0.0"),
            "stack, region and a CIDR are required",
            id="vpc-not-a-cidr",
        ),
    ],
)
def test_component_args_refuse_what_cannot_be_built(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_physical_names_are_dns_safe_and_stack_scoped():
    assert physical_name("prod", "lb") == "owncr-prod-lb"
    assert physical_name("Dev_1", "registry") == "owncr-dev-1-registry"
    assert physical_name("dev", "node") != physical_name("prod", "node")
