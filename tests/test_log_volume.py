"""Log volume under a flood (issue 23): repeated lines of one kind are limited to
`REPEAT_LIMIT` per `REPEAT_WINDOW`, and one line then says how many were suppressed. The clock
is injected: nothing here waits for a minute to pass."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

import pytest
from conftest import base_env, running, sign

from service.logs import REPEAT_LIMIT, REPEAT_WINDOW, RepeatLimit, setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name="app.http", level=logging.WARNING, msg="%s -> %d", args=("/x", 401)):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_kind_is_limited_per_window_and_the_rest_are_counted():
    clock = Clock()
    limit = RepeatLimit(clock=clock)
    admitted = [limit.admit(record(args=(f"/x{i}", 401))) for i in range(100)]
    assert [ok for ok, _ in admitted] == [True] * REPEAT_LIMIT + [False] * (100 - REPEAT_LIMIT)
    assert all(summaries == [] for _, summaries in admitted)
    # another kind (another template, logger or level) has its own allowance
    assert limit.admit(record(msg="%s -> %d!"))[0]
    assert limit.admit(record(level=logging.ERROR))[0]
    assert limit.admit(record(name="app.webhooks"))[0]
    status = record()
    status.status = 413  # a refused request's status (service/base.py) makes another kind
    assert limit.admit(status)[0]
    # below warning, other loggers are never limited; app.http's lines always are
    for _ in range(3 * REPEAT_LIMIT):
        assert limit.admit(record(name="app.jobs", level=logging.INFO))[0]
    info = [limit.admit(record(level=logging.INFO))[0] for _ in range(2 * REPEAT_LIMIT)]
    assert info.count(True) == REPEAT_LIMIT
    # within the window: still suppressed, nothing to say yet
    clock.now += REPEAT_WINDOW - 1
    assert limit.admit(record()) == (False, [])
    # the window is over: the next line of any kind brings the summary, and the kind
    # starts a new window
    clock.now += 1
    ok, summaries = limit.admit(record(name="app.jobs", level=logging.INFO))
    assert ok
    summary, other = sorted(summaries, key=lambda line: -line.levelno)
    assert other.levelno == logging.INFO and other.suppressed == REPEAT_LIMIT
    assert summary.name == "app.http" and summary.levelno == logging.WARNING
    assert summary.suppressed == 100 - REPEAT_LIMIT + 1
    assert summary.getMessage() == (f"{100 - REPEAT_LIMIT + 1} more lines like this one were "
                                    "suppressed in 60 s: /x0 -> 401")
    assert limit.admit(record())[0]
    # at exit, what is still counted is said
    more = [limit.admit(record(level=logging.INFO)) for _ in range(REPEAT_LIMIT + 5)]
    assert [ok for ok, _ in more].count(False) == 5
    (last,) = limit.drain()
    assert last.levelno == logging.INFO and last.suppressed == 5


@contextlib.contextmanager
def service_log(clock, fmt="text"):
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging(fmt, "info", stream=stream, clock=clock)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def forged(app):
    body = '{"user_id":"usr_1","account_id":"acct_1"}'
    return app.client.post("/api/whoami", content=body,
                           headers={"Stripe-Signature": sign(body, "absec_forged")})


@pytest.mark.gen_test(timeout=60)
async def test_a_flood_of_bad_requests_writes_a_bounded_number_of_lines(tmp_path):
    clock = Clock()
    async with running(base_env(tmp_path)) as app:
        with service_log(clock, "json") as stream:
            for _ in range(4):  # 200 forged extension calls: 401, a warning each
                batch = [forged(app) for _ in range(50)]
                assert {r.status_code for r in await asyncio.gather(*batch)} == {401}
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            refused = [line for line in lines if "-> 401" in line["msg"]]
            assert len(refused) == REPEAT_LIMIT, len(refused)
            clock.now += REPEAT_WINDOW
            assert (await forged(app)).status_code == 401
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        (summary,) = [line for line in lines if "suppressed" in line]
        assert summary["suppressed"] == 200 - REPEAT_LIMIT
        assert summary["level"] == "warning" and summary["logger"] == "app.http"
        assert "more lines like this one were suppressed in 60 s: POST /api/whoami -> 401" in \
            summary["msg"]
        assert len([line for line in lines if "-> 401" in line["msg"]]) == REPEAT_LIMIT + 2
