"""Structured logs: one bounded line per record, as text or JSON (`LOG_FORMAT`).

Whatever a record holds (a request's path or query value, a traceback), it is written as ONE
line of at most `MAX_LINE` characters:

- text: control characters (newlines included, and the Unicode line and paragraph separators)
  are written as escapes (`\\n`, `\\x1b`, `\\u2028`), so no value can start a line of its own;
  a traceback follows its message on the same line, its newlines escaped;
- json: one JSON object, whose encoder escapes those characters anyway;
- a longer line keeps its beginning and its end (where a traceback names the exception) and
  says how much was cut from the middle.

Tracebacks are logged only for genuine server bugs (`service/base.py`): a bad request is one
short line at info or warning.

Repeated lines are limited (`RepeatLimit`): of one kind (the logger, the level, the message before
its `%s` values are filled in, and the HTTP status of a refused request), at most `REPEAT_LIMIT`
lines per `REPEAT_WINDOW` seconds are written; the rest are counted, and one line says how many were
suppressed once the window is over (when anything is next logged, or at exit). This holds for
warnings and errors of every logger, and for every line of `app.http`, which logs each refused
request (a caller can send as many as it likes): 5,300 bad requests in 6 s no longer write 3,182
warnings.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

#: The longest line a record is written as, in characters.
MAX_LINE = 2000
#: Lines of one kind written per window of `REPEAT_WINDOW` seconds; more are counted instead.
REPEAT_LIMIT = 10
REPEAT_WINDOW = 60.0
#: Loggers whose every line is limited, whatever its level: they log what callers send.
LIMITED_LOGGERS = ("app.http",)
#: Kinds tracked at once; past it, a new kind is written unlimited (kinds are message
#: templates, so this is only reached by a logger that formats its own messages).
MAX_KINDS = 10_000

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                  else f"\\u{ord(char):04x}")


def one_line(text: str) -> str:
    """`text` with every control character escaped."""
    return _CONTROL.sub(_escape, text)


def cut(text: str, limit: int = MAX_LINE) -> str:
    """`text` if it fits in `limit` characters, else its beginning and end with a marker."""
    if len(text) <= limit:
        return text
    width = len(str(len(text)))
    keep = limit - len(" ...[ chars cut]... ") - width
    marker = f" ...[{len(text) - keep} chars cut]... "
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head):]


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message` (plus the traceback, if any), escaped and cut."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        return cut(one_line(super().format(record)))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        line = json.dumps(data, default=str)
        # Escaping can lengthen a string up to 12-fold: cut the longest strings until it fits.
        while len(line) > MAX_LINE:
            longest = max((k for k, v in data.items() if isinstance(v, str)),
                          key=lambda k: len(data[k]), default=None)
            if longest is None or len(data[longest]) <= 100:
                data = {k: data[k] for k in ("ts", "level", "logger")}
                data["msg"] = cut(record.getMessage(), 100)
                return json.dumps(data)  # 100 characters escape to at most 1,200
            data[longest] = cut(data[longest],
                                max(100, len(data[longest]) - (len(line) - MAX_LINE) - 60))
            line = json.dumps(data, default=str)
        return line


@dataclass
class _Kind:
    """The window of one kind of line: when it started, lines written and suppressed."""

    start: float
    written: int
    suppressed: int
    first: logging.LogRecord


class RepeatLimit:
    """At most `limit` lines of one kind per `window` seconds (on `clock`, monotonic).

    A kind is `(logger, level, message template, status)` (`status`: the HTTP status a request
    failure is logged with, `service/base.py`, so that a flood of 401s hides no 413). Only warnings
    and worse are limited, and every line of the `loggers` named (whatever its level).
    `admit(record)` says whether to write the record, and hands back the lines to write first: one
    per kind whose window ended with lines suppressed, saying how many. Thread-safe (database
    threads log too)."""

    def __init__(self, limit: int = REPEAT_LIMIT, window: float = REPEAT_WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 level: int = logging.WARNING,
                 loggers: tuple[str, ...] = LIMITED_LOGGERS) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.level, self.loggers = level, loggers
        self._kinds: dict[tuple[str, int, str, object], _Kind] = {}
        self._lock = threading.Lock()
        self._swept = -float("inf")

    def limits(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name in self.loggers

    def admit(self, record: logging.LogRecord) -> tuple[bool, list[logging.LogRecord]]:
        now = self.clock()
        with self._lock:
            done = self._sweep(now) if now - self._swept >= 1.0 else []
            if not self.limits(record):
                return True, done
            key = (record.name, record.levelno, str(record.msg),
                   record.__dict__.get("status"))
            kind = self._kinds.get(key)
            if kind is not None and now - kind.start >= self.window:
                done.extend(self._summary(kind))
                kind = None
            if kind is None:
                if len(self._kinds) >= MAX_KINDS:
                    return True, done
                kind = self._kinds[key] = _Kind(now, 0, 0, record)
            if kind.written < self.limit:
                kind.written += 1
                return True, done
            kind.suppressed += 1
            return False, done

    def drain(self) -> list[logging.LogRecord]:
        """The summary lines of every kind with lines suppressed, windows over or not (at
        exit)."""
        with self._lock:
            done = [line for kind in self._kinds.values() for line in self._summary(kind)]
            self._kinds.clear()
            return done

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Forget the kinds whose window is over, with a summary line for each that
        suppressed some (at most once a second: `admit` calls it)."""
        self._swept = now
        over = [key for key, kind in self._kinds.items() if now - kind.start >= self.window]
        done = [line for key in over for line in self._summary(self._kinds.pop(key))]
        return done

    def _summary(self, kind: _Kind) -> list[logging.LogRecord]:
        if not kind.suppressed:
            return []
        first = kind.first
        line = logging.LogRecord(
            first.name, first.levelno, first.pathname, first.lineno,
            "%d more lines like this one were suppressed in %.0f s: %s",
            (kind.suppressed, self.window, cut(first.getMessage(), 300)), None)
        line.suppressed = kind.suppressed
        return [line]


class LimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes what `limit` admits, and the summaries it hands back."""

    def __init__(self, stream: IO[str], limit: RepeatLimit) -> None:
        super().__init__(stream)
        self.limit = limit

    def handle(self, record: logging.LogRecord) -> bool:
        write, summaries = self.limit.admit(record)
        for line in summaries:
            super().handle(line)
        return bool(super().handle(record)) if write else False

    def close(self) -> None:
        for line in self.limit.drain():
            super().handle(line)
        super().close()


def setup_logging(fmt: str = "text", level: str = "info", stream: IO[str] | None = None, *,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Log to `stream` (stderr by default) through one handler on the root logger, which limits
    repeated lines (`RepeatLimit`, on `clock`)."""
    handler = LimitedHandler(stream or sys.stderr, RepeatLimit(clock=clock))
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Handlers log why a request failed (service/base.py); the access log adds only noise.
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    for noisy in ("apscheduler", "peewee_migrate", "httpx", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
