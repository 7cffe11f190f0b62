"""settings.py: every committed stack loads; every kind of bad value is refused at preview with a message
that names the key, the value and what is allowed; the schema in Pulumi.yaml is complete and sound."""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pytest
import yaml

import settings as owncr_settings
from gateway.upkeep.retention import RetentionRule
from tests import ROOT

PROJECT_YAML = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))
SCHEMA = {k: v for k, v in PROJECT_YAML["config"].items() if ":" not in k}

# Keys only the cloud needs: a local stack must run with every one of them at its (empty) default.
CLOUD_ONLY_BLANK = {
    "domain": "",
    "mirrorDomain": "",
    "cloudflareAccountId": "",
    "cloudflareZoneId": "",
    "adminCidrs": [],
    "digitalocean:token": None,
    "cloudflare:apiToken": None,
}
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
)


@pulumi.runtime.test
def test_every_committed_stack_loads(mocks, load_settings, committed_stack):
    loaded = load_settings(committed_stack)
    assert loaded.platform in owncr_settings.PLATFORMS
    assert (loaded.cloud is None) == (loaded.platform == "local")
    assert (loaded.local is None) == (loaded.platform == "digitalocean")
    assert loaded.registry.upstreams[0].host == "docker.io"
    assert {u.name for u in loaded.registry.users} == set(loaded.secrets.user_passwords)


@pulumi.runtime.test
def test_prod_values_are_typed_and_normalised(mocks, load_settings):
    cloud = load_settings("prod").cloud
    assert cloud is not None
    assert cloud.node_count == 3 and isinstance(cloud.node_count, int)
    assert cloud.admin_cidrs == ("203.0.113.0/28", "198.51.100.17/32")
    assert cloud.monitoring_alerts is True and cloud.alert_emails == ("oncall@example.com",)
    assert cloud.storage == owncr_settings.R2(
        account_id="0123456789abcdef0123456789abcdef", location=None, jurisdiction="eu", blob_redirect=True
    )
    assert cloud.storage.s3_endpoint == "https://0123456789abcdef0123456789abcdef.eu.r2.cloudflarestorage.com"
    assert cloud.ssh_public_key is None  # "" in Pulumi.yaml means: generate a key pair


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, True),  # the default: on with storage r2
        ({"blobRedirect": "true"}, True),
        ({"blobRedirect": "false"}, False),  # clients that reach the doors but not R2
    ],
)
@pulumi.runtime.test
def test_blob_redirect_defaults_to_on_with_r2(mocks, load_settings, config, expected):
    cloud = load_settings("dev", config).cloud
    assert isinstance(cloud.storage, owncr_settings.R2)
    assert cloud.storage.blob_redirect is expected


@pytest.mark.parametrize("config", [{"storage": "nfs"}, {"storage": "nfs", "blobRedirect": "false"}])
@pulumi.runtime.test
def test_nfs_loads_without_redirects(mocks, load_settings, config):
    assert load_settings("dev", config).cloud.storage == owncr_settings.Nfs(size_gib=50)


@pulumi.runtime.test
def test_retention_is_read_into_rules(mocks, load_settings):
    retention = {"acme": {"keep": 10, "days": 30, "protect": ["latest", "v*"]}}
    rules = load_settings("dev", {"retention": retention}).registry.retention
    assert rules == (RetentionRule(namespace="acme", keep=10, days=30, protect=("latest", "v*")),)
    # The committed dev stack's rule; the default (prod sets none): no retention, nothing deleted.
    dev = RetentionRule(namespace="acme", keep=20, days=14, protect=("latest", "v*"))
    assert load_settings("dev").registry.retention == (dev,)
    assert load_settings("prod").registry.retention == ()


@pulumi.runtime.test
def test_local_platform_needs_no_cloud_key(mocks, load_settings):
    loaded = load_settings("dev", {"platform": "local", **CLOUD_ONLY_BLANK})
    assert loaded.cloud is None
    assert loaded.local == owncr_settings.Local(registry_port=5000, mirror_port=5001)


@pulumi.runtime.test
def test_passwords_are_secret_outputs(mocks, load_settings):
    loaded = load_settings("dev")

    async def check() -> None:
        for name, password in loaded.secrets.user_passwords.items():
            assert await password.is_secret(), name
            assert await password.future() == f"test-password-{name}-0123"

    return check()


