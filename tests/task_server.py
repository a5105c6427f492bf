"""`python tests/task_server.py`: the real server (`run.py serve`) with one more task,
`record_run`, for tests/test_tasks_processes.py.

`record_run` notes its run in the folder `TASK_RUN_DIR`: while it runs, a file named after the
task in `active/`; when it ends, one line in `runs.log` (task id, account, pid, start, end on
the monotonic clock, which all processes of the machine share). It holds until `TASK_BARRIER`
runs are active at once across all the processes (then writes `released`, and every run after
it goes straight through), or 15 s passed: a test reaching the barrier knows the processes ran
tasks side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.main import main  # noqa: E402
from jobs.registry import Registry  # noqa: E402
from jobs.tasks import TaskContext, task  # noqa: E402

RUN_DIR = os.environ.get("TASK_RUN_DIR", ".")
BARRIER = int(os.environ.get("TASK_BARRIER", "1"))


@task(concurrency_per_account=1)
async def record_run(ctx: TaskContext) -> dict[str, int]:
    active = os.path.join(RUN_DIR, "active")
    released = os.path.join(RUN_DIR, "released")
    start = time.monotonic()
    marker = os.path.join(active, ctx.task_id)
    with open(marker, "w"):
        pass
    try:
        while not os.path.exists(released) and time.monotonic() - start < 15:
            if len(os.listdir(active)) >= BARRIER:
                with open(released, "w"):
                    pass
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.01)
    finally:
        os.remove(marker)
    end = time.monotonic()
    line = json.dumps([ctx.task_id, ctx.account_id, os.getpid(), start, end]) + "\n"
    with open(os.path.join(RUN_DIR, "runs.log"), "a") as f:  # one short append per run
        f.write(line)
    return {"pid": os.getpid()}


_from_modules = Registry.from_modules.__func__  # type: ignore[attr-defined]


def _from_modules_with_record_run(cls: type[Registry], modules: Any) -> Registry:
    registry: Registry = _from_modules(cls, modules)
    registry.tasks["record_run"] = record_run.__task_spec__  # type: ignore[attr-defined]
    return registry


Registry.from_modules = classmethod(  # type: ignore[method-assign,assignment]
    _from_modules_with_record_run)

if __name__ == "__main__":
    os.makedirs(os.path.join(RUN_DIR, "active"), exist_ok=True)
    sys.exit(main(["serve"]))
