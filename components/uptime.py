"""Uptime checks of the two doors (`owncr:edge:DoorChecks`), with alerts by e-mail (and Slack).

One DigitalOcean `UptimeCheck` per door, from outside, through DNS, the load balancer and its TLS
certificate to nginx; per check one `UptimeAlert` each for down, latency and certificate expiry.

What a check can assert: only that the target answers (type `https`, a target URL, the regions it
is probed from: pulumi_digitalocean `UptimeCheck` has no expected status, header or body). Whether
DigitalOcean counts a 4xx answer as up is not documented, so the registry door is checked on its
`/healthz` (200, answered by the same nginx server block that answers `GET /v2/` with the 401 of
Basic auth) rather than on `/v2/`, which could alert forever if a 401 counted as down; the 401 itself
is proved by the gateway tests (tests/gateway/test_routing.py). The mirror door is checked on its
`/healthz` too: DigitalOcean's probes are not in `mirrorClientCidrs`, so its `/v2/` answers them 403.
Each check costs $1 a month (https://docs.digitalocean.com/products/uptime/details/pricing/).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean

REGIONS = ("us_east", "us_west", "eu_west", "se_asia")  # every region a check can be probed from
# (short name, alert type, comparison, threshold, why):
ALERTS = (
    # Down from every region: one region's network trouble is not the registry being down.
    ("down", "down_global", None, None),
    # Milliseconds: /healthz is answered by nginx alone; seconds mean a node or the balancer struggles.
    ("latency", "latency", "greater_than", 2000),
    # Days: DigitalOcean renews the Let's Encrypt certificate well before this; still due means renewal
    # failed (e.g. the DNS delegation broke) and clients will refuse the doors when it expires.
    ("tls-expiry", "ssl_expiry", "less_than", 14),
)
PERIOD = "5m"  # how long the condition must hold before an alert


@dataclass(frozen=True, kw_only=True)
class SlackTarget:
    channel: str
    url: pulumi.Input[str]  # the incoming-webhook URL: a secret


@dataclass(frozen=True, kw_only=True)
class DoorChecksArgs:
    stack: str
    doors: tuple[str, str]  # registry and mirror domain names
    emails: tuple[str, ...]
    slack: SlackTarget | None = None

    def __post_init__(self) -> None:
        if not self.emails:
            raise ValueError("emails must name at least one address")
        if len(set(self.doors)) != 2:
            raise ValueError(f"doors must be two different names, got {self.doors}")


def door_url(domain: str) -> str:
    return f"https://{domain}/healthz"


class DoorChecks(pulumi.ComponentResource):
    checks: list[digitalocean.UptimeCheck]
    alerts: list[digitalocean.UptimeAlert]

    def __init__(self, name: str, args: DoorChecksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:edge:DoorChecks", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        slacks = (
            [digitalocean.UptimeAlertNotificationSlackArgs(channel=args.slack.channel, url=args.slack.url)]
            if args.slack is not None
            else None
        )
        notify = digitalocean.UptimeAlertNotificationArgs(emails=list(args.emails), slacks=slacks)
        self.checks, self.alerts = [], []
        for role, domain in zip(("registry", "mirror"), args.doors, strict=True):
            check = digitalocean.UptimeCheck(
                f"{name}-{role}",
                name=f"owncr-{args.stack}-{role}-door",
                type="https",
                target=door_url(domain),
                regions=list(REGIONS),
                enabled=True,
                opts=child,
            )
            self.checks.append(check)
            for short, kind, comparison, threshold in ALERTS:
                self.alerts.append(
                    digitalocean.UptimeAlert(
                        f"{name}-{role}-{short}",
                        name=f"owncr {args.stack}: {role} door {short}",
                        check_id=check.id,
                        type=kind,
                        comparison=comparison,
                        threshold=threshold,
                        period=PERIOD,
                        notifications=[notify],
                        opts=child,
                    )
                )
        self.register_outputs({"checks": [c.id for c in self.checks]})