@pulumi.runtime.test
def test_docker_hub_token_is_a_secret_output(mocks, load_settings):
    loaded = load_settings("dev", {"dockerHubUsername": "acmebot", "dockerHubToken": "dckr_pat_0123456789"})
    token = loaded.secrets.docker_hub_token
    assert token is not None and loaded.registry.docker_hub_username == "acmebot"
    return _assert_secret(token)


async def _assert_secret(output: pulumi.Output[Any]) -> None:
    assert await output.is_secret()


# One case per kind of bad value: (overrides, key named in the message, value shown, allowed text).
REJECTED: list[tuple[str, dict[str, object], str, str, str]] = [
    ("unknown region", {"region": "mars1"}, "region", "mars1", "allowed: ams3"),
    ("unknown size", {"nodeSize": "huge"}, "nodeSize", "huge", "size slug"),
    ("even node count", {"nodeCount": 2}, "nodeCount", "2", "1, 3, 5"),
    ("node count not a number", {"nodeCount": "three"}, "nodeCount", "three", "integer"),
    ("CIDR with host bits", {"adminCidrs": ["10.0.0.1/24"]}, "adminCidrs", "10.0.0.1/24", "zero host bits"),
    ("malformed CIDR", {"adminCidrs": ["office"]}, "adminCidrs", "office", "CIDR"),
    (
        "world SSH unacknowledged",
        {"adminCidrs": ["0.0.0.0/0"], "allowWorldAdminAccess": False},
        "adminCidrs",
        "0.0.0.0/0",
        "allowWorldAdminAccess",
    ),
    (
        "world v6 SSH unacknowledged",
        {"adminCidrs": ["203.0.113.0/24", "::/0"], "allowWorldAdminAccess": False},
        "adminCidrs",
        "::/0",
        "allowWorldAdminAccess",
    ),
    ("no admin CIDR", {"adminCidrs": []}, "adminCidrs", "[]", "at least one CIDR"),
    ("roll a node that does not exist", {"rollNodes": [1]}, "rollNodes", "1", "from 0 to 0"),
    (
        "roll two managers at once",
        {"nodeCount": 3, "rollNodes": [0, 1]},
        "rollNodes",
        "[0, 1]",
        "one manager at a time",
    ),
    ("roll nodes not integers", {"rollNodes": ["0"]}, "rollNodes", "0", "a list of integers"),
    ("no mirror clients", {"mirrorClientCidrs": []}, "mirrorClientCidrs", "[]", "at least one CIDR"),
    ("public VPC range", {"vpcCidr": "8.8.8.0/24"}, "vpcCidr", "8.8.8.0/24", "RFC 1918"),
    ("VPC too big", {"vpcCidr": "10.0.0.0/8"}, "vpcCidr", "10.0.0.0/8", "/16 and /24"),
    ("VPC too small", {"vpcCidr": "10.1.0.0/25"}, "vpcCidr", "10.1.0.0/25", "/16 and /24"),
    ("domain not a hostname", {"domain": "cr example"}, "domain", "cr example", "hostname"),
    ("single-label domain", {"domain": "registry"}, "domain", "registry", "at least two labels"),
    ("uppercase domain", {"domain": "CR.example.com"}, "domain", "CR.example.com", "lowercase"),
    # A door's host is nginx's server_name, which holds no port.
    (
        "domain with a port",
        {"domain": "cr-dev.example.com:443"},
        "domain",
        "cr-dev.example.com:443",
        "no port",
    ),
    ("domain label over 63", {"domain": "c" * 64 + ".example.com"}, "domain", "c" * 64, "at most 63"),
    (
        "domain with a newline",
        {"domain": "cr-dev.example.com\n"},
        "domain",
        "cr-dev.example.com\n",
        "hostname",
    ),
    (
        # The router takes /v2/<host>/ only when <host> is a name component, which has no ':'.
        "upstream host with a port",
        {"upstreams": {"docker.io": "https://registry-1.docker.io", "ghcr.io:443": "https://ghcr.io"}},
        "upstreams",
        "ghcr.io:443",
        "no port",
    ),
    ("domain unset on the cloud", {"domain": ""}, "domain", "= :", "hostname"),
    (
        "mirror outside domain",
        {"mirrorDomain": "mirror.example.org"},
        "mirrorDomain",
        "mirror.example.org",
        "inside",
    ),
    (
        "mirror equals domain",
        {"mirrorDomain": "cr-dev.example.com"},
        "mirrorDomain",
        "cr-dev.example.com",
        "inside",
    ),
    ("namespace grammar", {"privateNamespaces": ["Acme"]}, "privateNamespaces", "Acme", "OCI name component"),
    ("namespace leading dash", {"privateNamespaces": ["-acme"]}, "privateNamespaces", "-acme", "OCI name"),
    (
        "namespace with a newline",
        {"privateNamespaces": ["acme\n"]},
        "privateNamespaces",
        "acme\n",
        "OCI name",
    ),
    (
        "namespace of two components",
        {"privateNamespaces": ["acme/ops"]},
        "privateNamespaces",
        "acme/ops",
        "OCI",
    ),
    ("namespace library", {"privateNamespaces": ["library"]}, "privateNamespaces", "library", "`library`"),
    (
        "namespace = upstream",
        {"privateNamespaces": ["docker.io"]},
        "privateNamespaces",
        "docker.io",
        "upstream",
    ),
    ("namespace twice", {"privateNamespaces": ["acme", "acme"]}, "privateNamespaces", "acme", "once"),
    ("no namespace", {"privateNamespaces": []}, "privateNamespaces", "[]", "at least one"),
    ("unknown storage", {"storage": "s3"}, "storage", "s3", "allowed: r2, nfs"),
    ("r2 without account", {"cloudflareAccountId": ""}, "cloudflareAccountId", "= :", "storage r2"),
    ("account id malformed", {"cloudflareAccountId": "acme"}, "cloudflareAccountId", "acme", "32-hex"),
    ("no zone id", {"cloudflareZoneId": ""}, "cloudflareZoneId", "= :", "32-hex"),
    ("unknown R2 location", {"r2Location": "mars"}, "r2Location", "mars", "weur"),
    ("location with jurisdiction", {"r2Jurisdiction": "eu"}, "r2Location", "weur", "jurisdiction"),
    ("unknown jurisdiction", {"r2Jurisdiction": "us", "r2Location": ""}, "r2Jurisdiction", "us", "fedramp"),
    ("NFS too small", {"storage": "nfs", "nfsSizeGib": 10}, "nfsSizeGib", "10", "at least 50"),
    ("redirect with NFS", {"storage": "nfs", "blobRedirect": "true"}, "blobRedirect", "true", "storage nfs"),
    (
        "redirect on the local platform",
        {"platform": "local", **CLOUD_ONLY_BLANK, "blobRedirect": "true"},
        "blobRedirect",
        "true",
        "local platform",
    ),
    (
        "redirect not a boolean",
        {"blobRedirect": "yes"},
        "blobRedirect",
        "yes",
        'allowed: "" (empty), true, false',
    ),
    (
        "user with unknown namespace",
        {"users": {"ci": {"pull": ["other"], "push": []}}},
        "users.ci.pull",
        "other",
        "privateNamespaces (acme)",
    ),
    ("user right misspelt", {"users": {"ci": {"pul": ["acme"]}}}, "users", "pul", "{pull: [namespaces]"),
    ("user name with colon", {"users": {"c:i": {"pull": ["acme"]}}}, "users", "c:i", "user names"),
    ("user name with space", {"users": {"c i": {"pull": ["acme"]}}}, "users", "c i", "user names"),
    ("user name with a newline", {"users": {"ci\n": {"pull": ["acme"]}}}, "users", "ci\n", "user names"),
    ("user name starting with a dot", {"users": {".ci": {"pull": ["acme"]}}}, "users", ".ci", "user names"),
    ("user name over 64", {"users": {"c" * 65: {"pull": ["acme"]}}}, "users", "c" * 65, "max 64"),
    (
        "user without password",
        {"userPasswords": {}},
        "userPasswords",
        "no password for ci",
        "--secret --path",
    ),
    (
        "password for nobody",
        {"userPasswords": {"ci": "x" * 20, "dev": "y" * 20, "eve": "z" * 20}},
        "userPasswords",
        "eve",
        "declared in `users`",
    ),
    (
        "short password",
        {"userPasswords": {"ci": "short", "dev": "y" * 20}},
        "userPasswords.ci",
        "[secret]",
        "12 characters",
    ),
    (
        "password beyond bcrypt",
        {"userPasswords": {"ci": "x" * 73, "dev": "y" * 20}},
        "userPasswords.ci",
        "[secret]",
        "72 bytes",
    ),
    (
        "image not pinned",
        {"images": {"nginx": "nginx:1.27", "registry": "registry:3"}},
        "images.nginx",
        "nginx:1.27",
        "@sha256",
    ),
    (
        "image key missing",
        {"images": {"nginx": "nginx@sha256:" + "0" * 64}},
        "images",
        "nginx",
        "exactly the keys",
    ),
    ("alerts without e-mail", {"monitoringAlerts": True}, "alertEmails", "[]", "monitoringAlerts"),
    ("bad e-mail", {"alertEmails": ["oncall"]}, "alertEmails", "oncall", "e-mail"),
    ("boolean typo", {"monitoringAlerts": "yes"}, "monitoringAlerts", "yes", "true or false"),
    (
        "hub user without token",
        {"dockerHubUsername": "acmebot"},
        "dockerHubUsername",
        "acmebot",
        "dockerHubToken",
    ),
    ("unknown platform", {"platform": "aws"}, "platform", "aws", "digitalocean, local"),
    ("cache TTL in days", {"cacheTtl": "7d"}, "cacheTtl", "7d", "Go duration"),
    ("zero cache TTL", {"cacheTtl": "0h"}, "cacheTtl", "0h", "positive"),
    # Go's ParseDuration reads ASCII digits only; Python's \d would take these.
    (
        "cache TTL in non-ASCII digits",
        {"cacheTtl": "\u0661\u0666\u0668h"},
        "cacheTtl",
        "\u0661",
        "Go duration",
    ),
    ("cache TTL with a newline", {"cacheTtl": "24h\n"}, "cacheTtl", "24h\n", "Go duration"),
    ("non-Ubuntu image", {"nodeImage": "debian-12-x64"}, "nodeImage", "debian-12-x64", "Ubuntu"),
    (
        "docker build for another Ubuntu",
        {"dockerVersion": "5:28.5.2-1~ubuntu.22.04~jammy"},
        "dockerVersion",
        "ubuntu.22.04",
        "node image's Ubuntu release",
    ),
    ("docker version format", {"dockerVersion": "latest"}, "dockerVersion", "latest", "apt version"),
    (
        "private key as public",
        {"sshPublicKey": PRIVATE_KEY},
        "sshPublicKey",
        "looks like a private key",
        "public key",
    ),
    ("replicas zero", {"privateReplicas": 0}, "privateReplicas", "0", "from 1 to 10"),
    ("negative cache budget", {"cacheMaxGib": -1}, "cacheMaxGib", "-1", "from 0 to"),
    (
        "no Docker Hub upstream",
        {"upstreams": {"ghcr.io": "https://ghcr.io"}},
        "upstreams",
        "ghcr.io",
        "docker.io",
    ),
    (
        "plain-HTTP upstream in the cloud",
        {"upstreams": {"docker.io": "http://registry-1.docker.io"}},
        "upstreams",
        "http://registry-1.docker.io",
        "https",
    ),
    (
        "retention of no private namespace",
        {"retention": {"nobody": {"keep": 5}}},
        "retention",
        "nobody",
        "retention.nobody: not a private namespace",
    ),
    (
        "retention keep not a number",
        {"retention": {"acme": {"keep": "ten"}}},
        "retention",
        "ten",
        "retention.acme.keep = 'ten': a whole number >= 0 (e.g. keep: 10",
    ),
    (
        "retention protect only",
        {"retention": {"acme": {"protect": ["v*"]}}},
        "retention",
        "v*",
        "retention.acme: set keep (newest tags kept) or days",
    ),
    (
        "retention unknown key",
        {"retention": {"acme": {"keep": 3, "dayz": 9}}},
        "retention",
        "dayz",
        "unknown key(s) ['dayz']; the keys are keep, days and protect",
    ),
    (
        "slack channel without webhook",
        {"alertSlackChannel": "#ops"},
        "alertSlackChannel",
        "#ops",
        "alertSlackWebhook",
    ),
    ("unknown key", {"nodecount": "3"}, "nodecount", "unknown key", "nodeCount"),
    (
        "credential in owncr config",
        {"digitaloceanToken": "dop_v1_abc"},
        "digitaloceanToken",
        "[hidden]",
        "digitalocean:token",
    ),
    (
        "local ports equal",
        {"platform": "local", **CLOUD_ONLY_BLANK, "localMirrorPort": 5000},
        "localMirrorPort",
        "5000",
        "different from localRegistryPort",
    ),
    (
        "local privileged port",
        {"platform": "local", **CLOUD_ONLY_BLANK, "localRegistryPort": 80},
        "localRegistryPort",
        "80",
        "1024 to 65535",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key", "value", "allowed"),
    [pytest.param(o, k, v, a, id=i) for i, o, k, v, a in REJECTED],
)
@pulumi.runtime.test
def test_bad_value_is_rejected_naming_key_value_and_allowed(
    mocks, load_settings, overrides, key, value, allowed
):
    with pytest.raises(owncr_settings.ConfigError) as raised:
        load_settings("dev", overrides)
    message = str(raised.value)
    full_key = key if ":" in key else f"owncr:{key}"
    assert message.startswith(f"{full_key} = "), message
    assert value in message, message
    assert allowed in message, message


# Values at the edge of the rules settings.py shares with the gateway (gateway/config.py) that load as
# given; the gateway's own tests (tests/gateway/test_render.py) take the same values.
@pytest.mark.parametrize(
    ("overrides", "read"),
    [
        # Distribution reads Go durations, microseconds with the micro sign too.
        pytest.param(
            {"cacheTtl": "500\u00b5s"}, lambda s: s.registry.cache_ttl == "500\u00b5s", id="ttl-micro"
        ),
        pytest.param({"cacheTtl": "1h30m"}, lambda s: s.registry.cache_ttl == "1h30m", id="ttl-compound"),
        pytest.param({"cacheMaxGib": 0}, lambda s: s.registry.cache_max_gib is None, id="no-cache-budget"),
        pytest.param({"cacheMaxGib": 40}, lambda s: s.registry.cache_max_gib == 40, id="cache-budget"),
        # The gateway's htpasswd takes user names of either case.
        pytest.param(
            {"users": {"CI-Bot": {"pull": ["acme"]}}, "userPasswords": {"CI-Bot": "x" * 20}},
            lambda s: [u.name for u in s.registry.users] == ["CI-Bot"],
            id="user-uppercase",
        ),
        pytest.param(
            {"domain": "c" * 63 + ".example.com", "mirrorDomain": "m." + "c" * 63 + ".example.com"},
            lambda s: s.cloud.domain == "c" * 63 + ".example.com",
            id="domain-label-63",
        ),
        pytest.param(
            {
                "upstreams": {
                    "docker.io": "https://registry-1.docker.io",
                    "registry.gitlab.com": "https://x.io",
                }
            },
            lambda s: [u.host for u in s.registry.upstreams] == ["docker.io", "registry.gitlab.com"],
            id="upstream-host",
        ),
        pytest.param(
            {"privateNamespaces": ["acme", "a.b_c__d--e"]},
            lambda s: s.registry.namespaces == ("acme", "a.b_c__d--e"),
            id="namespace-separators",
        ),
    ],
)
@pulumi.runtime.test
def test_values_the_gateway_renders_are_accepted(mocks, load_settings, overrides, read):
    assert read(load_settings("dev", overrides))


SECRET_VALUES = ("dckr_pat_0123456789", "test-password-ci-0123", "dop_v1_abc", "b3BlbnNzaC1rZXktdjEAAAAA")


@pytest.mark.parametrize(
    ("overrides", "secret_keys", "key"),
    [
        pytest.param(
            {}, ["cloudflare:apiToken", "owncr:userPasswords"], "digitalocean:token", id="plain-do-token"
        ),
        pytest.param(
            {}, ["digitalocean:token", "owncr:userPasswords"], "cloudflare:apiToken", id="plain-cf-token"
        ),
        pytest.param(
            {}, ["digitalocean:token", "cloudflare:apiToken"], "owncr:userPasswords", id="plain-passwords"
        ),
        pytest.param(
            {"dockerHubUsername": "acmebot", "dockerHubToken": "dckr_pat_0123456789"},
            ["digitalocean:token", "cloudflare:apiToken", "owncr:userPasswords"],
            "owncr:dockerHubToken",
            id="plain-hub-token",
        ),
    ],
)
@pulumi.runtime.test
def test_secret_config_set_in_plain_text_is_rejected(mocks, load_settings, overrides, secret_keys, key):
    with pytest.raises(owncr_settings.ConfigError) as raised:
        load_settings("dev", overrides, secret_keys=secret_keys)
    message = str(raised.value)
    assert message.startswith(f"{key} = [plain text]") and "--secret" in message, message


@pytest.mark.parametrize(
    "case", [c for c in REJECTED if any(s in repr(c[1]) for s in SECRET_VALUES)], ids=lambda c: c[0]
)
@pulumi.runtime.test
def test_rejection_messages_never_echo_a_secret(mocks, load_settings, case):
    with pytest.raises(owncr_settings.ConfigError) as raised:
        load_settings("dev", case[1])
    assert not any(s in str(raised.value) for s in SECRET_VALUES), str(raised.value)


# ---------------------------------------------------------------------------------------------------------
# The schema (Pulumi.yaml) and the stack files


def test_schema_declares_every_key_with_a_description_and_a_cli_type():
    for key, decl in SCHEMA.items():
        assert decl.get("description"), key
        assert decl.get("type") in (None, "string", "integer", "boolean", "array"), key  # project.json enum
        if decl.get("type") == "array":
            # project.json: array items are typed too (string, integer, boolean, array).
            assert decl["items"] in ({"type": "string"}, {"type": "integer"}), key
        if "default" in decl and "type" in decl:
            expected = {"string": str, "integer": int, "boolean": bool, "array": list}[decl["type"]]
            assert type(decl["default"]) is expected, key


def test_secret_keys_are_untyped_so_the_cli_accepts_their_plain_default():
    # The CLI checks `secret: true` only on typed keys, and a typed secret key with a (plain) default
    # fails every stack that leaves it unset ("must be encrypted as it's secret"): keep them untyped.
    secret = {k for k, d in SCHEMA.items() if d.get("secret")}
    assert (
        secret == set(owncr_settings.SECRET_KEYS) == {"userPasswords", "dockerHubToken", "alertSlackWebhook"}
    )
    assert all("type" not in SCHEMA[k] for k in secret)


def test_settings_reads_every_schema_key():
    source = (ROOT / "settings.py").read_text(encoding="utf-8")
    unread = [k for k in SCHEMA if f'"{k}"' not in source]
    assert unread == []
    assert set(owncr_settings.known_keys()) == set(SCHEMA)


def test_only_keys_without_a_usable_default_are_required():
    # Required keys have no default: every stack must set them (the CLI enforces it before running).
    required = {k for k, d in SCHEMA.items() if "default" not in d}
    assert required == {"mirrorClientCidrs", "privateNamespaces"}


def test_committed_stack_files_hold_no_secret_and_only_known_keys(committed_stack):
    text = (ROOT / f"Pulumi.{committed_stack}.yaml").read_text(encoding="utf-8")
    config = (yaml.safe_load(text) or {}).get("config") or {}
    assert "secure:" not in text
    for key in config:
        namespace, _, name = key.partition(":")
        if namespace == "owncr":
            assert name in SCHEMA, key
            assert name not in owncr_settings.SECRET_KEYS, key
        else:
            assert not re.search(r"token|key|secret|password", name, re.IGNORECASE), key


def test_dev_and_prod_differ_like_real_environments():
    dev = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8"))["config"]
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text(encoding="utf-8"))["config"]
    assert dev["owncr:nodeCount"] in (1, 3) and prod["owncr:nodeCount"] == 3
    assert dev["owncr:nodeSize"] != prod["owncr:nodeSize"]
    assert prod["owncr:monitoringAlerts"] is True and prod["owncr:alertEmails"]
    assert dev["owncr:vpcCidr"] != prod["owncr:vpcCidr"]  # both may live in one account
    assert "0.0.0.0/0" not in prod["owncr:adminCidrs"]


def test_project_runtime_installs_its_own_virtualenv():
    assert PROJECT_YAML["name"] == "owncr"
    assert PROJECT_YAML["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": "venv"},
    }
    assert PROJECT_YAML["config"]["pulumi:disable-default-providers"] == {"value": ["docker"]}


def test_size_pattern_accepts_every_cpu_size_the_sdk_knows():
    from pulumi_digitalocean import DropletSlug

    cpu_sizes = [s.value for s in DropletSlug if "vcpu" in s.value or s.value.startswith("c-")]
    assert len(cpu_sizes) > 100
    assert [s for s in cpu_sizes if not owncr_settings.SIZE_PATTERN.match(s)] == []
