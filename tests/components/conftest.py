"""Pulumi mocks shared by the control-plane unit tests (no CLI, no network).

- `RecordingMocks` records every resource registration and invoke; fake ids and computed outputs derive
  from the resource NAME (registration order is nondeterministic, pulumi-api-facts §7.4.5) and use wire
  names (camelCase, §7.4.1). Unknown invokes raise, so an unmocked data source fails loudly.
- fixture `mocks`: fresh event loop, `set_mocks(..., project="owncr", stack="test")`, reset afterwards.
- fixture `stack_config` -> `stack_config(stack)`: what the CLI would hand the program for
  Pulumi.<stack>.yaml (Pulumi.yaml defaults merged in, secure values replaced by test values).
- fixture `run_program` -> `run_program(stack, overrides)`: runs `__main__.py` with that config; call it
  INSIDE a `@pulumi.runtime.test` function that also uses the `mocks` fixture.
- fixture `recorded` -> `recorded(stack, overrides=None, collect=None)`: a complete run in its own mock
  session, cached per session (assert on plain recorded data); fixture `record_program`: the same, afresh;
- fixture `mock_session` -> context manager for tests that need several independent runs;
  fixture `load_settings` -> `load_settings(stack, overrides)`: only settings.load() (fast).
- a test argument named `committed_stack` is parametrized with every Pulumi.<stack>.yaml in the repo.

They are fixtures, not imports: `from conftest import ...` is ambiguous with several conftest.py files
(tests/gateway has one) and pytest's default import mode picks whichever was loaded first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import runpy
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import MockCallArgs, MockResourceArgs

from tests import ROOT
from tests.components.program_capture import plain

PROJECT = "owncr"
TEST_STACK = "test"

# Config keys whose values the CLI passes as secrets (Pulumi.yaml `secret: true` plus provider tokens).
SECRET_CONFIG_KEYS = (
    f"{PROJECT}:userPasswords",
    f"{PROJECT}:dockerHubToken",
    f"{PROJECT}:alertSlackWebhook",
    "digitalocean:token",
    "cloudflare:apiToken",
)
TEST_PROVIDER_TOKENS = {
    "digitalocean:token": "test-digitalocean-token",
    "cloudflare:apiToken": "test-cloudflare-api-token",
}

# The Cloudflare token permission groups the mocks answer with (names and ids as Cloudflare lists them;
# ids of the two R2 item groups quoted in pulumi-api-facts §3). Distractors make a wrong pick visible.
PERMISSION_GROUPS = (
    (
        "6a018a9f2fc74eb6b293b0c548f38b39",
        "Workers R2 Storage Bucket Item Read",
        "com.cloudflare.edge.r2.bucket",
    ),
    (
        "2efd5506f9c8494dacb1fa10a3e7d5b6",
        "Workers R2 Storage Bucket Item Write",
        "com.cloudflare.edge.r2.bucket",
    ),
    ("b4992e1108244f5d8bfbd5744320c2e1", "Workers R2 Storage Read", "com.cloudflare.api.account"),
    ("bf7481a1826f439697cb59a20b22293e", "Workers R2 Storage Write", "com.cloudflare.api.account"),
    ("4755a26eedb94da69e1066d98aa820be", "DNS Write", "com.cloudflare.api.account.zone"),
    ("686d18d5ac6c441c867cbf6771e58a0a", "API Tokens Write", "com.cloudflare.api.user"),
)
PERMISSION_GROUP_INVOKES = (
    "cloudflare:index/getApiTokenPermissionGroupsList:getApiTokenPermissionGroupsList",
    "cloudflare:index/getAccountApiTokenPermissionGroupsList:getAccountApiTokenPermissionGroupsList",
)


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def fake_number(name: str) -> int:
    return int(digest(name)[:8], 16)


def fake_ip(name: str, prefix: str) -> str:
    """A stable fake address: `prefix` (e.g. "203.0.113") plus one octet from the name's hash."""
    return f"{prefix}.{1 + fake_number(name) % 250}"


def fake_private_ip(name: str) -> str:
    n = fake_number(name + "/private")
    return f"10.{n % 250}.{(n >> 8) % 250}.{1 + (n >> 16) % 250}"


