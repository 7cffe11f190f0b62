"""The mutation list of scripts/mutation-check stays true to the code: each mutation's text occurs exactly
once in its file (a refactor that moves it makes this fail, not the mutation silently vanish), changes
something, and names tests that exist."""

from __future__ import annotations

import re

import pytest

from scripts.mutation_check import MUTATIONS, Mutation
from tests import ROOT


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_once_and_names_real_tests(mutation: Mutation) -> None:
    for edit in mutation.edits:
        text = (ROOT / edit.path).read_text()
        assert text.count(edit.old) == 1, f"{mutation.name}: its text must occur once in {edit.path}"
        assert edit.old != edit.new
    assert mutation.tests
    for target in mutation.tests:
        file, _, test = target.partition("::")
        assert (ROOT / file).is_file(), f"{mutation.name}: no test file {file}"
        if test:
            assert re.search(rf"^def {re.escape(test)}\(", (ROOT / file).read_text(), re.MULTILINE), (
                f"{mutation.name}: no test {test} in {file}"
            )


def test_mutation_names_are_unique() -> None:
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
