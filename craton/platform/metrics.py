"""platform-app's Prometheus metrics, in a registry of its own.

    platform_http_requests_total{route,status}     requests answered (route = the pattern)
    platform_http_request_duration_seconds{route}  histogram
    platform_commands_total{aggregate,outcome}     accepted | refused | conflict
    platform_projection_lag_commits                stream's last sequence minus applied
    platform_signins_total{method,outcome}         github | passkey; ok | failed | limited
    platform_tokens_minted_total                   cluster tokens handed out
    platform_node_polls_total{ready}               node readiness as polled

Label values come from closed sets (route patterns, not paths), so series are bounded.
The series whose label values are all known in advance exist from start-up, at 0: each
aggregate with each command outcome, each sign-in method with each outcome, each
readiness a node poll can find. (A route's series appear with its first request: the
statuses it answers are not a closed set.)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
# The label values of the series created at start-up (craton.platform.service, .http,
# .passkeys and .fleet use these words).
AGGREGATES = ("user", "org", "cluster")
COMMAND_OUTCOMES = ("accepted", "refused", "conflict")
SIGNIN_METHODS = ("github", "passkey")
SIGNIN_OUTCOMES = ("ok", "failed", "limited")
# craton-server's /ready statuses, and craton.platform.fleet.UNREACHABLE.
POLL_READINESS = ("ok", "degraded", "unhealthy", "unreachable")


class PlatformMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "platform_http_requests_total",
            "HTTP requests answered",
            ["route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "platform_http_request_duration_seconds",
            "HTTP request duration",
            ["route"],
            registry=r,
        )
        self.commands = Counter(
            "platform_commands_total", "Commands by outcome", ["aggregate", "outcome"], registry=r
        )
        self.projection_lag = Gauge(
            "platform_projection_lag_commits", "Commits not yet projected", registry=r
        )
        self.signins = Counter(
            "platform_signins_total", "Sign-in attempts", ["method", "outcome"], registry=r
        )
        self.tokens = Counter("platform_tokens_minted_total", "Cluster tokens minted", registry=r)
        self.polls = Counter(
            "platform_node_polls_total", "Node polls by readiness", ["ready"], registry=r
        )
        for aggregate in AGGREGATES:
            for outcome in COMMAND_OUTCOMES:
                self.commands.labels(aggregate, outcome)
        for method in SIGNIN_METHODS:
            for outcome in SIGNIN_OUTCOMES:
                self.signins.labels(method, outcome)
        for ready in POLL_READINESS:
            self.polls.labels(ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)
