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
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

#: The longest line a record is written as, in characters.
MAX_LINE = 2000

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


def setup_logging(fmt: str = "text", level: str = "info", stream: IO[str] | None = None) -> None:
    """Log to `stream` (stderr by default) through one handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Handlers log why a request failed (service/base.py); the access log adds only noise.
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    for noisy in ("apscheduler", "peewee_migrate", "httpx", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
