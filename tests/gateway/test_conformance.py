"""The OCI distribution-spec conformance suite (its pinned commit, built by scripts/install-tools) against
the gateway's registry door and, in the same test, against a bare Distribution 3.1.1: the door passes at
least as many checks as Distribution and fails none that Distribution passes, so every failure left is
Distribution's own (docs/oci.md lists them), none the gateway's.

Pull, push, content discovery (tag list, referrers) and content management (deletes) are all on. The
counts of both runs are printed (`pytest -s`) and written to `conformance.txt` in the test's directory,
next to each run's results directory (junit.xml, results.yaml, report.html)."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.gateway.client_harness import USERS, Launcher, installed

# A run takes about 5 s here; the bound only keeps a hung registry from hanging the test.
RUN_TIMEOUT = 300.0
# The suite's settings (its README, "Environment Variables"), under their current names: the legacy
# OCI_TEST_PULL/PUSH/CONTENT_DISCOVERY/CONTENT_MANAGEMENT=1 set exactly these (config.go,
# confLegacyEnv), with a deprecation warning each. OCI_TLS=disabled: plain HTTP on loopback.
SUITE = {
    "OCI_VERSION": "1.1",
    "OCI_TLS": "disabled",
    "OCI_REPO1": "team/conformance",
    "OCI_REPO2": "team/conformance-mount",  # the cross-repository mount's target, pushable as well
    "OCI_API_PULL": "true",
    "OCI_API_PUSH": "true",
    "OCI_API_TAGS_LIST": "true",
    "OCI_API_REFERRER": "true",
    "OCI_API_TAGS_DELETE": "true",
    "OCI_API_MANIFESTS_DELETE": "true",
    "OCI_API_BLOBS_DELETE": "true",
}


@dataclass(frozen=True)
class Report:
    """One run's junit.xml: the suite's own totals (every node of its result tree, workflows included, as
    its summary prints them), the outcome of each leaf check (junit's test cases) and the failed checks
    by name (names repeat: `blob-delete` runs more than once in one workflow, hence a multiset)."""

    tests: int
    failed: int
    skipped: int  # skipped by the suite, plus disabled by configuration (upload cancel, tag params)
    checks: Counter[str]  # junit status -> leaf checks
    failures: Counter[str]

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped

    def __str__(self) -> str:
        totals = f"{self.passed} pass / {self.failed} fail / {self.skipped} skip of {self.tests}"
        failed = self.checks["failure"] + self.checks["error"]
        leaves = f"{self.checks['passed']} / {failed} / {self.checks['skipped']} of {self.checks.total()}"
        return f"{totals} ({leaves} leaf checks)"


def conformance(target: str, results: Path, credentials: tuple[str, str] | None = None) -> Report:
    """Run the suite against `target` (host:port), its results in `results`."""
    # Only our settings: an OCI_* variable of the caller's (a config file, another registry) must not
    # leak in. It runs in an empty directory, so no `oci-conformance.yaml` is read either.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env |= SUITE | {"OCI_REGISTRY": target, "OCI_RESULTS_DIR": str(results)}
    if credentials:
        env |= {"OCI_USERNAME": credentials[0], "OCI_PASSWORD": credentials[1]}
    cwd = results.parent / f"{results.name}-cwd"
    cwd.mkdir(parents=True)
    done = subprocess.run(
        [installed("oci-conformance")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=cwd, check=False,
    )  # fmt: skip
    (results.parent / f"{results.name}.log").write_text(done.stdout + done.stderr)
    # Exit 1 is "some check failed", which bare Distribution does too. A configuration error exits 0
    # without results: the report must exist.
    junit = results / "junit.xml"
    ran = done.returncode in (0, 1) and junit.is_file()
    assert ran, f"the suite did not run ({done.returncode}):\n{done.stderr[-3000:]}"
    suite = ET.parse(junit).getroot()  # noqa: S314 - the report the suite just wrote here
    cases = list(suite.iter("testcase"))
    failures = Counter(case.get("name", "") for case in cases if case.get("status") in ("failure", "error"))
    totals = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped", "disabled")}
    return Report(
        tests=totals["tests"],
        failed=totals["failures"] + totals["errors"],
        skipped=totals["skipped"] + totals["disabled"],
        checks=Counter(case.get("status", "") for case in cases),
        failures=failures,
    )


def test_registry_door_is_as_conformant_as_distribution(launch: Launcher, tmp_path: Path) -> None:
    bare = launch.distribution("conformance-bare")
    dockerhub = launch.distribution("conformance-dockerhub")
    # Production's replica count (the default, 2): every delete check must hold whichever replica reads.
    gateway = launch.gateway({"docker.io": dockerhub.url}, name="conformance", private_replicas=2)

    door = conformance(gateway.doors.registry, tmp_path / "door", ("alice", USERS["alice"]))
    distribution = conformance(bare.host, tmp_path / "distribution")
    summary = f"OCI conformance: registry door {door}; bare Distribution {distribution}\n"
    print(summary, end="")
    (tmp_path / "conformance.txt").write_text(summary)

    assert distribution.passed > 0, "the suite ran no check"  # without it, 0 >= 0 would pass below
    extra = door.failures - distribution.failures
    assert not extra, f"the door fails what Distribution passes: {sorted(extra.elements())}"
    assert door.passed >= distribution.passed, summary
    # The referrers API and OCI-Subject are the door's own (referrers.js): none of those checks fails.
    referrers = [
        name for name in door.failures if "referrers" in name or "manifest" in name and "subject" in name
    ]
    assert not referrers, f"referrers checks failed on the door: {referrers}"
    assert door.passed > distribution.passed, summary
