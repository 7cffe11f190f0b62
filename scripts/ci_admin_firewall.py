#!/usr/bin/env python3
"""Open a stack's admin ports (SSH 22, Docker API 2376) to this CI runner only, for one job.

GitHub-hosted runners have no fixed address, so a stack they deploy would otherwise need its admin ports
open to the world (`allowWorldAdminAccess`). Instead, the job opens a separate, temporary DigitalOcean
firewall for the runner's own /32 on the stack's node tag, and always closes it when the job ends. It is
not in the Pulumi state, so it causes no drift, and the stack's own firewall stays closed to the world.

  python3 scripts/ci_admin_firewall.py open STACK    creates owncr-STACK-ci-<run id>, its id in ID_FILE
  python3 scripts/ci_admin_firewall.py close STACK   deletes it, and any left by killed jobs (> MAX_AGE)

Environment: DIGITALOCEAN_TOKEN (required); GITHUB_RUN_ID (names the firewall); OWNCR_RUNNER_IP (else asked
of IP_ECHO_URL); OWNCR_DO_API (default https://api.digitalocean.com, the tests point it at a stub).
Standard library only: it runs on the runner before anything is installed.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ADMIN_PORTS = ("22", "2376")
ID_FILE = Path(".ci-admin-firewall-id")
IP_ECHO_URL = "https://api.ipify.org"
MAX_AGE = datetime.timedelta(hours=6)  # a job's timeout is 1 h: older ci firewalls are leftovers
TIMEOUT = 30


class FirewallError(Exception):
    pass


def api(method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> Any:
    base = os.environ.get("OWNCR_DO_API", "https://api.digitalocean.com").rstrip("/")
    token = os.environ.get("DIGITALOCEAN_TOKEN", "")
    if not token:
        raise FirewallError("DIGITALOCEAN_TOKEN is not set")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310 (https or the stub)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310 (https, or the tests' stub)
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    if status not in ok:
        raise FirewallError(f"{method} {path} answered {status}: {raw.decode(errors='replace')[:300]}")
    return json.loads(raw) if raw.strip() else None


def runner_ip() -> str:
    text = os.environ.get("OWNCR_RUNNER_IP", "")
    if not text:
        with urllib.request.urlopen(IP_ECHO_URL, timeout=TIMEOUT) as resp:  # noqa: S310 (fixed https URL)
            text = resp.read().decode().strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise FirewallError(f"not an IP address for this runner: {text!r}") from None
    if not address.is_global:
        raise FirewallError(f"{address} is not a public address: the nodes would never see it")
    return f"{address}/{address.max_prefixlen}"


def names(stack: str) -> tuple[str, str]:
    """(the stack's node tag, this job's firewall name); the tag is components/network.py's selector."""
    return f"owncr-{stack}-node", f"owncr-{stack}-ci-{os.environ.get('GITHUB_RUN_ID', 'local')}"


def open_for_runner(stack: str) -> str:
    tag, name = names(stack)
    source = runner_ip()
    # A firewall naming a tag needs the tag; on a first deployment Pulumi has not created it yet
    # (creating an existing tag is accepted, Pulumi's own create adopts it later).
    api("POST", "/v2/tags", {"name": tag}, ok=(200, 201, 422))
    rules = [{"protocol": "tcp", "ports": port, "sources": {"addresses": [source]}} for port in ADMIN_PORTS]
    created = api(
        "POST",
        "/v2/firewalls",
        {"name": name, "tags": [tag], "inbound_rules": rules, "outbound_rules": []},
        ok=(200, 202),
    )
    firewall_id = created["firewall"]["id"]
    ID_FILE.write_text(firewall_id + "\n")
    print(
        f"ci-admin-firewall: opened {', '.join(ADMIN_PORTS)} on tag {tag} to {source} ({name}, {firewall_id})"
    )
    return firewall_id


def close(stack: str) -> list[str]:
    """Delete this job's firewall and any ci firewall of the stack left behind by a killed job."""
    _, name = names(stack)
    prefix = f"owncr-{stack}-ci-"
    now = datetime.datetime.now(datetime.UTC)
    deleted = []
    mine = ID_FILE.read_text().strip() if ID_FILE.exists() else None
    for firewall in api("GET", "/v2/firewalls?per_page=200")["firewalls"]:
        created = datetime.datetime.fromisoformat(firewall["created_at"].replace("Z", "+00:00"))
        leftover = firewall["name"].startswith(prefix) and now - created > MAX_AGE
        if firewall["id"] == mine or firewall["name"] == name or leftover:
            api("DELETE", f"/v2/firewalls/{firewall['id']}", ok=(204, 404))
            deleted.append(firewall["name"])
    ID_FILE.unlink(missing_ok=True)
    print(f"ci-admin-firewall: closed {', '.join(deleted) or 'nothing (none open)'}")
    return deleted


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("open", "close") or not argv[2]:
        print("usage: ci_admin_firewall.py open|close STACK", file=sys.stderr)
        return 2
    try:
        (open_for_runner if argv[1] == "open" else close)(argv[2])
    except (FirewallError, OSError, KeyError) as err:
        print(f"ci-admin-firewall: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
