"""Retention rules as plain functions (gateway/upkeep/retention.py): what each rule keeps, how deletions are
made (by digest, or untag only when the manifest is still wanted), and every way a rule is refused.
The same rules on real registries: tests/gateway/upkeep/test_maintenance.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import SettingsError
from gateway.upkeep.retention import (
    Deletion,
    RetentionRule,
    Tag,
    check_rules,
    kept,
    orphans,
    plan,
    rule_from_cli,
    rule_from_mapping,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def tag(name: str, days_ago: float, digest: str = "", repository: str = "team/app") -> Tag:
    return Tag(repository, name, digest or f"sha256:{name:0>64}", NOW - timedelta(days=days_ago), 100)


TAGS = [tag("a", 40), tag("b", 30), tag("c", 20), tag("d", 10), tag("v1", 50), tag("latest", 1)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (RetentionRule("team", keep=2), {"latest", "d"}),  # the two newest by push time, not by name
        (RetentionRule("team", days=15), {"latest", "d"}),
        (RetentionRule("team", days=25), {"latest", "d", "c"}),
        (RetentionRule("team", keep=0, protect=("v*",)), {"v1"}),
        (RetentionRule("team", keep=1, days=21, protect=("v?",)), {"latest", "d", "c", "v1"}),
        (RetentionRule("team", keep=100), {t.name for t in TAGS}),
    ],
)
def test_a_tag_stays_if_any_rule_keeps_it(rule: RetentionRule, expected: set[str]) -> None:
    assert kept(rule, TAGS, NOW) == expected


def test_protect_is_a_whole_tag_glob_not_a_prefix() -> None:
    rule = RetentionRule("team", keep=0, protect=("v1",))
    assert kept(rule, [tag("v1", 9), tag("v10", 9), tag("xv1", 9)], NOW) == {"v1"}


def test_manifests_go_by_digest_and_a_shared_manifest_only_loses_its_old_tag() -> None:
    tags = [tag("new", 1, "sha256:" + "1" * 64), tag("alias", 90, "sha256:" + "1" * 64)]
    tags += [tag("old", 80, "sha256:" + "2" * 64), tag("older", 85, "sha256:" + "2" * 64)]
    deletions = plan(RetentionRule("team", keep=1), tags, NOW)
    assert deletions == [
        Deletion("team/app", "alias", ("alias",), 100),  # "new" still names that manifest
        Deletion("team/app", "sha256:" + "2" * 64, ("old", "older"), 100),  # every tag goes: by digest
    ]
    assert [d.by_digest for d in deletions] == [False, True]


def test_a_platform_manifest_of_a_kept_index_is_never_deleted_by_digest() -> None:
    child = "sha256:" + "c" * 64
    tags = [tag("multi", 1, "sha256:" + "9" * 64), tag("amd64-old", 60, child)]
    (deletion,) = plan(RetentionRule("team", keep=1), tags, NOW, still_needed={child})
    assert deletion.reference == "amd64-old" and not deletion.by_digest


def test_nothing_to_delete_gives_no_call() -> None:
    assert plan(RetentionRule("team", days=365), TAGS, NOW) == []


def test_rules_from_the_command_line() -> None:
    rule = rule_from_cli("team=keep:5,days:30,protect:latest,protect:v*")
    assert rule == RetentionRule("team", keep=5, days=30, protect=("latest", "v*"))
    assert rule.covers("team") and rule.covers("team/x/y") and not rule.covers("teamx/app")


def test_rules_from_the_stack_config() -> None:
    rule = rule_from_mapping("team", {"days": 7, "protect": ["stable"]})
    assert rule == RetentionRule("team", days=7, protect=("stable",))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("team", "expected NAMESPACE=keep:N[,days:D][,protect:GLOB]"),
        ("team=keep:5,keep:6", "'keep:6' is not keep:N, days:D or protect:GLOB"),
        ("team=keep:-1", "'keep:-1' is not keep:N"),
        ("team=size:5", "'size:5' is not keep:N"),
        ("team=days:7,protect:a b", "retention.team.protect: 'a b' is no tag glob"),
    ],
)
def test_bad_command_line_rules_name_the_part(spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rule_from_cli(spec)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "retention.team: an object such as"),
        ({"keep": True}, "retention.team.keep = True: a whole number"),
        ({"keep": 2.5}, "retention.team.keep = 2.5: a whole number"),
        ({"days": -3}, "retention.team.days = -3: a whole number"),
        ({"keep": 3, "protect": "v*"}, r"retention.team.protect: a list of tag globs"),
        ({"keep": 3, "protect": [7]}, "retention.team.protect: 7 is no tag glob"),
        ({}, "retention.team: set keep"),
    ],
)
def test_bad_stack_config_rules_name_the_key_and_the_fix(value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        rule_from_mapping("team", value)


def test_rules_name_private_namespaces_once() -> None:
    with pytest.raises(SettingsError, match="retention.acme: not a private namespace"):
        check_rules([RetentionRule("acme", keep=1)], ("team",))
    with pytest.raises(SettingsError, match="retention.team: given twice"):
        check_rules([RetentionRule("team", keep=1), RetentionRule("team", days=1)], ("team",))


def test_untagged_manifests_go_unless_a_kept_index_lists_them_or_they_sign_a_kept_one() -> None:
    kept_image, kept_child, old, signature, stray_signature, moved = (f"sha256:{c * 64}" for c in "abcdef")
    revisions = {kept_image, kept_child, old, signature, stray_signature, moved}
    subjects = {signature: kept_image, stray_signature: old, moved: None}
    got = orphans(revisions, tagged={kept_image, old}, live={kept_image, kept_child}, subjects=subjects)
    # `old` is tagged (its tags are retention's business), `signature` is about a kept image; a signature
    # of a manifest that is not kept goes with the untagged manifests.
    assert got == [stray_signature, moved]
