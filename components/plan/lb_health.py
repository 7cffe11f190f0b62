"""The load balancer's health check, in one place: what `components/edge.py` configures at DigitalOcean,
what `components/plan/swarm_specs.py` paces nginx's drain and rolling update by, and what `scripts/ha-drill`
configures its HAProxy stand-in with. No Pulumi import (swarm_specs and the drill read it too).

A node answers 503 on `/healthz` while it drains; the load balancer stops sending it new connections once
UNHEALTHY_THRESHOLD checks in a row failed, and sends it traffic again after HEALTHY_THRESHOLD passed.
"""

from __future__ import annotations

HEALTH_PATH = "/healthz"
# The tightest values DigitalOcean accepts (its provider validates interval and timeout in 3..300 s and
# both thresholds in 2..10: terraform-provider-digitalocean, digitalocean/loadbalancer/
# resource_loadbalancer.go, `healthcheck`): a dead node takes new connections for at most 12 s, not 45.
# /healthz is answered by nginx itself, from no file and no backend, so a live node answers a check in
# well under a millisecond even when busy; 3 s is a thousand times that.
INTERVAL_SECONDS = 3
RESPONSE_TIMEOUT_SECONDS = 3
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# Slack for a check already in flight when the state flips, and for scheduling jitter on a busy node.
MARGIN_SECONDS = 5


def drain_seconds() -> int:
    """How long a stopping nginx answers 503 on /healthz (and keeps serving) before it quits: a check that
    started just before the flip plus UNHEALTHY_THRESHOLD failed checks, one per interval. 503 answers at
    once, so no response timeout is added."""
    return INTERVAL_SECONDS * UNHEALTHY_THRESHOLD + MARGIN_SECONDS


def rejoin_seconds() -> int:
    """How long after a new nginx turned healthy the load balancer sends it traffic again: the rolling
    update waits this long before it drains the next node, so two nodes are never out at once."""
    return INTERVAL_SECONDS * HEALTHY_THRESHOLD + MARGIN_SECONDS


def detection_seconds() -> int:
    """Worst case from a node's death until the load balancer stops sending it new connections: every
    check now runs into its response timeout, and a timed-out check is followed by the next one an
    interval later (measured with HAProxy: checks 15 s apart), so UNHEALTHY_THRESHOLD of them take
    (INTERVAL_SECONDS + RESPONSE_TIMEOUT_SECONDS) each, counted from the last check that passed."""
    return (INTERVAL_SECONDS + RESPONSE_TIMEOUT_SECONDS) * UNHEALTHY_THRESHOLD