def fake_uuid(name: str) -> str:
    return str(uuid.UUID(digest(name)[:32]))


def _pem(kind: str, name: str) -> str:
    return f"-----BEGIN {kind}-----\nFAKE{digest(name)[:40]}\n-----END {kind}-----\n"


Computed = Callable[[MockResourceArgs, str], dict[str, Any]]

# Computed outputs per resource type, by WIRE name. Inputs are echoed back as well (as the engine does),
# so only provider-computed fields need to be here. Tests may add types on their instance (`.computed`).
COMPUTED: dict[str, Computed] = {
    "digitalocean:index/droplet:Droplet": lambda a, i: {
        "ipv4Address": fake_ip(a.name, "203.0.113"),
        "ipv4AddressPrivate": fake_private_ip(a.name),
        "dropletUrn": f"do:droplet:{i}",
        "status": "active",
    },
    "digitalocean:index/reservedIp:ReservedIp": lambda a, i: {
        "ipAddress": fake_ip(a.name, "198.51.100"),
        "urn": f"do:floatingip:{fake_ip(a.name, '198.51.100')}",
    },
    "digitalocean:index/vpc:Vpc": lambda a, i: {"vpcUrn": f"do:vpc:{i}", "default": False},
    "digitalocean:index/loadBalancer:LoadBalancer": lambda a, i: {
        "ip": fake_ip(a.name, "192.0.2"),
        "loadBalancerUrn": f"do:loadbalancer:{i}",
        "status": "active",
    },
    "digitalocean:index/domain:Domain": lambda a, i: {"domainUrn": f"do:domain:{i}", "ttl": 1800},
    "digitalocean:index/dnsRecord:DnsRecord": lambda a, i: {
        "fqdn": f"{a.inputs.get('name')}.{a.inputs.get('domain')}"
    },
    "digitalocean:index/certificate:Certificate": lambda a, i: {
        "uuid": fake_uuid(a.name + "/cert"),
        "state": "verified",
        "notAfter": "2027-02-01T00:00:00Z",
        "sha1Fingerprint": digest(a.name)[:40],
    },
    "digitalocean:index/nfs:Nfs": lambda a, i: {
        "host": fake_private_ip(a.name),
        "mountPath": f"/{i}",
        "status": "ACTIVE",
    },
    "digitalocean:index/sshKey:SshKey": lambda a, i: {
        "fingerprint": ":".join(digest(a.name)[k : k + 2] for k in range(0, 32, 2)),
    },
    "digitalocean:index/firewall:Firewall": lambda a, i: {"status": "succeeded"},
    "digitalocean:index/monitorAlert:MonitorAlert": lambda a, i: {"uuid": fake_uuid(a.name + "/alert")},
    "digitalocean:index/uptimeCheck:UptimeCheck": lambda a, i: {},
    "digitalocean:index/uptimeAlert:UptimeAlert": lambda a, i: {},
    "digitalocean:index/project:Project": lambda a, i: {},
    "cloudflare:index/apiToken:ApiToken": lambda a, i: {"value": f"token-value-{digest(a.name)[:40]}"},
    "cloudflare:index/accountToken:AccountToken": lambda a, i: {
        "value": f"token-value-{digest(a.name)[:40]}"
    },
    "cloudflare:index/r2Bucket:R2Bucket": lambda a, i: {"creationDate": "2026-11-28T00:00:00Z"},
    "cloudflare:index/dnsRecord:DnsRecord": lambda a, i: {"proxiable": True},
    "tls:index/privateKey:PrivateKey": lambda a, i: {
        "privateKeyPem": _pem("PRIVATE KEY", a.name),
        "privateKeyOpenssh": _pem("OPENSSH PRIVATE KEY", a.name),
        "privateKeyPemPkcs8": _pem("PRIVATE KEY", a.name + "/pkcs8"),
        "publicKeyPem": _pem("PUBLIC KEY", a.name),
        "publicKeyOpenssh": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{digest(a.name)[:40]}\n",
        "publicKeyFingerprintSha256": f"SHA256:{digest(a.name)[:43]}",
        "publicKeyFingerprintMd5": ":".join(digest(a.name)[k : k + 2] for k in range(0, 32, 2)),
    },
    "tls:index/selfSignedCert:SelfSignedCert": lambda a, i: {"certPem": _pem("CERTIFICATE", a.name)},
    "tls:index/locallySignedCert:LocallySignedCert": lambda a, i: {"certPem": _pem("CERTIFICATE", a.name)},
    "tls:index/certRequest:CertRequest": lambda a, i: {"certRequestPem": _pem("CERTIFICATE REQUEST", a.name)},
    "random:index/randomPassword:RandomPassword": lambda a, i: {
        "result": f"pw-{digest(a.name)[:24]}",
        "bcryptHash": f"$2a$10${digest(a.name)[:53]}",
    },
    "random:index/randomBytes:RandomBytes": lambda a, i: {
        "hex": digest(a.name)[: 2 * int(a.inputs.get("length", 32))],
        "base64": digest(a.name)[:44],
    },
    "random:index/randomId:RandomId": lambda a, i: {
        "hex": digest(a.name)[:16],
        "b64Url": digest(a.name)[:11],
        "dec": str(fake_number(a.name)),
    },
    "command:local:Command": lambda a, i: {"stdout": "", "stderr": ""},
    "command:remote:Command": lambda a, i: {"stdout": "", "stderr": ""},
}

