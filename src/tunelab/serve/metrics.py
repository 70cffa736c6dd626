"""Prometheus metrics (prometheus-client, its text exposition format at /metrics). One registry per
app so several servers in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("tunelab_request_duration_seconds", "Time to the response (first byte when streaming)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("tunelab_generated_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.batch_size = Histogram("tunelab_batch_size", "Items per model call formed by the dynamic batcher",
                                    ["kind"], buckets=BATCH_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
