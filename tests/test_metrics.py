"""`service/metrics.py`: the request counter and latency histogram, counted in plain dicts,
expose exactly what prometheus_client's own `Counter` and `Histogram` expose for the same
requests (the `_created` samples aside)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from service.metrics import LATENCY_BUCKETS, Metrics


def _request_lines(registry: CollectorRegistry) -> set[str]:
    return {line for line in generate_latest(registry).decode().splitlines()
            if line.startswith(("http_requests_total", "http_request_duration_seconds"))
            and "_created" not in line}


def test_request_metrics_match_prometheus_client() -> None:
    rng = random.Random(17)
    ours = Metrics()
    registry = CollectorRegistry()
    counter = Counter("http_requests_total", "HTTP requests answered",
                      ["handler", "method", "code"], registry=registry)
    histogram = Histogram("http_request_duration_seconds", "Time to answer a request",
                          ["handler"], buckets=LATENCY_BUCKETS, registry=registry)
    # every bucket bound exactly (a value on a bound counts in that bucket), between and beyond
    values = [*LATENCY_BUCKETS, 0.0, 1e-6, 0.0007, 3.0, 20.0, 1e9]
    for _ in range(3000):
        handler = rng.choice(["HealthHandler", "WhoAmIHandler", "BodyLimit"])
        method = rng.choice(["GET", "POST", "BREW", ""])
        status = rng.choice([200, 401, 413])
        seconds = rng.choice(values) if rng.random() < 0.5 else rng.random() * 12
        ours.observe_request(handler, method, status, seconds)
        label = method if method in ("GET", "POST", "") else "other"
        counter.labels(handler, label, str(status)).inc()
        histogram.labels(handler).observe(seconds)
    mine, theirs = _request_lines(ours.registry), _request_lines(registry)
    assert len(theirs) > 50
    assert mine == theirs
    count = ours.registry.get_sample_value(
        "http_requests_total", {"handler": "BodyLimit", "method": "other", "code": "413"})
    assert count == counter.labels("BodyLimit", "other", "413")._value.get()