NUMERIC_ID_TYPES = ("digitalocean:index/droplet:Droplet", "digitalocean:index/sshKey:SshKey")
UUID_ID_TYPES = (
    "digitalocean:index/vpc:Vpc",
    "digitalocean:index/loadBalancer:LoadBalancer",
    "digitalocean:index/firewall:Firewall",
    "digitalocean:index/nfs:Nfs",
    "digitalocean:index/project:Project",
)


class RecordingMocks(pulumi.runtime.Mocks):
    """Records what the engine would receive; answers with name-derived fakes."""

    def __init__(self) -> None:
        self.resources: list[MockResourceArgs] = []
        self.calls: list[MockCallArgs] = []
        self.computed: dict[str, Computed] = dict(COMPUTED)
        self.ids: dict[tuple[str, str], str] = {}  # (type, name) -> the fake id the engine got
        self._lock = threading.Lock()  # registrations arrive on executor threads

    def fake_id(self, args: MockResourceArgs) -> str:
        if args.typ in NUMERIC_ID_TYPES:
            return str(fake_number(args.typ + args.name))
        if args.typ in UUID_ID_TYPES:
            return fake_uuid(args.typ + args.name)
        if args.typ in ("digitalocean:index/tag:Tag", "digitalocean:index/domain:Domain"):
            return str(args.inputs.get("name", args.name))  # DigitalOcean ids these by name
        if args.typ.startswith("cloudflare:"):
            return digest(args.typ + args.name)[:32]
        return f"{args.name}-id"

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        resource_id = self.fake_id(args)
        with self._lock:
            self.resources.append(args)
            self.ids[(args.typ, args.name)] = resource_id
        outputs = dict(args.inputs)
        computed = self.computed.get(args.typ)
        if computed is not None:
            outputs.update(computed(args, resource_id))
        return resource_id, outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        with self._lock:
            self.calls.append(args)
        if args.token in PERMISSION_GROUP_INVOKES:
            results = [
                {"id": gid, "name": name, "category": "other", "isSelectable": True, "scopes": [scope]}
                for gid, name, scope in PERMISSION_GROUPS
            ]
            return {"results": results, "maxItems": 1000}, []  # no check failures
        raise NotImplementedError(f"unmocked invoke {args.token} (add it to tests/components/conftest.py)")

    def of_type(self, typ: str) -> list[MockResourceArgs]:
        with self._lock:
            return sorted((r for r in self.resources if r.typ == typ), key=lambda r: r.name)

    def id_of(self, resource: MockResourceArgs) -> str:
        return self.ids[(resource.typ, resource.name)]

    def named(self, name: str) -> MockResourceArgs:
        with self._lock:
            found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            known = sorted(r.name for r in self.resources)
            raise KeyError(f"{len(found)} resources named {name!r}; registered: {known}")
        return found[0]


