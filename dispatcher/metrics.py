"""Prometheus metrics of the service (exposed at ``/metrics`` by the API process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERY_OUTCOMES = Counter(
    "dispatcher_attempts_total", "Send attempts by channel and outcome", ["channel", "outcome"]
)
SEND_SECONDS = Histogram(
    "dispatcher_send_seconds",
    "Time one send took at the provider",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "dispatcher_rate_limit_wait_seconds_total",
    "Time spent waiting for a rate-limit slot",
    ["channel"],
)
CHANNEL_PAUSES = Counter(
    "dispatcher_channel_pauses_total", "Channel-wide pauses started, by cause", ["channel", "cause"]
)
AUTH_FAILURES = Counter(
    "dispatcher_channel_auth_failures_total", "Credentials a provider refused", ["channel"]
)
