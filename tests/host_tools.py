"""Every program the tests start, and where CI gets it.

A test that calls a program CI does not install fails on a fresh machine (or, worse, skips). So:
- each host program the tests run is listed here with the Debian package that provides it, and
  tests/project/test_host_tools.py checks that `.ci/run` installs each package (Essential packages
  excepted: every Debian has them), or with where else CI gets it (Go, which install-tools needs too);
- tests/conftest.py records every program the test process actually starts (an audit hook on
  subprocess.Popen) and, in CI, fails the run when one is not listed here.
Programs from the repository itself (scripts/), the tools in `.tools/` (from scripts/install-tools: the
production versions, and the pinned oras, crane and OCI conformance suite) and the venv's Python are
accounted for by where they live.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests import ROOT

# Debian packages with Priority: required / Essential: yes, present on every Debian system.
ESSENTIAL = frozenset({"coreutils", "util-linux", "dash", "bash", "mount"})

# program -> Debian package (as .ci/run names it)
HOST_TOOLS: dict[str, str] = {
    "skopeo": "skopeo",
    "ctr": "containerd",
    "containerd": "containerd",
    "dockerd": "docker.io",  # Debian 12's, where the production versions are not installed
    "docker": "docker.io",
    "registry": "docker-registry",  # Distribution 2.8, one upstream stand-in
    "docker-registry": "docker-registry",
    "nginx": "nginx-light",
    "shellcheck": "shellcheck",
    "cloud-init": "cloud-init",
    "ip": "iproute2",
    "iptables": "iptables",
    "curl": "curl",
    "wget": "wget",
    "debootstrap": "debootstrap",
    "haproxy": "haproxy",  # the load balancer of scripts/ha-drill
    "python3": "python3-venv",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
    "cat": "coreutils",
    "mkdir": "coreutils",
    "rm": "coreutils",  # maintenance evicting from a cache's directory (gateway/upkeep/eviction.py)
    "env": "coreutils",
    "true": "coreutils",
    "sh": "dash",
    "bash": "bash",
}

# Programs CI has from elsewhere than apt, and where: scripts/install-tools needs them as well.
FROM_ELSEWHERE: dict[str, str] = {
    "go": "Go 1.26 (/usr/local/go on the project's machines, actions/setup-go on GitHub)",
}


def classify(program: str) -> str | None:
    """Where a started program comes from: "repo", "tools", "venv", or its HOST_TOOLS name; None if
    it is a host program nobody declared."""
    path = Path(program)
    if path.is_absolute():
        resolved = path if not path.exists() else path.resolve()
        for where, root in (("tools", ROOT / ".tools"), ("venv", ROOT / ".venv"), ("repo", ROOT)):
            if path.is_relative_to(root) or resolved.is_relative_to(root):
                return where
        if path == Path(sys.executable) or resolved == Path(sys.executable).resolve():
            return "venv"
    name = path.name
    return name if name in HOST_TOOLS or name in FROM_ELSEWHERE else None
