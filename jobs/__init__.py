"""Scheduled per-account jobs and webhook event handlers.

Frame: `registry` (the `@job` and `@on_event` decorators), `scheduler` (APScheduler in the event
loop), `runner` (claim, limits, retries, records), `events` (stored webhook processing),
`stripe_api` (per-account Stripe clients), `endpoints` (`@endpoint`: signed endpoints declared
outside `service/`). App code lives in the developer's app package (`APP_PACKAGES`, docs/apps.md;
the shipped example app is `example_app/`), walked by the loader (`models/loader.py`) after this
package; its modules are discovered without registration.
"""