@contextlib.contextmanager
def mock_session(stack: str = TEST_STACK, *, preview: bool = False) -> Iterator[RecordingMocks]:
    """Fresh event loop + RecordingMocks; everything reset afterwards (no leaks: pulumi/pulumi#8280)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # before set_mocks: it builds the root Stack (pulumi-api-facts §7.4.10)
    recording = RecordingMocks()
    pulumi.runtime.set_mocks(recording, project=PROJECT, stack=stack, preview=preview)
    try:
        yield recording
    finally:
        pulumi.runtime.set_all_config({}, [])
        pulumi.runtime.settings.reset_options()
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def mocks() -> Iterator[RecordingMocks]:
    """RecordingMocks for one test (project "owncr", stack "test", not a preview)."""
    with mock_session() as recording:
        yield recording


# ---------------------------------------------------------------------------------------------------------
# Stack config as the CLI would pass it


def stack_files() -> list[str]:
    """Every committed stack, from Pulumi.<stack>.yaml files (new files are picked up automatically)."""
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml"))


def _wire(value: Any) -> str:
    """A config value as the CLI hands it to the program: primitives as text, arrays/objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _replace_secure(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return f"test-secret-{key}-0123456789"
        return {k: _replace_secure(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_secure(v, f"{key}[{n}]") for n, v in enumerate(value)]
    return value


def password_for(user: str) -> str:
    return f"test-password-{user}-0123"


def stack_config(stack: str) -> dict[str, str]:
    """Pulumi.yaml defaults merged with Pulumi.<stack>.yaml, as `"owncr:<key>"` strings.

    Secure values become test values; test passwords are added for users the stack declares and test
    provider tokens for cloud stacks (those are set with `pulumi config set --secret`, never committed).
    """
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))
    values: dict[str, Any] = {}
    for key, decl in project["config"].items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if "default" in decl or "value" in decl:  # what the CLI merges in (workspace.mergeConfig)
            values[full] = decl.get("value", decl.get("default"))
    stack_doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8")) or {}
    for key, value in (stack_doc.get("config") or {}).items():
        values[key] = _replace_secure(value, key)
    users = values.get(f"{PROJECT}:users") or {}
    passwords = dict(values.get(f"{PROJECT}:userPasswords") or {})
    for user in users:
        passwords.setdefault(user, password_for(user))
    values[f"{PROJECT}:userPasswords"] = passwords
    if values.get(f"{PROJECT}:platform") == "digitalocean":
        for key, token in TEST_PROVIDER_TOKENS.items():
            values.setdefault(key, token)
    return {key: _wire(value) for key, value in values.items()}


@dataclass
class ProgramRun:
    namespace: dict[str, Any]  # the module globals of __main__.py
    outputs: dict[str, pulumi.Output[Any]]  # the stack exports
    config: dict[str, str]  # the config the program ran with


def apply_overrides(config: Mapping[str, str], overrides: Mapping[str, object] | None) -> dict[str, str]:
    """`{"nodeCount": 5, "digitalocean:token": None}`: bare keys are owncr keys, None deletes."""
    result = dict(config)
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            result.pop(full, None)
        else:
            result[full] = value if isinstance(value, str) else _wire(value)
    return result


def set_config(config: Mapping[str, str], secret_keys: Iterable[str] | None = None) -> None:
    """Hand `config` to the runtime; secret keys default to those the CLI would mark secret."""
    secrets = list(secret_keys) if secret_keys is not None else [k for k in SECRET_CONFIG_KEYS if k in config]
    pulumi.runtime.set_all_config(dict(config), secrets)


def run_program(
    stack: str,
    overrides: Mapping[str, object] | None = None,
    *,
    secret_keys: Iterable[str] | None = None,
) -> ProgramRun:
    """Run __main__.py under the (already installed) mocks with the config of Pulumi.<stack>.yaml."""
    config = apply_overrides(stack_config(stack), overrides)
    set_config(config, secret_keys)
    namespace = runpy.run_path(str(ROOT / "__main__.py"), run_name="owncr_program")
    root = pulumi.runtime.settings.get_root_resource()
    exported = dict(getattr(root, "outputs", {}) or {})  # plain values and Outputs as exported
    outputs = {name: pulumi.Output.from_input(value) for name, value in exported.items()}
    return ProgramRun(namespace=namespace, outputs=outputs, config=config)


