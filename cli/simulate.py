"""`run.py simulate ...`: play Stripe's parts against a running backend, signed as Stripe signs.

    simulate install   --account acct_X [--user usr_X] [--test|--sandbox] [--granted PERM ...]
                                        install link + callback; the install grants the
                                        permissions the manifest asks for, or those given
    simulate uninstall --account acct_X [--test|--sandbox]         deauthorized webhook
    simulate event TYPE --account acct_X [--test|--sandbox]        any event by type, about an
                                        object of its kind (a customer for customer.created)
    simulate event --file event.json [--sandbox]                   an event from a file
    simulate event apps.install.created --account acct_X [--test|--sandbox] [--granted a,b]
                                        [--pending c]
                                        a platform event with the install in data.object
    simulate request /api/installation --account acct_X [--payload '{"k": 1}']

Modes: live unless `--test` or `--sandbox`. An event is signed with its mode's webhook secret:
`STRIPE_WEBHOOK_SECRETS_LIVE`; `_TEST` (or the live one, as a live endpoint also gets test
events); for `--sandbox` only `STRIPE_WEBHOOK_SECRETS_SANDBOX` (the managed sandbox's
endpoints), never the test or live secret, with `livemode: false` as a sandbox's events say. A
sandbox install's callback says `livemode=false`, as Stripe's does (it carries no sandbox flag):
the backend places it in test mode until the Install API (the sandbox's key) or the sandbox's
webhook says it is the sandbox's.

When `STRIPE_API_BASE` is a loopback address (the Install API fake `run.py dev` runs,
cli/fake_installs.py), `install` and `event apps.install.created` also register the install
there (`POST /v1/apps/installs` for the account; the event carries that install's id), and
`uninstall` and `event apps.install.deleted` uninstall it there (`POST
/v1/apps/installs/{id}/uninstall`), as Stripe's own records would change, so an install sync
agrees with what was simulated. Real Stripe (any other address) is never written to. The fake
keeps the install's permissions: those `--granted` (and `--pending`) name, or by default for
`install` every permission the app's manifest asks for (`run.py manifest`), as an account
that accepts the app grants them; so a later install sync keeps them too.

Secrets and the backend's address come from the environment (or, when no secret is set there,
from `var/dev.env` written by `run.py dev`, which holds the `PORT` dev listens on).
Each command prints what it sent and what came back; it exits 1 when the backend refused, 2 on
bad input or a missing secret, 3 when the backend cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from cli.dev import config_over_dev_env, load_dev_env
from cli.devtools import (
    JSONFileError,
    add_mode_options,
    chosen_mode,
    compact,
    make_event,
    new_event_id,
    read_json_object,
    sign,
)
from models.enums import Mode
from service.config import Config
from service.signatures import install_signed_string


class SimulateError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="act as Stripe against a running backend")
    sim.add_argument("--url", help="the backend (default http://HOST:PORT)")
    sim.set_defaults(func=run_simulate)
    ssub = sim.add_subparsers(dest="sim_command", metavar="action", required=True)
    inst = ssub.add_parser("install", help="install through the install link and callback")
    inst.add_argument("--account", required=True)
    inst.add_argument("--user", default="usr_simulated")
    add_mode_options(inst)
    inst.add_argument("--granted", nargs="*", metavar="PERM",
                      help="the permissions the install grants (default: all the manifest "
                           "asks for; none given: none granted)")
    inst.set_defaults(action=_install)
    unin = ssub.add_parser("uninstall", help="send account.application.deauthorized")
    unin.add_argument("--account", required=True)
    add_mode_options(unin)
    unin.set_defaults(action=_uninstall)
    ev = ssub.add_parser("event", help="send a webhook event by type or from a JSON file")
    ev.add_argument("type", nargs="?")
    ev.add_argument("--file")
    ev.add_argument("--account")
    add_mode_options(ev)
    ev.add_argument("--granted", default="", help="apps.install.*: permissions granted, a,b")
    ev.add_argument("--pending", default="", help="apps.install.*: permissions pending, a,b")
    ev.add_argument("--context", help="the event's `context` (an organization's, org_...): "
                                      "the account's calls then use Stripe-Context")
    ev.set_defaults(action=_event)
    req = ssub.add_parser("request", help="send a signed extension request to /api/...")
    req.add_argument("path")
    req.add_argument("--account", required=True)
    req.add_argument("--user", default="usr_simulated")
    req.add_argument("--payload", help="a JSON object of extra signed fields")
    req.set_defaults(action=_request)


def _config(config: Config) -> Config:
    if config.app_secrets or any(config.webhook_secrets.values()):
        return config
    dev = load_dev_env()
    return config_over_dev_env(dev) if dev else config


def _show(label: str, value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    print(f"{label}:\n{text}")


def _answer(resp: httpx.Response) -> int:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text[:2000]
    _show(f"<- {resp.status_code}", body)
    return 0 if resp.status_code < 400 else 1


def signing_secret(config: Config, mode: Mode) -> str:
    """The webhook secret an event of `mode` is signed with (the module docstring): a sandbox
    event only ever with a sandbox secret."""
    secrets = config.webhook_secrets
    pool = {Mode.LIVE: secrets[Mode.LIVE], Mode.TEST: secrets[Mode.TEST] or secrets[Mode.LIVE],
            Mode.SANDBOX: secrets[Mode.SANDBOX]}[mode]
    if not pool:
        needed = "LIVE" if mode == Mode.LIVE else mode.upper()
        raise SimulateError(f"no webhook secret for {mode} mode: set "
                            f"STRIPE_WEBHOOK_SECRETS_{needed}")
    return pool[0]


def send_event(client: httpx.Client, config: Config, event: dict[str, Any],
               mode: Mode | None = None) -> int:
    """Send `event` signed with the secret of `mode` (by default its `livemode`'s); a sandbox
    event must say `livemode: false`."""
    live = bool(event.get("livemode"))
    mode = mode or Mode.of_livemode(live)
    if mode == Mode.SANDBOX and live:
        raise SimulateError("a sandbox event must say livemode: false (a sandbox is never live)")
    secret = signing_secret(config, mode)
    body = json.dumps(event, indent=2)  # Stripe sends pretty-printed JSON
    _show("-> POST /webhooks", body)
    resp = client.post("/webhooks", content=body.encode(), headers={
        "Stripe-Signature": sign(body, secret), "Content-Type": "application/json"})
    return _answer(resp)


def local_install_api(config: Config, mode: Mode) -> tuple[str, dict[str, str]] | None:
    """The Install API fake's base URL and the headers to call it for `mode` (with the mode's
    key: the sandbox's for a sandbox install), or None when `STRIPE_API_BASE` is not on the
    loopback interface (real Stripe is never written to) or the app id or the mode's key is
    missing (then a note says what was skipped)."""
    base = config.api_base
    if not base or urlsplit(base).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    key = config.secret_keys.get(mode)
    if not config.app_id or not key:
        print(f"(not registered with the Install API at {base}: STRIPE_APP_ID or "
              f"STRIPE_SECRET_KEY_{mode.upper()} is not set)")
        return None
    return base.rstrip("/"), {"Authorization": f"Bearer {key}"}


def declared_permissions() -> list[str]:
    """Every permission the app's manifest asks for (`run.py manifest`): what an account that
    accepts the app grants."""
    from jobs.registry import Registry
    from service.manifest import permission_needs

    return [need.permission for need in permission_needs(Registry.discover())]


def permission_list(values: list[str] | None) -> list[str]:
    """`--granted a b`, `--granted a,b` alike."""
    return [p for value in values or () for p in value.split(",") if p]


def register_install(config: Config, account: str, mode: Mode,
                     granted: list[str] | None = None,
                     pending: list[str] | None = None) -> str | None:
    """Tell the local Install API fake that the app is installed on `account` (see the module
    docstring), with the permissions `granted` and `pending` when given, and return the
    install's id; None when there is no local fake or it failed (a warning: the simulated
    install itself stands)."""
    local = local_install_api(config, mode)
    if local is None:
        return None
    base, headers = local
    form: dict[str, Any] = {"app": config.app_id or ""}
    for name, values in (("permissions_granted", granted), ("permissions_pending", pending)):
        if values is not None:  # an empty array is sent as `name=`, as Stripe encodes one
            form.update({f"{name}[]": values} if values else {name: ""})
    print(f"-> POST {base}/v1/apps/installs (Stripe-Account: {account}): Stripe records it"
          + (f", granted: {', '.join(granted) or 'nothing'}" if granted is not None else ""))
    try:
        resp = httpx.post(f"{base}/v1/apps/installs", data=form,
                          headers={**headers, "Stripe-Account": account}, timeout=30)
    except httpx.TransportError as exc:
        print(f"warning: the Install API at {base} cannot be reached ({type(exc).__name__}); "
              "an install sync will not see this install", file=sys.stderr)
        return None
    if resp.status_code >= 400:
        print(f"warning: the Install API at {base} refused ({resp.status_code}): "
              f"{resp.text[:300]}", file=sys.stderr)
        return None
    install_id = str(resp.json().get("id"))
    print(f"<- {resp.status_code} {install_id}")
    return install_id


def unregister_install(config: Config, account: str, mode: Mode) -> None:
    """Uninstall the app from `account` in the local Install API fake, as Stripe's records
    change when an account uninstalls; a failure is a warning."""
    local = local_install_api(config, mode)
    if local is None:
        return
    base, headers = local
    try:
        listed = httpx.get(f"{base}/v1/apps/installs", params={
            "app": config.app_id or "", "account": account, "limit": 100},
            headers=headers, timeout=30)
        ids = [o["id"] for o in listed.json().get("data", [])] if listed.is_success else []
        if not listed.is_success:
            print(f"warning: the Install API at {base} refused the listing "
                  f"({listed.status_code})", file=sys.stderr)
        for install_id in ids:
            print(f"-> POST {base}/v1/apps/installs/{install_id}/uninstall: Stripe records it")
            resp = httpx.post(f"{base}/v1/apps/installs/{install_id}/uninstall",
                              headers=headers, timeout=30)
            print(f"<- {resp.status_code}")
    except (httpx.TransportError, ValueError) as exc:
        print(f"warning: the Install API at {base} failed ({type(exc).__name__}); an install "
              "sync may still see this install", file=sys.stderr)


def install(client: httpx.Client, config: Config, account: str, user: str, mode: Mode,
            granted: list[str] | None = None) -> int:
    """The install link, Stripe's redirect to the callback and the webhook that comes with it
    (signed with `mode`'s secret); the local Install API records the install in `mode`
    granting `granted` (None: what the manifest asks for) first, as Stripe records it before
    it redirects."""
    if not config.app_secrets:
        raise SimulateError("STRIPE_APP_SECRETS is not set")
    if mode == Mode.SANDBOX:  # before anything is sent: no sandbox install without its secret
        signing_secret(config, mode)
    print("-> GET /install")
    start = client.get("/install")
    if start.status_code != 302:
        return _answer(start)
    location = start.headers["location"]
    print(f"<- 302 to {location}")
    query = parse_qs(urlsplit(location).query)
    state = query["state"][0]
    callback = urlsplit(query["redirect_uri"][0]).path
    params = {"user_id": user, "account_id": account, "state": state,
              "install_signature": sign(install_signed_string(state, user, account),
                                        config.app_secrets[0])}
    if mode != Mode.LIVE:  # a sandbox's callback says livemode=false too, and nothing more
        params["livemode"] = "false"
    if granted is None:
        granted = declared_permissions()
    register_install(config, account, mode, granted)  # Stripe records it, then redirects
    print(f"-> GET {callback} (as Stripe's redirect) {json.dumps(params)}")
    resp = client.get(callback, params=params, headers={"Accept": "application/json"})
    code = _answer(resp)
    if code == 0:
        print("-> and the webhook Stripe sends with it")
        code = send_event(client, config, make_event("account.application.authorized", account,
                                                     mode == Mode.LIVE), mode)
    return code


def request(client: httpx.Client, config: Config, path: str, account: str, user: str,
            payload: str | None) -> int:
    if not config.app_secrets:
        raise SimulateError("STRIPE_APP_SECRETS is not set")
    extra: dict[str, Any] = {}
    if payload:
        try:
            extra = json.loads(payload)
        except ValueError as exc:
            raise SimulateError(f"--payload is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise SimulateError("--payload must be a JSON object")
    body = compact({**extra, "user_id": user, "account_id": account})
    _show(f"-> POST {path}", body)
    resp = client.post(path, content=body.encode(), headers={
        "Stripe-Signature": sign(body, config.app_secrets[0]),
        "Content-Type": "application/json"})
    return _answer(resp)


def _event_from_file(path: str) -> dict[str, Any]:
    try:
        event = read_json_object(path)
    except JSONFileError as exc:
        raise SimulateError(str(exc)) from None
    if event.get("object") != "event" or not isinstance(
            event.get("type"), str) or not isinstance(event.get("livemode"), bool):
        raise SimulateError(f"{path} is not a Stripe event (needs object=event, type, livemode)")
    event.setdefault("id", new_event_id())
    event.setdefault("created", int(time.time()))
    return event


def install_event(config: Config, args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    """An `apps.install.*` event as Stripe sends it to the app developer: no top-level
    `account`; the install (with its `account`) in `data.object`."""
    from cli.fake_installs import install_object

    if not args.account:
        raise SimulateError("apps.install.* events need --account")
    status = "uninstalling" if args.type == "apps.install.deleted" else "installed"
    install_id = None
    granted, pending = permission_list([args.granted]), permission_list([args.pending])
    live = mode == Mode.LIVE
    if args.type == "apps.install.created":  # the install Stripe now lists, under its id
        install_id = register_install(config, args.account, mode, granted, pending)
    elif args.type == "apps.install.deleted":
        unregister_install(config, args.account, mode)
    obj = install_object(args.account, config.app_id or "com.example.app", live,
                         install_id=install_id, status=status, permissions_granted=granted,
                         permissions_pending=pending)
    return make_event(args.type, None, live, obj=obj)


def _install(client: httpx.Client, config: Config, args: argparse.Namespace) -> int:
    granted = None if args.granted is None else permission_list(args.granted)
    return install(client, config, args.account, args.user, chosen_mode(args), granted)


def _uninstall(client: httpx.Client, config: Config, args: argparse.Namespace) -> int:
    mode = chosen_mode(args)
    if mode == Mode.SANDBOX:
        signing_secret(config, mode)
    unregister_install(config, args.account, mode)
    return send_event(client, config, make_event(
        "account.application.deauthorized", args.account, mode == Mode.LIVE), mode)


def _event(client: httpx.Client, config: Config, args: argparse.Namespace) -> int:
    mode = chosen_mode(args)
    if args.file:  # its livemode says live or test; --sandbox signs it as the sandbox's
        event = _event_from_file(args.file)
        return send_event(client, config, event,
                          Mode.SANDBOX if mode == Mode.SANDBOX else None)
    if args.type and args.type.startswith("apps.install."):
        event = install_event(config, args, mode)
    elif args.type:
        event = make_event(args.type, args.account, mode == Mode.LIVE)
    else:
        raise SimulateError("give an event type or --file")
    if args.context:
        event["context"] = args.context
    return send_event(client, config, event, mode)


def _request(client: httpx.Client, config: Config, args: argparse.Namespace) -> int:
    return request(client, config, args.path, args.account, args.user, args.payload)


def run_simulate(config: Config, args: argparse.Namespace) -> int:
    config = _config(config)
    url = args.url or f"http://{config.host}:{config.port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            return int(args.action(client, config, args))
    except SimulateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except httpx.TransportError as exc:
        print(f"error: cannot reach the backend at {url} ({type(exc).__name__}); is it "
              "running? Start it with `python run.py` or `python run.py dev`.", file=sys.stderr)
        return 3
