"""platform-app's Prometheus metrics, in a registry of its own.

    platform_http_requests_total{route,status}     requests answered (route = the pattern)
    platform_http_request_duration_seconds{route}  histogram
    platform_commands_total{aggregate,outcome}     accepted | refused | conflict
    platform_projection_lag_commits                stream's last sequence minus applied
    platform_signins_total{method,outcome}         github | passkey; ok | failed | limited
    platform_tokens_minted_total                   cluster tokens handed out
    platform_node_polls_total{ready}               node readiness as polled

Label values come from closed sets (route patterns, not paths), so series are bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
