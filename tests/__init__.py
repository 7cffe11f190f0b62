"""owncr's tests, shaped like the code: components/ (the Pulumi program under mocks, the engine programs,
the CLIs), gateway/ (the data plane, run for real), services/ and ha/ (a real swarm), policy/, project/
(the repository's own promises: docs, workflows, CI). Helpers are modules of these packages."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
