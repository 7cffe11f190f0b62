"""Breaks the product on purpose, one named mutation at a time, and checks that the tests notice.

Each mutation replaces one exact piece of security- or data-critical code in a temporary copy of the
repository (tracked files, plus links to `.venv` and `.tools`), then runs the tests that should catch
it. A mutation is CAUGHT when those tests fail (pytest exit 1), SURVIVED when they pass, and an ERROR
when pytest could not run them (collection failure, no such test). Before any mutation the same tests
run on the unmutated copy: they must pass, or a "catch" would mean nothing.

    scripts/mutation-check              # every mutation; prints the table, exits 1 on any survivor
    scripts/mutation-check --list       # names and what each breaks
    scripts/mutation-check --only NAME  # one mutation (repeatable)

tests/project/test_mutations.py checks in every CI run that each mutation still applies to the code (its
text occurs exactly once) and names tests that exist, so the list cannot rot silently.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Edit:
    path: str  # repository-relative file
    old: str  # exact text, once in the file
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str  # what a user would suffer
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids (or files) that must fail

    @classmethod
    def one(cls, name: str, breaks: str, path: str, old: str, new: str, tests: tuple[str, ...]) -> Mutation:
        return cls(name, breaks, (Edit(path, old, new),), tests)


MUTATIONS: tuple[Mutation, ...] = (
    Mutation.one(
        "mirror-reads-private",
        "private names readable anonymously on the mirror door",
        "gateway/render/njs/router.js",
        "        var byDigest = p.rest.indexOf('manifests/') === 0 && !p.tag;\n"
        "        return owncr.answer(byDigest ? N.routes.failed : N.routes.missed);",
        "        return go(r, N.routes.privateRead, uri);",
        (
            "tests/gateway/test_routing.py::test_mirror_door_hides_private_names",
            "tests/gateway/test_clients_docker.py::test_private_name_is_not_on_the_mirror",
        ),
    ),
    Mutation.one(
        "mirror-private-to-cache",
        "private names looked up upstream through the mirror door (a name squatter's image served)",
        "gateway/render/njs/router.js",
        "    if (privateNamespace(cfg, p.name) !== null) {\n        // Private names do not exist",
        "    if (false) {\n        // Private names do not exist",
        ("tests/gateway/test_routing.py::test_mirror_door_hides_private_names",),
    ),
    Mutation.one(
        "pull-right-ignored",
        "any logged-in user reads every private namespace",
        "gateway/render/njs/router.js",
        "        if (read && rights.pull.indexOf(ns) < 0) {",
        "        if (false) {",
        (
            "tests/gateway/test_routing.py::test_pull_needs_a_pull_right_on_the_namespace",
            "tests/gateway/test_clients_auth.py::test_user_without_pull_rights",
        ),
    ),
    Mutation.one(
        "mount-from-anywhere",
        "a pusher copies blobs out of a namespace it may not read (cross-repository mount)",
        "gateway/render/njs/router.js",
        "        if (from !== null && rights.pull.indexOf(from) < 0) {",
        "        if (false) {",
        ("tests/gateway/test_routing.py::test_blob_mount_needs_a_pull_right_on_the_source",),
    ),
    Mutation.one(
        "form-body-unchecked",
        "a mount hidden in a form-encoded body slips past the router",
        "gateway/render/njs/router.js",
        "        if (!read && formBody(r)) {",
        "        if (false) {",
        ("tests/gateway/test_security.py::test_a_mount_hidden_in_a_form_body_is_refused",),
    ),
    Mutation.one(
        "login-guessing-unlimited",
        "password guessing at the speed of bcrypt, no per-address limit",
        "gateway/render/templates/auth.conf.j2",
        "            limit_req zone=owncr_logins burst={{ login_burst }} nodelay;",
        "",
        ("tests/gateway/test_routing.py::test_failed_logins_are_rate_limited_per_client_address",),
    ),
    Mutation.one(
        "no-shared-http-secret",
        "uploads fail when their chunks reach different registry replicas",
        "gateway/render/registry_config.py",
        '            "secret": settings.http_secret,',
        "",
        ("tests/gateway/test_clients_replicas.py",),
    ),
    Mutation.one(
        "private-descriptor-cache",
        "a deleted blob or manifest stays readable through the other private replicas (leaked secrets too)",
        "gateway/render/registry_config.py",
        "    config = _base(settings, addr, debug_addr, PRIVATE_ROOT, descriptor_cache=False)",
        "    config = _base(settings, addr, debug_addr, PRIVATE_ROOT, descriptor_cache=True)",
        (
            "tests/gateway/test_clients_replicas.py::test_a_delete_through_one_replica_holds_on_every_replica",
            "tests/gateway/test_conformance.py",
        ),
    ),
    Mutation.one(
        "referrers-lock-per-node",
        "concurrent attaches through two gateways overwrite each other's index entries (lost referrers)",
        "gateway/render/njs/store.js",
        "            if (await store.create(cfg, key, JSON.stringify(lease))) {",
        "            if (await store.create(cfg, key + '.' + lease.id, JSON.stringify(lease))) {",
        (
            "tests/gateway/test_referrers_nodes.py::"
            "test_attaches_through_two_gateways_on_one_filesystem_all_end_up_listed",
        ),
    ),
    Mutation.one(
        "hung-replica-unbounded",
        "a manifest read on a replica lost without a reset waits a transfer's 900 s, not 10 s and another",
        "gateway/render/templates/routes.conf.j2",
        "            proxy_read_timeout {{ read_seconds }}s;\n",
        "",
        (
            "tests/gateway/test_clients_replicas.py::"
            "test_a_hung_replica_costs_a_read_one_bounded_wait_then_another_replica_answers",
        ),
    ),
    Mutation.one(
        "download-buffers-unbounded",
        "a fleet of slow downloads fills nginx's memory limit and the OOM killer breaks them off",
        "gateway/render/nginx.py",
        "DOWNLOAD_BUFFER_KIB = 320\n",
        "DOWNLOAD_BUFFER_KIB = 1280\n",
        ("tests/gateway/test_nginx_memory.py",),
    ),
    Mutation.one(
        "outage-memory-per-node",
        "a node whose own egress never saw the upstream fail answers a never-pulled name 404 (final)",
        "gateway/render/njs/egress.js",
        "    var down = id === null ? null : remembered(id) || await published(r, id);",
        "    var down = id === null ? null : remembered(id);",
        ("tests/gateway/test_clients_fleet.py::test_an_outage_one_node_saw_is_every_node_s_answer",),
    ),
    Mutation.one(
        "cache-login-lost-in-outage",
        "a cache that starts while its upstream fails gets no token realm and pulls anonymously",
        "gateway/render/njs/egress.js",
        "    if (challenge && r.variables.owncr_kind === 'ping') {",
        "    if (challenge === 'never') {",
        (
            "tests/gateway/test_clients_fleet.py::"
            "test_a_cache_that_starts_while_its_upstream_fails_keeps_its_login",
        ),
    ),
    Mutation.one(
        "cache-single-replica",
        "the node running an upstream's cache takes the mirror door's uncached pulls down with it",
        "components/plan/swarm_specs.py",
        "    # scheduler is off in them (registry_config.cache_config): maintenance evicts by last pull.\n"
        "    return plan.node_count\n",
        "    return 1\n",
        (
            "tests/components/test_registry_services.py::test_one_cache_service_per_upstream_with_a_replica_per_node",
        ),
    ),
    Mutation.one(
        "cache-scheduler-on",
        "caches on one root overwrite each other's expiry schedule and expire by fetch, not by use",
        "gateway/render/registry_config.py",
        '    proxy: dict[str, Any] = {"remoteurl": remote_url, "ttl": CACHE_SCHEDULER_OFF}',
        '    proxy: dict[str, Any] = {"remoteurl": remote_url, "ttl": settings.cache_ttl}',
        ("tests/gateway/test_distribution.py::test_the_caches_run_without_the_expiry_scheduler",),
    ),
    Mutation.one(
        "pulls-not-recorded",
        "maintenance evicts images the fleet still pulls: no node records a pull",
        "gateway/render/njs/pulls.js",
        "            ngx.shared[PENDING].set(key, '');",
        "            ngx.shared[WRITTEN].set(key, '');",
        ("tests/gateway/test_pull_records.py",),
    ),
    Mutation.one(
        "eviction-ignores-pulls",
        "an image pulled every day is evicted a cacheTtl after it was first fetched",
        "gateway/upkeep/eviction.py",
        "    return stored if pulled is None else max(stored, pulled)",
        "    return stored",
        ("tests/gateway/upkeep/test_eviction.py",),
    ),
    Mutation.one(
        "upstream-targets-unchecked",
        "an upstream's redirect or realm reaches the gateway's private registry (or the cloud's metadata)",
        "gateway/render/njs/egress.js",
        "    var why = checkTarget(r, url);",
        "    var why = null;",
        ("tests/gateway/test_security.py",),
    ),
    Mutation.one(
        "blob-bytes-unchecked",
        "a blob whose bytes do not match its digest is served in full, and a door keeps it",
        "gateway/render/njs/egress.js",
        "        if (got !== hex) {",
        "        if (false) {",
        ("tests/gateway/test_clients_fleet.py",),
    ),
    Mutation.one(
        "private-names-answered-apart",
        "the mirror door answers a private name 404 while an unknown one gets the upstream's 503",
        "gateway/render/njs/router.js",
        "        return owncr.answer(byDigest ? N.routes.failed : N.routes.missed);",
        "        return owncr.answer(byDigest ? N.routes.failed : 404);",
        ("tests/gateway/test_security.py",),
    ),
    Mutation.one(
        "no-second-chance",
        "a read on a live node fails when the replica it waited on leaves Swarm's DNS meanwhile",
        "gateway/render/templates/backend_errors.conf.j2",
        "            error_page 502 504 = {{ again }};",
        "            error_page 502 504 = @owncr_backend_unavailable;",
        ("tests/gateway/test_render_production.py",),
    ),
    Mutation.one(
        "hung-cache-unbounded",
        "a door waits for a hung cache until the client gives up (900 s), not a retryable 503 in 20 s",
        "gateway/render/templates/routes.conf.j2",
        "            # a tag pulled before is served stale, one never pulled gets a retryable 503.\n"
        "            proxy_read_timeout {{ cache_answer_seconds }}s;",
        "            # a tag pulled before is served stale, one never pulled gets a retryable 503.",
        (
            "tests/gateway/test_clients_mirror.py::test_a_hung_cache_costs_a_bounded_wait_and_a_retryable_answer",
        ),
    ),
    Mutation.one(
        "cache-shares-private-root",
        "cache expiry deletes blobs of private images",
        "gateway/render/registry_config.py",
        "    config = _base(settings, addr, debug_addr, cache_root(upstream), descriptor_cache=False)",
        '    config = _base(settings, addr, debug_addr, "/private", descriptor_cache=False)',
        (
            "tests/gateway/test_render.py",
            "tests/gateway/test_clients_mirror.py::test_cache_eviction_spares_private_image_sharing_a_layer",
        ),
    ),
    Mutation(
        "request-buffering-on",
        "every push spooled to a temp file first (here on a tmpfs: memory), slower and filling the node",
        (
            Edit(
                "gateway/render/templates/proxy.conf.j2",
                "proxy_request_buffering off;",
                "proxy_request_buffering on;",
            ),
            Edit(
                "gateway/render/templates/nginx.conf.j2",
                "client_body_temp_path {{ state_dir }}/client_body;",
                "client_body_temp_path /dev/shm;",
            ),
        ),
        (
            "tests/gateway/test_clients_large.py::test_one_gib_layer_is_streamed_not_spooled",
            "tests/gateway/test_security.py::test_refused_request_bodies_are_never_stored",
        ),
    ),
    Mutation.one(
        "gateway-port-to-world",
        "nginx's port 8080 open to the internet, around the load balancer and its TLS",
        "components/network.py",
        '            _inbound("tcp", NGINX_PORT, load_balancers=[args.load_balancer_id]),',
        '            _inbound("tcp", NGINX_PORT, addresses=EVERYWHERE),',
        ("tests/components/test_program.py", "tests/policy/test_stack_policies.py"),
    ),
    Mutation.one(
        "docker-api-to-world",
        "the Docker API port open to every address, not only adminCidrs",
        "components/network.py",
        '            _inbound("tcp", DOCKER_API_PORT, addresses=admin),',
        '            _inbound("tcp", DOCKER_API_PORT, addresses=EVERYWHERE),',
        ("tests/components/test_program.py", "tests/policy/test_stack_policies.py"),
    ),
    Mutation.one(
        "r2-token-every-bucket",
        "the registries' R2 token reads and writes every bucket of the account",
        "components/storage.py",
        '    return f"com.cloudflare.edge.r2.bucket.{account_id}_{jurisdiction}_{bucket}"',
        '    return f"com.cloudflare.edge.r2.bucket.{account_id}_{jurisdiction}_*"',
        ("tests/components/test_program.py",),
    ),
    Mutation.one(
        "r2-secret-in-plain-text",
        "the R2 secret access key stored in plain text in the stack state",
        "components/storage.py",
        "        self.secret_access_key = pulumi.Output.secret(self.token.value.apply(s3_secret_key))",
        "        self.secret_access_key = self.token.value.apply(s3_secret_key)",
        ("tests/components/test_program.py",),
    ),
    Mutation.one(
        "even-node-count",
        "a two-manager swarm: loses quorum when either node goes",
        "settings.py",
        "NODE_COUNTS = (1, 3, 5)",
        "NODE_COUNTS = (1, 2, 3, 5)",
        ("tests/components/test_settings.py",),
    ),
    Mutation.one(
        "docker-api-without-client-certs",
        "the Docker API accepts any client that reaches the port (no client certificate)",
        "components/plan/cloud_init.py",
        '        "tlsverify": True,',
        '        "tlsverify": False,',
        ("tests/components/test_cloud_init.py",),
    ),
    Mutation.one(
        "maintenance-registry-on-the-overlay",
        "the writable maintenance registry reachable by nginx while clients' replicas are read-only",
        "components/cli/maintenance.py",
        '    task.pop("Networks", None)',
        "    pass",
        ("tests/components/cli/test_maintenance_units.py",),
    ),
    Mutation.one(
        "gc-beside-draining-writers",
        "garbage collection while a replaced writable replica still takes pushes: acknowledged, then broken",
        "components/cli/maintenance.py",
        "        if stale or len(fresh) < want:",
        "        if len(fresh) < want:",
        ("tests/components/cli/test_maintenance_units.py",),
    ),
    Mutation.one(
        "gc-after-a-rollback",
        "garbage collection on a private service Swarm rolled back to writable",
        "components/cli/maintenance.py",
        '        held = is_read_only(service["Spec"]) == read_only and state not in ROLLED_BACK',
        "        held = True",
        ("tests/components/cli/test_maintenance_units.py",),
    ),
)


def by_name(names: list[str]) -> list[Mutation]:
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"mutation-check: no mutation named {', '.join(unknown)} (see --list)")
    return [known[n] for n in names]


def copy_repo(target: Path) -> None:
    """The tracked and new (not ignored) files, as they are in the work tree, plus the installed tools."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    for link in (".venv", ".tools"):
        if (ROOT / link).exists():
            (target / link).symlink_to(ROOT / link)


