"""Monitoring alerts of the nodes (`owncr:compute:NodeAlerts`), e-mailed by DigitalOcean.

One `MonitorAlert` per metric below, applied by tag (so replaced droplets are covered without a change).
The droplets' metrics come from the monitoring agent SwarmCluster installs (`monitoring=True`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean

# (short name, metric type as listed in the MonitorAlert docstring, threshold in percent); why each threshold:
ALERTS = (
    ("cpu", "v1/insights/droplet/cpu", 90.0),  # sustained: one manager is doing every node's work
    ("memory", "v1/insights/droplet/memory_utilization_percent", 90.0),  # before the OOM killer picks dockerd
    ("disk", "v1/insights/droplet/disk_utilization_percent", 80.0),  # images and logs fill the root disk
)
WINDOW = "10m"  # long enough to ignore a single big push or pull


@dataclass(frozen=True, kw_only=True)
class NodeAlertsArgs:
    stack: str
    selector_tag: pulumi.Input[str]  # the Tag resource's name output, so the alerts wait for it
    emails: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.emails:
            raise ValueError("emails must name at least one address")


class NodeAlerts(pulumi.ComponentResource):
    alerts: list[digitalocean.MonitorAlert]

    def __init__(self, name: str, args: NodeAlertsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:compute:NodeAlerts", name, None, opts)
        self.alerts = [
            digitalocean.MonitorAlert(
                f"{name}-{short}",
                type=metric,
                compare="GreaterThan",
                value=threshold,
                window=WINDOW,
                enabled=True,
                tags=[args.selector_tag],
                description=f"owncr {args.stack}: node {short} above {threshold:.0f}% for {WINDOW}",
                alerts=digitalocean.MonitorAlertAlertsArgs(emails=list(args.emails)),
                opts=pulumi.ResourceOptions(parent=self),
            )
            for short, metric, threshold in ALERTS
        ]
        self.register_outputs({"alerts": [a.id for a in self.alerts]})
