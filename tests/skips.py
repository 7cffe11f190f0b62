"""The one kind of skip CI accepts: a test parametrised over the committed stacks that does not apply to
one of them (an R2 check on the NFS stack). Any other skip (a missing tool, not root) is a failure when
OWNCR_CI=1, which .ci/run sets: CI installs everything and runs as root, so a skip there means a test
silently did not run (tests/conftest.py)."""

from __future__ import annotations

from typing import NoReturn

import pytest

PER_STACK = "per-stack: "


def skip_for_stack(reason: str) -> NoReturn:
    """Skips a stack-parametrised test that does not apply to this stack (allowed in CI)."""
    pytest.skip(PER_STACK + reason)
