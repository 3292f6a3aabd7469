"""Prometheus metrics of the gateway (one registry per gateway, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from moodloop.core.contracts import METRIC_ERRORS, METRIC_REQUEST_LATENCY, METRIC_REQUESTS


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            METRIC_REQUESTS,
            "Requests by API, model, version, label and outcome code",
            ["api", "model", "version", "label", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            METRIC_REQUEST_LATENCY,
            "Request latency by API, model, version and label",
            ["api", "model", "version", "label"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "moodloop_batch_size",
            "Rows per model call after dynamic batching",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.errors = Counter(
            METRIC_ERRORS,
            "Failed requests by API and TF Serving status code",
            ["api", "code"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "moodloop_inference_log_dropped", "Records dropped because the log buffer was full", registry=self.registry
        )
        self.log_buffered = Gauge(
            "moodloop_inference_log_buffered", "Records waiting to be written", registry=self.registry
        )
        self.log_written = Gauge("moodloop_inference_log_written", "Records written to Parquet", registry=self.registry)
        self.log_write_errors = Gauge(
            "moodloop_inference_log_write_errors", "Records lost to sink errors", registry=self.registry
        )
        self.canary_share = Gauge(
            "moodloop_canary_share", "Share of unpinned traffic sent to canary", registry=self.registry
        )
