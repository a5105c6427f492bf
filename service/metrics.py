"""Prometheus metrics, one registry per app (no global state), and the event-loop lag probe.

Every label takes values from a fixed set, whatever requests arrive: `handler` is a handler
class (any unrouted path is `NotFoundHandler`), `method` one of `METHODS`, `other`, or empty
(answered before routing), `code` an HTTP status the service answers. So `/metrics` stays the
same size under invented methods or paths.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


#: The methods counted by name; any other (an invented one, say) is counted as `other`.
METHODS = frozenset(("GET", "HEAD", "POST", "OPTIONS", "PUT", "PATCH", "DELETE"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("http_requests_total", "HTTP requests answered",
                                ["handler", "method", "code"], registry=r)
        self.latency = Histogram("http_request_duration_seconds", "Time to answer a request",
                                 ["handler"], buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag = Gauge("event_loop_lag_seconds", "Last measured event-loop lag",
                              registry=r)
        self.loop_lag_hist = Histogram("event_loop_lag_seconds_distribution",
                                       "Event-loop lag samples", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.in_flight = Gauge("http_requests_in_flight", "Requests being received or answered",
                               registry=r)
        self.webhooks = Counter("webhook_events_total", "Webhook deliveries by outcome",
                                ["outcome"], registry=r)
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
                                "database threads", registry=r)
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
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_task_queue(self, counts: dict[str, int], oldest_wait: float) -> None:
        """The task queue as the worker last counted it: tasks by status, and how long the
        oldest due queued task has waited."""
        for status, n in counts.items():
            self.tasks.labels(status).set(n)
        self.task_wait.set(oldest_wait)

    def observe_request(self, handler: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS and method:  # "": answered before routing (the body limit)
            method = "other"
        key = (handler, method, status)
        pair = self._children.get(key)
        if pair is None:  # label lookups are the slow part; cache the children
            pair = (self.requests.labels(handler, method, str(status)),
                    self.latency.labels(handler))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

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
