"""Processes that serve this database, as each last said it was alive.

Every server process writes its heartbeat (`heartbeat`, an upsert of one row) every
`HEARTBEAT_SECONDS`; the status page lists the processes seen in the last minute (`seen_since`),
and retention deletes rows not seen for a day. Several replicas share the table on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from models.base import BaseModel, now

HEARTBEAT_SECONDS = 15.0


class Replica(BaseModel):
    name = pw.CharField(max_length=128, primary_key=True)  # host:pid
    host = pw.CharField(max_length=255)
    pid = pw.IntegerField()
    version = pw.CharField(max_length=64)
    started_at = pw.DoubleField()
    seen_at = pw.DoubleField(index=True)


def heartbeat(name: str, host: str, pid: int, version: str, started_at: float) -> None:
    """Runs in a database thread: this process is alive now."""
    Replica.insert(name=name, host=host, pid=pid, version=version, started_at=started_at,
                   seen_at=now()).on_conflict(
        conflict_target=[Replica.name],
        preserve=[Replica.host, Replica.pid, Replica.version, Replica.started_at,
                  Replica.seen_at]).execute()


def seen_since(t: float) -> list[dict[str, Any]]:
    """The processes seen at `t` or later, most recently started first."""
    query = (Replica.select(Replica.name, Replica.host, Replica.pid, Replica.version,
                            Replica.started_at, Replica.seen_at)
             .where(Replica.seen_at >= t).order_by(Replica.started_at.desc()))
    return list(query.dicts())
