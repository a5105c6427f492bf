"""The named states and modes that the database, the API and the logs share.

Each is a `StrEnum`: a member *is* its string (`Mode.LIVE == "live"`, same hash, same JSON, same
database value), so the columns and the JSON answers are unchanged, and code that still passes
`"live"` or compares with `"failed"` keeps working. New code names the member.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """Where an install lives. An installation, a job run, a task and an event each belong to
    one.

    `live` and `test` are the two modes of the installing account, served with the platform's
    live and test keys. `sandbox` is an install in one of the user's sandboxes: Stripe serves it
    through the developer's *managed sandbox*, with that sandbox's own key, webhook endpoints
    and secrets (docs/deploy.md, "Sandboxes"). A sandbox's objects say `livemode: false`, so a
    sandbox event is told apart from a test one only by the secret that verified it, never by a
    field of the body.
    """

    LIVE = "live"
    TEST = "test"
    SANDBOX = "sandbox"

    @classmethod
    def of_livemode(cls, livemode: bool, sandbox: bool = False) -> Mode:
        """The mode of a Stripe object's `livemode` flag, seen with the live or test keys or
        secrets (`sandbox=False`) or with the managed sandbox's (`sandbox=True`, whatever the
        flag says: a sandbox is never live)."""
        if sandbox:
            return cls.SANDBOX
        return cls.LIVE if livemode else cls.TEST

    @property
    def livemode(self) -> bool:
        return self is Mode.LIVE

    @property
    def key_mode(self) -> str:
        """The mode of this mode's Stripe keys (`sk_<key_mode>_...`): a sandbox's are test-mode
        keys."""
        return "live" if self is Mode.LIVE else "test"


#: Every mode, live first, then test, then sandbox (the order the API and the CLI list them in).
MODES: tuple[Mode, ...] = tuple(Mode)

#: The modes as an error message lists them: `"live", "test" or "sandbox"`.
MODES_TEXT = ", ".join(f'"{m}"' for m in MODES[:-1]) + f' or "{MODES[-1]}"'

#: The width of every `mode` column (migration 016 widened them from 4, for "sandbox").
MODE_LENGTH = 16


class JobOutcome(StrEnum):
    """What became of one fire of a job (`JobRunner.fire`), and the `job_run.outcome` column.

    Recorded in `job_run` (see `jobs/runner.py`): `claimed` (the column's default), `running`,
    `retrying` (an attempt failed, another follows), then one of `succeeded`, `failed`,
    `revoked` (Stripe refused the platform key for the account: its jobs are paused),
    `not_configured` (no platform key for the mode), `missing_permission` (the install has not
    granted a permission the job declares; Stripe was not called) or `interrupted` (shut down
    mid-run, or its process died: its lease ran out). `skipped`: a fire the scheduler did not
    run (the previous fire was still running, or it was missed past its grace), recorded with
    the reason.

    Answered without a run (nothing recorded): `unknown_job`, `not_active` (the account is not
    installed in the mode, or is paused), `not_claimed` (another replica claimed the fire),
    `already_running` (a manual run refused: one of the same job and account runs right now).
    """

    CLAIMED = "claimed"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVOKED = "revoked"
    NOT_CONFIGURED = "not_configured"
    MISSING_PERMISSION = "missing_permission"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    UNKNOWN_JOB = "unknown_job"
    NOT_ACTIVE = "not_active"
    NOT_CLAIMED = "not_claimed"
    ALREADY_RUNNING = "already_running"


class RunKind(StrEnum):
    """Which claim a `job_run` row is (`job_run.kind`): part of its unique key with the fire.

    `fire`: a scheduled fire (also the install run and a caught-up fire), one per fire time
    across replicas. `retry`: the one retry of a fire whose run was interrupted. `manual`:
    `run.py jobs run`, numbered by `seq`, so it never collides with a fire or another manual
    run. `skip`: the record of a fire this replica skipped; it does not block a claim.
    """

    FIRE = "fire"
    RETRY = "retry"
    MANUAL = "manual"
    SKIP = "skip"


class EventStatus(StrEnum):
    """Where a stored webhook event stands (`webhook_event.status`, see `models/events.py`).

    pending -> processing -> processed; or -> failed (retried later) and, after the last
    attempt, -> dead (kept; `run.py events replay` runs it again).
    """

    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    DEAD = "dead"
