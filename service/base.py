"""The base handler every endpoint derives from.

What it guarantees, so that no handler repeats it:

- errors are JSON `{"error": {"code", "message"}}` with the statuses the README lists under
  "Endpoints";
  an unexpected exception is logged with its traceback and answered as a bare 500, a database
  outage as 503, and a caller never sees a traceback or a secret; a 405 carries `Allow`;
- every HTML page carries `HTML_HEADERS` (it cannot be framed), set in one place: `render`
  and `write_html`;
- a request body larger than `MAX_BODY_SIZE` never reaches a handler: `service/guard.py`
  answers 413 from the headers, and counts requests in flight from their headers on;
- every request is counted and timed in the metrics, by handler class (by the application in
  `service/guard.py`, for any handler class, this one's or not);
- shared objects are reached through typed accessors (`self.config`, `self.storage`, ...), never
  through globals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.client import responses
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError, RequestHandler

from models.db import UNAVAILABLE
from service.internals import response_headers

if TYPE_CHECKING:
    from asyncio import Future

    from jobs.credentials import Vault
    from jobs.events import EventProcessor
    from jobs.installs import InstallSync
    from jobs.registry import Registry
    from jobs.scheduler import JobScheduler
    from jobs.task_worker import TaskWorker
    from models.db import Storage
    from models.installation_index import InstallationIndex
    from service.config import Config
    from service.metrics import Metrics
    from service.tracker import RequestTracker

log = logging.getLogger("app.http")

#: The content type of every JSON answer, errors and the guard's 413 included.
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
#: The CORS header on every answer of a handler with `cors` set (the guard's 413 included): the
#: UI extension's origin is `null`, so any origin is allowed.
CORS_HEADER = "Access-Control-Allow-Origin"
CORS_ANY_ORIGIN = "*"
#: Headers of every HTML page (the status pages, the install callback's pages): no page may be
#: framed by another site (clickjacking: `frame-ancestors` for browsers with CSP, and
#: `X-Frame-Options` for those without), and a page loads nothing but inline styles and
#: `data:` images, posts forms only to this origin, and sends no referrer.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class APIError(HTTPError):
    """An error whose message is safe to show to the caller.

    `reason_for_log` goes to the log only (it may say more than the caller should learn, but
    never a secret).
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 reason_for_log: str | None = None) -> None:
        super().__init__(status, reason_for_log or message)
        self.message = message
        self.code = code or ERROR_CODES.get(status, "error")


def _encoder() -> Callable[[Any], str]:
    """One encoder for every answer (`json.dumps` with options builds a new one per call):
    `JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode`, calling the C encoder it
    would build per call, built once (without the circular-reference check: an answer is never
    circular, and would fail with RecursionError instead)."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python encoder
        return encoder.encode
    encode = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False,
                  False, True)
    return lambda value: "".join(encode(value, 0))


_ENCODE = _encoder()


def json_dumps(value: Any) -> bytes:
    # A lone surrogate (a request may carry one as a `\ud800` escape) becomes that escape again
    # instead of failing to encode: it can only occur inside a JSON string.
    return _ENCODE(value).encode("utf-8", "backslashreplace")


def error_body(code: str, message: str) -> bytes:
    """The body of every error answer: `{"error": {"code": ..., "message": ...}}`."""
    return json_dumps({"error": {"code": code, "message": message}})


class BaseHandler(RequestHandler):
    #: Endpoints the UI extension calls set this: CORS headers on every answer, errors included
    #: (`set_default_headers` runs again for an error answer, and the guard reads this for 413).
    cors = False

    # ---- shared objects -------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.settings["config"]

    @property
    def storage(self) -> Storage:
        return self.settings["storage"]

    @property
    def installations(self) -> InstallationIndex:
        return self.settings["installations"]

    @property
    def scheduler(self) -> JobScheduler | None:
        return self.settings.get("scheduler")

    @property
    def events(self) -> EventProcessor:
        return self.settings["events"]

    @property
    def metrics(self) -> Metrics:
        return self.settings["metrics"]

    @property
    def tracker(self) -> RequestTracker:
        return self.settings["tracker"]

    @property
    def registry(self) -> Registry:
        return self.settings["registry"]

    @property
    def task_worker(self) -> TaskWorker | None:
        """None in an app built without one (it then only queues tasks)."""
        return self.settings.get("task_worker")

    @property
    def vault(self) -> Vault | None:
        """None in an app built without one: every credential is missing."""
        return self.settings.get("vault")

    @property
    def install_sync(self) -> InstallSync | None:
        """None without `STRIPE_APP_ID`: the Install API cannot be asked."""
        return self.settings.get("install_sync")

    # ---- request lifecycle ----------------------------------------------------------------
    def set_default_headers(self) -> None:
        # Constant, known-good values: assigned directly, skipping set_header's per-value
        # validation, which is measurable on the signed-request hot path.
        headers = response_headers(self)
        del headers["Server"]
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Cache-Control"] = "no-store"
        if self.cors:
            headers[CORS_HEADER] = CORS_ANY_ORIGIN

    def compute_etag(self) -> None:
        return None

    def html_headers(self) -> None:
        """Set `HTML_HEADERS`: called by `render` and `write_html`, the two ways a handler
        answers with a page."""
        response_headers(self).update(HTML_HEADERS)

    @property
    def body(self) -> bytes:
        """The raw request body, exactly as received."""
        return self.request.body

    # ---- answers --------------------------------------------------------------------------
    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        response_headers(self)["Content-Type"] = JSON_CONTENT_TYPE
        self.finish(json_dumps(value))

    def write_html(self, page: str, status: int = 200) -> None:
        """Answer with an HTML page (with `HTML_HEADERS`)."""
        self.set_status(status)
        response_headers(self)["Content-Type"] = "text/html; charset=utf-8"
        self.html_headers()
        self.finish(page)

    def render(self, template_name: str, **kwargs: Any) -> Future[None]:
        """Tornado's `render`, with `HTML_HEADERS`."""
        self.html_headers()
        return super().render(template_name, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            if value.status_code >= 500 or value.status_code in (401, 403, 413):
                level = logging.WARNING
            else:
                level = logging.INFO
            log.log(level, "%s %s -> %d: %s", self.request.method, self.request.path,
                    value.status_code, value.log_message or value.reason or "",
                    extra={"status": value.status_code, "remote": self.request.remote_ip})
        elif isinstance(value, UNAVAILABLE):
            log.error("%s %s -> 503: database unavailable: %s", self.request.method,
                      self.request.path, type(value).__name__)
        else:
            log.error("%s %s -> 500: unhandled %s", self.request.method, self.request.path,
                      typ.__name__, exc_info=(typ, value, tb))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, UNAVAILABLE):
            status_code = 503
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            code, message = exc.code, exc.message
        elif isinstance(exc, UNAVAILABLE):
            code, message = "database_unavailable", "the database is not available"
        else:
            code = ERROR_CODES.get(status_code, "error")
            message = responses.get(status_code, "Error")
        if status_code == 405:  # RFC 9110: a 405 lists the methods the resource has
            self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(error_body(code, message))


class NotFoundHandler(BaseHandler):
    """Any path no route matches: a JSON 404, whatever the method."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def prepare(self) -> None:
        super().prepare()
        raise APIError(404, "no such endpoint")
