"""Shares the control-plane mocks with the policy tests.

`mocks` and `run_program` are fixtures of tests/components/conftest.py, which pytest scopes to
tests/components; importing them here (by module path, never `from conftest import`, which is
ambiguous) makes pytest offer the same fixtures to tests/policy.
"""

from tests.components.conftest import _run_program_fixture, mocks

__all__ = ["_run_program_fixture", "mocks"]
