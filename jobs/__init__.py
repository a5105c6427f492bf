"""Scheduled per-account jobs and webhook event handlers.

Frame: `registry` (the `@job` and `@on_event` decorators), `scheduler` (APScheduler in the event
loop), `runner` (claim, limits, retries, records), `events` (stored webhook processing),
`stripe_api` (per-account Stripe clients), `endpoints` (signed reads declared beside a job).
App code: any other module here, or of another package the loader walks (`models/loader.py`);
the shipped examples are in `example_app/`. New modules are discovered without registration.
"""
