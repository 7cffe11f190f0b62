"""owncr's control plane: Pulumi ComponentResources, one concern per module.

network.py (VPC, node tags, cloud firewall), storage.py (R2 bucket + scoped token, or NFS), edge.py (load
balancer, Let's Encrypt certificate, DNS delegation and records, client snippets), swarm_cluster.py (the
managers and the swarm bootstrap), registry_services.py (the gateway's services on the swarm).
Beside them: plan/ (pure planning code, no Pulumi), engine/ (the deployer's standard-library programs
and the Docker Engine API client), cli/ (the tools run against a deployed stack).
"""

from __future__ import annotations

import re


def physical_name(stack: str, role: str) -> str:
    """`owncr-<stack>-<role>`: the one naming rule for cloud-side names (DigitalOcean, Cloudflare)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"owncr-{stack}-{role}".lower()).strip("-")
