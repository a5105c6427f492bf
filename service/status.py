"""The operator's status page: `GET /status` (HTML, server-rendered, no JavaScript) and
`GET /status.json` (the same figures), with its actions as POST forms.

Authentication (`OPERATOR_TOKEN`; unset, every route here answers 503):
- `Authorization: Bearer <token>` for scripts;
- or the session cookie that the login form (`GET/POST /status/login`) sets: a random session id
  as a Tornado signed value under a key derived from the token (changing the token ends every
  session), HttpOnly, SameSite=Strict, Secure when `PUBLIC_URL` is https, valid for
  `SESSION_HOURS` and only while the session's row exists in the database
  (models/operator_sessions.py): log-out deletes it, so the old cookie is refused by every
  process and replica.
Without either, `/status` redirects to the login form and everything else answers 401.

Wrong tokens (on the form or as a bearer) are throttled per client address and per process
(`service/throttle.py`, the application's `login_throttle`): past the allowance, a token is
not even checked and the answer is 429 with `Retry-After` (the form says when to try again).

Every action (`/status/resume`, `/status/replay`, `/status/doctor`, `/status/logout`) is a
POST. With the cookie it must carry the form field `_csrf`, an HMAC of the session under
another key derived from the token (403 otherwise); a bearer request needs none (a browser
cannot be made to send that header). This CSRF check is these handlers' own: the signed /api
and /webhooks endpoints are untouched.

Figures come from `models/status.py` in one database call (aggregates by the database, rows in
pages of `PAGE_SIZE`), plus what this process knows (next fires, doctor findings, uptime, loop
lag).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from html import escape
from importlib import metadata
from typing import Any
from urllib.parse import urlencode

from tornado.web import create_signed_value, decode_signed_value

from models.enums import MODES
from models.events import WebhookEvent
from models.operator_sessions import close_session, open_session, session_alive
from models.status import FAILURE_OUTCOMES, HOURS, PAGE_SIZE, Pages, snapshot
from service.base import APIError, BaseHandler
from service.doctor import DoctorReport, Status
from service.throttle import LoginThrottle

log = logging.getLogger("app.status")

COOKIE = "status_session"
SESSION_HOURS = 12
TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
#: Flash messages after an action (a code in the redirect, never text from the request).
DONE = {
    "resumed": "Jobs resumed for {item}.",
    "not_found": "No installation {item}.",
    "processed": "Event {item} replayed: processed.",
    "failed": "Event {item} replayed: it failed again (see its error).",
    "dead": "Event {item} replayed: it failed again and stays dead.",
    "busy": "Event {item} is being processed elsewhere right now.",
    "no_event": "No stored event {item}.",
    "doctor": "The doctor's checks ran again.",
}
#: Action outcomes that mean "no such thing" (404 for a script).
MISSING = frozenset({"not_found", "no_event"})
CHART_COLOURS = (("processed", "#3a8f4a"), ("pending", "#9aa3ad"), ("processing", "#5b7fbf"),
                 ("failed", "#e0912f"), ("dead", "#c8412f"))


class Throttled(APIError):
    """Too many wrong tokens from this client or overall: 429, try again in `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, f"too many wrong operator tokens: try again in {retry_after} s",
                         code="too_many_requests",
                         reason_for_log="operator token not checked: too many wrong ones")
        self.retry_after = retry_after


def _derive(token: str, purpose: str) -> bytes:
    return hmac.new(token.encode(), f"status-page:{purpose}".encode(), hashlib.sha256).digest()


def version() -> str:
    try:
        return metadata.version("stripe-app-backend")
    except metadata.PackageNotFoundError:
        return "unknown"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def hourly_svg(hourly: list[dict[str, Any]]) -> str:
    """Events per hour, stacked by status, as inline SVG (every value a number or escaped)."""
    bar, gap, height, top = 22, 4, 120, 10
    width = len(hourly) * (bar + gap)
    peak = max([sum(v for k, v in h.items() if k != "hour") for h in hourly] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
             f'viewBox="0 0 {width} {height + top + 18}" width="{width}" '
             f'height="{height + top + 18}" aria-label="webhook events per hour, last '
             f'{len(hourly)} hours">']
    for i, h in enumerate(hourly):
        x, y = i * (bar + gap), top + height
        counts = ", ".join(f"{s} {int(h.get(s, 0))}" for s, _ in CHART_COLOURS if h.get(s))
        label = escape(f"{when(h['hour'])[:13]}:00 UTC: {counts or 'no events'}")
        parts.append(f"<g><title>{label}</title>")
        parts.append(f'<rect x="{x}" y="{top}" width="{bar}" height="{height}" '
                     'fill="#f2f4f6"/>')
        for status, colour in CHART_COLOURS:
            n = int(h.get(status, 0))
            if n:
                size = max(1.0, height * n / peak)
                y -= size
                parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{size:.1f}" '
                             f'fill="{colour}"/>')
        parts.append("</g>")
        if i % 6 == 0:
            hour = datetime.fromtimestamp(h["hour"], UTC).strftime("%H:00")
            parts.append(f'<text x="{x}" y="{top + height + 14}" font-size="10" '
                         f'fill="#555">{hour}</text>')
    parts.append(f'<text x="0" y="8" font-size="9" fill="#555">max {peak}/h</text></svg>')
    return "".join(parts)


class OperatorHandler(BaseHandler):
    """Authentication, CSRF and security headers for every /status route (an action unless a
    subclass says otherwise: its 405 answers list `SUPPORTED_METHODS` in `Allow`)."""

    SUPPORTED_METHODS: tuple[str, ...] = ("POST",)
    #: How the request proved itself: "bearer", "cookie" or None.
    auth: str | None = None

    def get_template_path(self) -> str:
        return TEMPLATES

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.html_headers()  # every answer, JSON and errors too: a redirect may become a page

    @property
    def token(self) -> str:
        token = self.config.operator_token
        if not token:
            raise APIError(503, "the status page is off: set OPERATOR_TOKEN",
                           code="not_configured")
        return token

    @property
    def doctor(self) -> DoctorReport:
        return self.settings["doctor"]

    @property
    def throttle(self) -> LoginThrottle:
        return self.settings["login_throttle"]

    def check_token(self, given: str) -> bool:
        """Whether `given` is the operator token; a wrong one counts against this client, and
        while it has too many, nothing is checked (`Throttled`, 429)."""
        client = self.request.remote_ip or ""
        wait = self.throttle.wait(client)
        if wait:
            raise Throttled(wait)
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        self.throttle.failed(client)
        return False

    def session(self) -> str | None:
        """The session id the signed cookie carries (alive or not), or None."""
        value = self.get_cookie(COOKIE)
        if not value:
            return None
        session = decode_signed_value(_derive(self.token, "cookie"), COOKIE, value,
                                      max_age_days=SESSION_HOURS / 24)
        return session.decode() if session is not None else None

    async def prepare(self) -> None:
        self.token  # noqa: B018  (503 when the page is off)
        header = self.request.headers.get("Authorization", "")
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not self.check_token(given.strip()):
                raise APIError(401, "wrong operator token",
                               reason_for_log="wrong bearer token for the status page")
            self.auth = "bearer"
            return
        session = self.session()
        if session is not None and await self.storage.run(session_alive, session, time.time()):
            self.auth = "cookie"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Throttled):  # set here: an error answer starts from cleared headers
            self.set_header("Retry-After", str(exc.retry_after))
        super().write_error(status_code, **kwargs)

    def require_auth(self) -> None:
        if self.auth is None:
            raise APIError(401, "log in at /status/login or send Authorization: Bearer "
                           "<OPERATOR_TOKEN>")

    def csrf_token(self) -> str:
        session = self.get_cookie(COOKIE) or ""
        return hmac.new(_derive(self.token, "csrf"), session.encode(),
                        hashlib.sha256).hexdigest()

    def check_csrf(self) -> None:
        self.require_auth()
        if self.auth == "bearer":
            return
        given = self.get_body_argument("_csrf", "")
        if not given or not hmac.compare_digest(given, self.csrf_token()):
            raise APIError(403, "missing or wrong CSRF token: reload the page and try again",
                           reason_for_log="status action without a valid CSRF token")

    def done(self, code: str, item: str = "", **data: Any) -> None:
        """Answer an action: JSON for a script, a redirect back to the page for a browser. A
        script asking about something that does not exist gets a 404 error; a browser, the
        page saying so."""
        if self.auth == "bearer":
            if code in MISSING:
                raise APIError(404, DONE[code].format(item=item), code="not_found")
            self.write_json({"done": code, "item": item, **data})
            return
        self.redirect("/status?" + urlencode({"done": code, "item": item}), status=303)


class LoginHandler(OperatorHandler):
    SUPPORTED_METHODS = ("GET", "POST")

    def get(self) -> None:
        self.token  # noqa: B018  (503 when the page is off)
        self.render("login.html", error=None)

    async def post(self) -> None:
        given = self.get_body_argument("token", "")
        try:
            right = self.check_token(given)
        except Throttled as exc:
            log.warning("status page: log-in refused: too many wrong tokens")
            self.set_status(429)
            self.set_header("Retry-After", str(exc.retry_after))
            self.render("login.html", error="Too many wrong tokens: try again in "
                        f"{exc.retry_after} seconds.")
            return
        if not right:
            log.warning("status page: failed login from %s", self.request.remote_ip)
            self.set_status(401)
            self.render("login.html", error="That is not the operator token.")
            return
        session = secrets.token_urlsafe(32)
        await self.storage.run(open_session, session, time.time(), SESSION_HOURS * 3600)
        signed = create_signed_value(_derive(self.token, "cookie"), COOKIE, session).decode()
        self.set_cookie(COOKIE, signed, path="/", httponly=True, samesite="Strict",
                        secure=self.config.public_url.startswith("https://"))
        self.redirect("/status", status=303)


class LogoutHandler(OperatorHandler):
    async def post(self) -> None:
        self.check_csrf()
        session = self.session()
        if session is not None:  # ended here, so in every process: the cookie is refused
            await self.storage.run(close_session, session)
        self.clear_cookie(COOKIE, path="/")
        self.redirect("/status/login", status=303)


class StatusPageHandler(OperatorHandler):
    """`GET /status` (HTML) and `GET /status.json`: the same figures."""

    SUPPORTED_METHODS = ("GET",)

    def initialize(self, as_json: bool = False) -> None:
        self.as_json = as_json

    def pages(self) -> Pages:
        def number(name: str) -> int:
            raw = self.get_query_argument(name, "0")
            # ASCII digits only: `str.isdigit` also takes "²", which `int` refuses
            if not (raw.isascii() and raw.isdigit()) or int(raw) > 100_000:
                raise APIError(400, f"{name} must be a page number")
            return int(raw)

        return Pages(paused=number("paused"), events=number("events"),
                     failures=number("failures"), tasks=number("tasks"))

    async def figures(self, pages: Pages) -> dict[str, Any]:
        now = time.time()
        data = await self.storage.run(snapshot, now, pages)
        upcoming = self.scheduler.upcoming() if self.scheduler else {}
        registry = self.registry
        jobs = data["jobs"]
        jobs["jobs"] = [{
            "job": name, "description": spec.description,
            "schedule": f"every {spec.every:.0f}s" if spec.every else f"cron {spec.cron}",
            "outcomes": jobs["by_job"].get(name, {}),
            "next_fires": [{"account_id": a, "mode": m, "at": int(t.timestamp())}
                           for a, m, t in upcoming.get(name, [])],
        } for name, spec in registry.jobs.items()]
        lag = self.metrics.registry.get_sample_value("event_loop_lag_seconds") or 0.0
        report = self.doctor
        data["health"] = {
            "version": version(),
            "uptime_seconds": int(now - self.settings["started_at"]),
            "event_loop_lag_ms": round(lag * 1000, 2),
            "scheduler": self.scheduler.state() if self.scheduler else {"enabled": False},
            "in_flight": self.tracker.in_flight,
            "doctor": {"checked_at": report.checked_at, "running": report.running,
                       "failed": sum(f.status is Status.FAILED for f in report.findings),
                       "findings": [f.as_dict() for f in report.findings]},
        }
        data["page_size"] = PAGE_SIZE
        data["now"] = now
        return data

    async def get(self) -> None:
        if self.auth is None:
            if self.as_json:
                self.require_auth()
            self.redirect("/status/login", status=303)
            return
        pages = self.pages()
        data = await self.figures(pages)
        if self.as_json:
            self.write_json(data)
            return
        code = self.get_query_argument("done", "")
        message = DONE[code].format(item=self.get_query_argument("item", "")) \
            if code in DONE else None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.render("status.html", d=data, pages=pages, message=message, when=when,
                    duration=duration, chart=hourly_svg(data["webhooks"]["hourly"]),
                    csrf=self.csrf_token() if self.auth == "cookie" else "",
                    colours=CHART_COLOURS, hours=HOURS, page_size=PAGE_SIZE, modes=MODES,
                    Status=Status, link=self.page_link, failure_outcomes=FAILURE_OUTCOMES)

    def page_link(self, pages: Pages, **change: int) -> str:
        values = {"paused": pages.paused, "events": pages.events, "failures": pages.failures,
                  "tasks": pages.tasks}
        values.update(change)
        return "/status?" + urlencode({k: v for k, v in values.items() if v})


class ResumeHandler(OperatorHandler):
    async def post(self) -> None:
        self.check_csrf()
        account = self.get_body_argument("account_id", "")
        mode = self.get_body_argument("mode", "")
        if mode not in MODES or not account:
            raise APIError(400, "give account_id and mode (live, test or sandbox)")
        view = await self.installations.pause(account, mode, False)  # resumes here at once
        if view is None:
            self.done("not_found", f"{account} ({mode})")
            return
        log.info("status page: jobs resumed for %s (%s)", account, mode)
        self.done("resumed", f"{account} ({mode})")


class ReplayHandler(OperatorHandler):
    async def post(self) -> None:
        self.check_csrf()
        event_id = self.get_body_argument("event_id", "")
        if not event_id or len(event_id) > 255:
            raise APIError(400, "give event_id")
        exists = await self.storage.run(
            lambda: WebhookEvent.select(WebhookEvent.id).where(
                WebhookEvent.id == event_id).exists())
        if not exists:
            self.done("no_event", event_id)
            return
        status = await self.events.process(event_id, force=True)
        log.info("status page: event %s replayed: %s", event_id, status or "busy")
        self.done(status if status in DONE else "busy", event_id, status=status)


class DoctorHandler(OperatorHandler):
    async def post(self) -> None:
        self.check_csrf()
        findings = await self.doctor.refresh(self.config, self.storage,
                                             self.registry)
        self.done("doctor", "", failed=sum(f.status is Status.FAILED for f in findings))


def status_routes() -> list[tuple[str, type, dict[str, Any]] | tuple[str, type]]:
    return [
        (r"/status", StatusPageHandler),
        (r"/status\.json", StatusPageHandler, {"as_json": True}),
        (r"/status/login", LoginHandler),
        (r"/status/logout", LogoutHandler),
        (r"/status/resume", ResumeHandler),
        (r"/status/replay", ReplayHandler),
        (r"/status/doctor", DoctorHandler),
    ]
