"""Scheduled per-account jobs and webhook event handlers.

Frame: `registry` (the `@job` and `@on_event` decorators), `scheduler` (APScheduler in the event
loop), `runner` (claim, limits, retries, records), `events` (stored webhook processing),
`stripe_api` (per-account Stripe clients). App code: any other module here; the shipped example
is `balance_snapshot`. New modules are discovered without registration.
"""
