"""owncr's standard-library programs and the Docker Engine API client they share.

The deployer runs them as `python3 -m components.engine.<program>` from the project directory (Pulumi's
local commands: `bootstrap` forms the swarm, `rollout` waits for Swarm's rollouts), and the maintenance
and status tools (components/cli) drive a stack through `api` and `container_exec`. Nothing here imports
Pulumi, the gateway or a package outside the standard library: any `python3` >= 3.10 runs them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).parent


def program_sha256(program: str) -> str:
    """Digest of what `python3 -m components.engine.<program>` runs: the program and the client it
    imports. A Pulumi command triggered by it reruns when either changes."""
    digest = hashlib.sha256()
    for name in (f"{program}.py", "api.py"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()
