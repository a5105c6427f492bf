"""Prometheus metrics, one registry per app (no global state), and the event-loop lag probe.

The request counter and latency histogram (`http_requests_total`,
`http_request_duration_seconds`) are counted in plain dicts by `RequestCounts` and turned into
Prometheus samples only when collected: a request costs a few dict operations, not three
locked updates of prometheus_client's values. They are written from the event loop's thread
only (where every request ends), so they need no lock; `_created` samples are not exposed for
them.

Every label takes values from a fixed set, whatever requests arrive: `handler` is a handler
class (any unrouted path is `NotFoundHandler`), `method` one of `METHODS`, `other`, or empty
(answered before routing), `code` an HTTP status the service answers. So `/metrics` stays the
same size under invented methods or paths.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


#: The methods counted by name; any other (an invented one, say) is counted as `other`.
METHODS = frozenset(("GET", "HEAD", "POST", "OPTIONS", "PUT", "PATCH", "DELETE"))


class RequestCounts:
    """Requests answered by (handler, method, code), and their latency by handler in the
    buckets of `LATENCY_BUCKETS` (as a prometheus_client `Histogram` counts them: a value goes
    into the first bucket whose bound is >= it)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        #: handler -> one count per bucket (the last is +Inf, non-cumulative), then the sum
        self.latency: dict[str, list[float]] = {}
        self._slots = len(LATENCY_BUCKETS) + 1

    def observe(self, handler: str, method: str, code: str, seconds: float) -> None:
        key = (handler, method, code)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        row = self.latency.get(handler)
        if row is None:
            row = self.latency[handler] = [0.0] * (self._slots + 1)
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds


class _RequestsCollector(Collector):
    def __init__(self, counts: RequestCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("http_requests_total", "HTTP requests answered",
                                     labels=["handler", "method", "code"])
        for labels, n in list(self._counts.counts.items()):
            family.add_metric(labels, n)
        yield family


class _LatencyCollector(Collector):
    def __init__(self, counts: RequestCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("http_request_duration_seconds",
                                       "Time to answer a request", labels=["handler"])
        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for handler, row in list(self._counts.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(bounds, row, strict=False):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([handler], buckets, row[-1])
        yield family


#: The `outcome` labels of `webhook_events_total`.
WEBHOOK_OUTCOMES = ("stored", "duplicate", "rejected", "store_failed")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_counts = RequestCounts()
        #: `http_requests_total` and `http_request_duration_seconds` (from `request_counts`)
        self.requests = _RequestsCollector(self.request_counts)
        self.latency = _LatencyCollector(self.request_counts)
        r.register(self.requests)
        r.register(self.latency)
        self.loop_lag = Gauge("event_loop_lag_seconds", "Last measured event-loop lag",
                              registry=r)
        self.loop_lag_hist = Histogram("event_loop_lag_seconds_distribution",
                                       "Event-loop lag samples", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.in_flight = Gauge("http_requests_in_flight", "Requests being received or answered",
                               registry=r)
        self.webhooks = Counter("webhook_events_total", "Webhook deliveries by outcome",
                                ["outcome"], registry=r)
        #: Its child per outcome, looked up once (`labels()` takes a lock and a dict lookup per
        #: call), so every outcome is exposed from the start, at 0.
        self.webhook_outcomes = {outcome: self.webhooks.labels(outcome)
                                 for outcome in WEBHOOK_OUTCOMES}
        self.event_processing = Counter("webhook_processing_total",
                                        "Event processing attempts by type and outcome",
                                        ["type", "outcome"], registry=r)
        self.job_runs = Counter("job_runs_total", "Job runs by job and outcome",
                                ["job", "outcome"], registry=r)
        self.stripe_calls = Counter("stripe_api_calls_total", "Stripe API calls by mode",
                                    ["mode", "outcome"], registry=r)
        self.install_sync = Counter("install_sync_changes_total", "Differences between Stripe's "
                                    "install list and the table, set right by reconciliation",
                                    ["mode", "change"], registry=r)
        self.installations = Gauge("installations_active", "Active installations by mode",
                                   ["mode"], registry=r)
        self.db_pending = Gauge("db_calls_pending", "Database calls queued or running in the "
                                "database threads (each webhook of a group commit counted)",
                                registry=r)
        self.scheduled_jobs = Gauge("scheduled_jobs", "Jobs in this process's scheduler",
                                    registry=r)
        self.tasks = Gauge("tasks", "Tasks in the database by status", ["status"], registry=r)
        self.task_runs = Counter("task_runs_total", "Task attempts by task and outcome",
                                 ["task", "outcome"], registry=r)
        self.task_wait = Gauge("task_queue_wait_seconds", "How long the oldest due queued task "
                               "has waited for a free slot", registry=r)
        self.connections_open = Gauge("http_connections_open", "Client connections open",
                                      registry=r)
        self.connections_refused = Counter(
            "http_connections_refused_total", "Connections closed at once: above "
            "MAX_CONNECTIONS, or not accepted for want of file descriptors", ["reason"],
            registry=r)
        self._codes: dict[int, str] = {}

    def observe_task_queue(self, counts: dict[str, int], oldest_wait: float) -> None:
        """The task queue as the worker last counted it: tasks by status, and how long the
        oldest due queued task has waited."""
        for status, n in counts.items():
            self.tasks.labels(status).set(n)
        self.task_wait.set(oldest_wait)

    def observe_request(self, handler: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS and method:  # "": answered before routing (the body limit)
            method = "other"
        code = self._codes.get(status)
        if code is None:
            code = self._codes[status] = str(status)
        self.request_counts.observe(handler, method, code, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def measure_loop_lag(self, interval: float = 0.5) -> None:
        """Forever: sleep `interval` and record how late the loop woke us (cancel to stop)."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(interval)
            lag = max(0.0, time.perf_counter() - start - interval)
            self.loop_lag.set(lag)
            self.loop_lag_hist.observe(lag)
