"""The doors' uptime checks and their alerts (components/uptime.py) under mocks: what each check
probes, which alerts fire on what, who hears them, and that a Slack webhook stays secret."""

from __future__ import annotations

import json

import pytest
from pulumi.runtime.rpc import is_rpc_secret

from components.uptime import ALERTS, REGIONS, DoorChecksArgs

CHECK = "digitalocean:index/uptimeCheck:UptimeCheck"
ALERT = "digitalocean:index/uptimeAlert:UptimeAlert"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/test-webhook"


def config(run, key: str):
    value = run.config[f"owncr:{key}"]
    return json.loads(value) if value[:1] in "[{" else value


def test_both_doors_are_checked_with_down_latency_and_certificate_alerts(recorded) -> None:
    run = recorded("prod")  # monitoringAlerts: true
    checks = run.of_type(CHECK)
    domain, mirror = config(run, "domain"), config(run, "mirrorDomain")
    assert sorted(c.inputs["target"] for c in checks) == sorted(
        [f"https://{domain}/healthz", f"https://{mirror}/healthz"]
    )
    for check in checks:
        assert check.inputs["type"] == "https"
        assert check.inputs["regions"] == list(REGIONS)
        assert check.inputs["enabled"] is True
    alerts = run.of_type(ALERT)
    assert len(alerts) == len(checks) * len(ALERTS)
    ids = {run.id_of(c) for c in checks}
    emails = config(run, "alertEmails")
    for check_id in ids:
        mine = [a for a in alerts if a.inputs["checkId"] == check_id]
        assert {a.inputs["type"] for a in mine} == {"down_global", "latency", "ssl_expiry"}
    by_type = {a.inputs["type"]: a.inputs for a in alerts}
    assert by_type["latency"]["comparison"] == "greater_than" and by_type["latency"]["threshold"] == 2000
    assert by_type["ssl_expiry"]["comparison"] == "less_than" and by_type["ssl_expiry"]["threshold"] == 14
    for alert in alerts:
        assert alert.inputs["notifications"] == [{"emails": emails}]  # no Slack unless configured


def test_slack_gets_the_alerts_too_and_its_webhook_stays_secret(recorded) -> None:
    run = recorded("prod", {"alertSlackChannel": "#registry", "alertSlackWebhook": WEBHOOK})
    alerts = run.of_type(ALERT)
    assert alerts
    for alert in alerts:
        # The webhook makes the whole notification list secret (state, previews and logs never show it).
        assert is_rpc_secret(alert.inputs["notifications"])
        emails = config(run, "alertEmails")
        slack = [{"channel": "#registry", "url": WEBHOOK}]
        assert run.plain(alert.inputs["notifications"]) == [{"emails": emails, "slacks": slack}]


def test_no_checks_without_alerts(recorded) -> None:
    run = recorded("dev", {"monitoringAlerts": False})
    assert run.of_type(CHECK) == [] and run.of_type(ALERT) == []


@pytest.mark.parametrize(
    ("emails", "doors", "message"),
    [
        ((), ("cr.example.com", "mirror.cr.example.com"), "emails must name at least one address"),
        (("a@example.com",), ("cr.example.com", "cr.example.com"), "doors must be two different names"),
    ],
)
def test_args_refuse_what_would_alert_nobody_or_check_one_door_twice(emails, doors, message) -> None:
    with pytest.raises(ValueError, match=message):
        DoorChecksArgs(stack="test", doors=doors, emails=emails)