def run_tests(copy: Path, tests: tuple[str, ...], log: Path) -> tuple[int, float]:
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             *tests],
            cwd=copy, stdout=out, stderr=subprocess.STDOUT, check=False,
        ).returncode  # fmt: skip
    return code, time.monotonic() - started


def apply(copy: Path, mutation: Mutation) -> dict[Path, str]:
    """Applies every edit; returns the original texts to put back."""
    originals: dict[Path, str] = {}
    for edit in mutation.edits:
        path = copy / edit.path
        originals.setdefault(path, path.read_text())
        current = path.read_text()
        count = current.count(edit.old)
        if count != 1:
            raise SystemExit(f"mutation-check: {mutation.name}: its text occurs {count} times in {edit.path}")
        path.write_text(current.replace(edit.old, edit.new))
    return originals


def first_failure(log: Path) -> tuple[str, str]:
    """The first failing test and its first error line (why it failed: the reason must fit the mutation)."""
    lines = log.read_text(errors="replace").splitlines()
    test = next(
        (ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))), ""
    )
    why = next((ln[1:].strip() for ln in lines if ln.startswith("E ")), "")
    return test or "no failing test named", why[:160]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation only")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:32} {m.breaks}")
        return 0
    chosen = by_name(args.only) if args.only else list(MUTATIONS)
    with tempfile.TemporaryDirectory(prefix="owncr-mutation-") as temp:
        copy, logs = Path(temp) / "repo", Path(temp) / "logs"
        copy.mkdir()
        logs.mkdir()
        copy_repo(copy)
        union = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"mutation-check: baseline: {len(union)} test targets on the unmutated copy ...", flush=True)
        code, seconds = run_tests(copy, union, logs / "baseline.log")
        if code != 0:
            print((logs / "baseline.log").read_text(errors="replace")[-3000:])
            print(f"mutation-check: the unmutated copy fails its tests (exit {code}); fix that first")
            return 2
        print(f"mutation-check: baseline passed in {seconds:.0f}s", flush=True)
        rows: list[tuple[str, str, str]] = []
        for m in chosen:
            originals = apply(copy, m)
            try:
                code, seconds = run_tests(copy, m.tests, logs / f"{m.name}.log")
            finally:
                for path, text in originals.items():
                    path.write_text(text)
            verdict = {0: "SURVIVED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")
            by, why = first_failure(logs / f"{m.name}.log") if code == 1 else ("", "")
            rows.append((m.name, verdict, by))
            print(f"mutation-check: {m.name}: {verdict} {by} ({seconds:.0f}s)\n    {why}", flush=True)
            if code not in (0, 1):
                print((logs / f"{m.name}.log").read_text(errors="replace")[-2000:])
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'mutation':{width}} | result   | caught by |")
    print(f"|{'-' * (width + 2)}|----------|-----------|")
    for name, verdict, by in rows:
        print(f"| {name:{width}} | {verdict:8} | {by} |")
    failed = [r for r in rows if r[1] != "caught"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} mutations caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
