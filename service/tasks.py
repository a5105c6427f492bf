"""Starting and following long-running tasks from the extension (README, "Long-running tasks").

    POST /api/tasks/status  {"task_id"} -> {"task_id", "name", "mode", "status", "progress",
                                            "note", "result", "error", "attempts", "created",
                                            "started", "finished"}
        404 when the task does not exist or belongs to another account.
    POST /api/tasks/<name>  {...input} -> 202 {"task_id", "name", "mode", "status": "queued"}
        404 for an unknown task; 413 `input_too_large` when the input's compact JSON is longer
        than the task's `max_input_bytes` (16 KiB unless it says); 429 (nothing stored) when the
        account started `TASK_STARTS_PER_MINUTE` tasks in the last minute (`Retry-After`: the
        seconds until one of them is a minute old), has `TASK_MAX_PENDING` unfinished tasks
        (`Retry-After: 10`), or its tasks take `TASK_MAX_STORED_BYTES` (`quota_exceeded`,
        `Retry-After: 3600`: it lasts until retention, hourly, prunes old tasks). A signature
        starts one task: the same signature again answers 401 `signature_replayed`. Only the
        fields the signature covers reach the task as its input (never `user_id`, `account_id`,
        `stripe_roles` or `mode`): with the two-key fallback signature the input is empty.

Mode: the installation's. An account installed in more than one mode runs in the first of
live, test and sandbox it is installed in (`MODES` order; an account installed only in a
sandbox: sandbox) unless the signed field `mode` says "live", "test" or "sandbox" (400 for
anything else, 403 `not_installed` for a mode it is not installed in).

While a task is queued, `note` says why it waits (retry backoff, the account's concurrency
limit, or no free slot).
"""

from __future__ import annotations

from typing import Any

from models.base import now
from models.enums import MODES, MODES_TEXT
from models.retention import PRUNE_INTERVAL
from models.tasks import (
    InputTooLarge,
    StartBounds,
    StartsThrottled,
    StorageFull,
    TaskStatus,
    TaskView,
    TooManyTasks,
    enqueue,
    get_task,
    running_count,
)
from service.base import APIError
from service.signed import SignedHandler, SignedRequest

#: Body fields that are never task input: identity, roles, and the mode selector.
NOT_INPUT = frozenset({"user_id", "account_id", "stripe_roles", "mode"})


def _ts(value: float | None) -> int | None:
    return int(value) if value else None


def describe(view: TaskView) -> dict[str, Any]:
    return {"task_id": view.id, "name": view.name, "mode": view.mode, "status": view.status,
            "progress": view.progress, "note": view.note, "result": view.result,
            "error": view.error, "attempts": view.attempts, "created": _ts(view.created_at),
            "started": _ts(view.started_at), "finished": _ts(view.finished_at)}


class TooMany(APIError):
    """A 429 with its `Retry-After` seconds (None: no header)."""

    def __init__(self, message: str, retry_after: int | None, *, code: str | None = None,
                 reason_for_log: str | None = None) -> None:
        super().__init__(429, message, code=code, reason_for_log=reason_for_log)
        self.retry_after = retry_after


class TaskStartHandler(SignedHandler):
    single_use_signature = True

    async def handle(self, req: SignedRequest) -> Any:
        name = self.path_args[0]
        spec = self.registry.tasks.get(name)
        if spec is None:
            raise APIError(404, f"no task named {name!r}", code="unknown_task")
        mode = self._mode(req)
        fields = {k: req.body[k] for k in req.signed_fields - NOT_INPUT}
        config = self.config
        bounds = StartBounds(max_pending=config.task_max_pending,
                             per_minute=config.task_starts_per_minute,
                             stored_bytes=config.task_max_stored_bytes,
                             input_bytes=spec.max_input_bytes)
        try:
            view = await self.storage.run(enqueue, req.account_id, mode, name, fields,
                                          spec.attempts, bounds=bounds)
        except InputTooLarge as exc:
            raise APIError(413, f"the task's input is too large: {exc}",
                           code="input_too_large", reason_for_log=f"{name}: {exc}") from None
        except StartsThrottled as exc:
            raise TooMany("this account started too many tasks in the last minute; try again "
                          f"in {exc.retry_after} s", exc.retry_after,
                          reason_for_log=str(exc)) from None
        except TooManyTasks as exc:
            raise TooMany("too many unfinished tasks for this account; try again when some "
                          "have finished", 10, reason_for_log=str(exc)) from None
        except StorageFull as exc:
            raise TooMany("this account's tasks take all the storage allowed to them; old "
                          "tasks are deleted as they pass the retention period",
                          int(PRUNE_INTERVAL), code="quota_exceeded",
                          reason_for_log=str(exc)) from None
        worker = self.task_worker
        if worker is not None:
            worker.wake()
        self.write_json({"task_id": view.id, "name": name, "mode": mode,
                         "status": view.status}, status=202)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, TooMany) and exc.retry_after is not None:
            # set here: an error answer starts from cleared headers
            self.set_header("Retry-After", str(exc.retry_after))
        super().write_error(status_code, **kwargs)

    def _mode(self, req: SignedRequest) -> str:
        installed = [m for m in MODES
                     if self.installations.is_active(req.account_id, m)]
        wanted = req.body.get("mode") if "mode" in req.signed_fields else None
        if wanted is None:
            return installed[0]
        if wanted not in MODES:
            raise APIError(400, f"mode must be {MODES_TEXT}")
        if wanted not in installed:
            raise APIError(403, f"the app is not installed on this account in {wanted} mode",
                           code="not_installed")
        return wanted


class TaskStatusHandler(SignedHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        task_id = req.body.get("task_id")
        if not isinstance(task_id, str) or not task_id.startswith("task_") or len(task_id) > 40:
            raise APIError(400, "body needs a task_id (task_...)")
        view = await self.storage.run(get_task, task_id, req.account_id)
        if view is None:
            raise APIError(404, "no such task", reason_for_log=f"{task_id} not found for "
                           f"{req.account_id}")
        answer = describe(view)
        if view.status == TaskStatus.QUEUED:
            answer["note"] = await self._waiting(view)
        return answer

    async def _waiting(self, view: TaskView) -> str:
        if view.next_attempt_at > now():
            return f"waiting to retry (attempt {view.attempts + 1} of {view.max_attempts})"
        spec = self.registry.tasks.get(view.name)
        if spec is not None:
            busy = await self.storage.run(running_count, view.account_id, view.name)
            if busy >= spec.concurrency_per_account:
                return (f"waiting: {busy} {view.name} task(s) of this account running "
                        f"(limit {spec.concurrency_per_account})")
        waited = max(0, int(now() - view.next_attempt_at))
        return f"waiting for a free worker slot ({waited}s so far)"