@dataclass
class RecordedRun:
    """Everything one complete run of the program handed the engine, plain data after the run ended."""

    stack: str
    config: dict[str, str]
    resources: list[MockResourceArgs]
    ids: dict[tuple[str, str], str]  # (type, name) -> fake id
    namespace: dict[str, Any]  # module globals of __main__.py (Outputs in it are no longer awaitable)
    outputs: dict[str, Any]  # exports, resolved
    secret_outputs: set[str]  # exports that are secret
    extra: dict[str, Any] = field(default_factory=dict)  # what the caller's `collect` awaited

    @property
    def cloud(self) -> bool:
        return self.config.get(f"{PROJECT}:platform") == "digitalocean"

    def of_type(self, typ: str) -> list[MockResourceArgs]:
        return sorted((r for r in self.resources if r.typ == typ), key=lambda r: r.name)

    def one(self, typ: str) -> MockResourceArgs:
        found = self.of_type(typ)
        assert len(found) == 1, f"{typ}: {[r.name for r in found]}"
        return found[0]

    def id_of(self, resource: MockResourceArgs) -> str:
        return self.ids[(resource.typ, resource.name)]

    @staticmethod
    def plain(value: Any) -> Any:
        """A recorded input with every secret wrapper removed (wrapping is checked with is_rpc_secret)."""
        return plain(value)


Collect = Callable[[ProgramRun], Awaitable[dict[str, Any]]]


def record_program(
    stack: str, overrides: Mapping[str, object] | None = None, collect: Collect | None = None
) -> RecordedRun:
    """One complete run in its own mock session; `collect(run)` may await Outputs while the loop lives."""
    with mock_session() as recording:
        got: dict[str, Any] = {}

        async def gather(run: ProgramRun) -> None:
            got["run"] = run
            got["outputs"] = {name: await out.future() for name, out in run.outputs.items()}
            got["secret"] = {name for name, out in run.outputs.items() if await out.is_secret()}
            got["extra"] = await collect(run) if collect is not None else {}

        @pulumi.runtime.test
        def body():
            return gather(run_program(stack, overrides))

        _ = body()  # runs the program and waits for every registration and output
        run: ProgramRun = got["run"]
        return RecordedRun(
            stack=stack,
            config=run.config,
            resources=list(recording.resources),
            ids=dict(recording.ids),
            namespace=run.namespace,
            outputs=got["outputs"],
            secret_outputs=got["secret"],
            extra=got["extra"],
        )


_RECORDED: dict[str, RecordedRun] = {}


@pytest.fixture(name="recorded", scope="session")
def _recorded_fixture() -> Callable[..., RecordedRun]:
    """`recorded(stack, overrides=None, collect=None)`: record_program, run once per session per arguments."""

    def cached(stack: str, overrides: Mapping[str, object] | None = None, collect: Collect | None = None):
        hook = None if collect is None else f"{collect.__module__}.{collect.__qualname__}"
        key = json.dumps([stack, overrides, hook], sort_keys=True)
        if key not in _RECORDED:
            _RECORDED[key] = record_program(stack, overrides, collect)
        return _RECORDED[key]

    return cached


@pytest.fixture(name="record_program", scope="session")
def _record_program_fixture() -> Callable[..., RecordedRun]:
    return record_program


@pytest.fixture(name="stack_config", scope="session")
def _stack_config_fixture() -> Callable[[str], dict[str, str]]:
    return stack_config


@pytest.fixture(name="run_program", scope="session")
def _run_program_fixture() -> Callable[..., ProgramRun]:
    return run_program


@pytest.fixture(name="mock_session", scope="session")
def _mock_session_fixture() -> Callable[..., contextlib.AbstractContextManager[RecordingMocks]]:
    """`with mock_session() as mocks:` for tests that need several independent runs (determinism)."""
    return mock_session


@pytest.fixture(name="load_settings", scope="session")
def _load_settings_fixture() -> Callable[..., Any]:
    """`load_settings(stack, overrides, secret_keys=None)`: settings.load() with that stack's config."""

    def load(
        stack: str, overrides: Mapping[str, object] | None = None, *, secret_keys: Iterable[str] | None = None
    ):
        import settings

        set_config(apply_overrides(stack_config(stack), overrides), secret_keys)
        return settings.load()

    return load


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "committed_stack" in metafunc.fixturenames:
        metafunc.parametrize("committed_stack", stack_files())
