"""Repositories over `skipper.core.db`: tasks, the model registry, and events.

They are synchronous (SQLAlchemy sessions); async callers run them with `asyncio.to_thread`.
They return plain dataclasses, never ORM rows, so nothing leaks a session.
"""

from __future__ import annotations

import builtins
import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from skipper.core.db import Database, DeploymentRow, EventRow, ModelVersionRow, TaskRow, utcnow
from skipper.core.errors import NotFound

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone; every timestamp is written in UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    workflow: str
    status: str
    params: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    correlation_id: str
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, row: TaskRow) -> Task:
        return cls(
            task_id=row.id, workflow=row.workflow, status=row.status, params=row.params, progress=row.progress,
            result=row.result, error=row.error, attempts=row.attempts, correlation_id=row.correlation_id,
            created_at=_iso(row.created_at), updated_at=_iso(row.updated_at), started_at=_iso(row.started_at),
            finished_at=_iso(row.finished_at),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TaskRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, task_id: str, workflow: str, params: dict[str, Any], correlation_id: str) -> Task:
        with self._db.sessions.begin() as s:
            row = TaskRow(id=task_id, workflow=workflow, status="queued", params=params, correlation_id=correlation_id,
                          attempts=0)
            s.add(row)
            s.flush()
            return Task.of(row)

    def get(self, task_id: str) -> Task:
        with self._db.sessions() as s:
            return Task.of(self._row(s, task_id))

    def list(
        self, *, workflow: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Task], int]:
        query = select(TaskRow)
        if workflow:
            query = query.where(TaskRow.workflow == workflow)
        if status:
            query = query.where(TaskRow.status == status)
        with self._db.sessions() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(TaskRow.created_at.desc(), TaskRow.id).limit(limit).offset(offset))
            return [Task.of(r) for r in rows], total

    def claim(self, task_id: str) -> bool:
        """Mark a task running for a new attempt; False if it is finished or cancelled."""
        return self._unless_terminal(task_id, status="running", attempts=TaskRow.attempts + 1,
                                     started_at=func.coalesce(TaskRow.started_at, utcnow()))

    def progress(self, task_id: str, progress: dict[str, Any]) -> bool:
        with self._db.sessions.begin() as s:
            row = self._row(s, task_id, lock=True)
            if row.status != "running":
                return False
            row.progress = progress
            return True

    def finish(self, task_id: str, status: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> bool:
        """Move a task to a terminal status; False (and no change) if it already is terminal."""
        assert status in TERMINAL, status
        return self._unless_terminal(task_id, status=status, result=result, error=error, finished_at=utcnow())

    def _unless_terminal(self, task_id: str, **values: Any) -> bool:
        """Set `values` on a task that is not finished, in one conditional UPDATE; False if it is.

        One statement, not a read then a write: SQLite takes its write lock only at the write, so a
        cancel landing between a claim's read and its write was overwritten by "running" (and the
        other way round); a conditional UPDATE is atomic on SQLite and PostgreSQL alike.
        """
        with self._db.sessions.begin() as s:
            changed = s.execute(update(TaskRow).where(TaskRow.id == task_id, TaskRow.status.not_in(TERMINAL))
                                .values(**values).execution_options(synchronize_session=False))
            if changed.rowcount:  # type: ignore[attr-defined]
                return True
            self._row(s, task_id)  # NotFound when there is no such task
            return False

    @staticmethod
    def _row(s: Session, task_id: str, *, lock: bool = False) -> TaskRow:
        query = select(TaskRow).where(TaskRow.id == task_id)
        row = s.scalars(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"task {task_id!r} not found", details={"task_id": task_id})
        return row


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    version: int
    sha256: str
    size: int
    path: str
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    task_id: str | None
    created_at: str | None
    production: bool = False
    seq: int | None = None

    @classmethod
    def of(cls, row: ModelVersionRow, *, production: bool = False, seq: int | None = None) -> ModelVersion:
        return cls(row.model, row.version, row.sha256, row.size, row.path, row.metrics, row.meta, row.task_id,
                   _iso(row.created_at), production, seq)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    def announcement(self) -> dict[str, Any]:
        """What servers need to install this version (the `model.published` headers)."""
        return {"model": self.model, "version": self.version, "sha256": self.sha256, "size": self.size,
                "seq": self.seq, "metadata": self.metadata}


class ModelRegistry:
    """Every version of every model; the newest deployment of a model is its production version."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_version(self, *, model: str, sha256: str, size: int, path: str, metrics: dict[str, Any],
                    metadata: dict[str, Any], task_id: str | None, attempts: int = 5) -> tuple[ModelVersion, bool]:
        """Register the next version and make it production. Returns (version, created).

        Idempotent per task: a redelivered artifact of the same task returns the existing version.
        Two api replicas racing for a number collide on the unique constraint and retry.
        """
        for attempt in range(attempts):
            try:
                with self._db.sessions.begin() as s:
                    if task_id is not None:
                        existing = s.scalars(select(ModelVersionRow).where(ModelVersionRow.task_id == task_id)).first()
                        if existing is not None:
                            return self._with_seq(s, existing), False
                    current = s.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model == model))
                    row = ModelVersionRow(model=model, version=(current or 0) + 1, sha256=sha256, size=size, path=path,
                                          metrics=metrics, meta=metadata, task_id=task_id)
                    s.add(row)
                    s.flush()
                    deployment = DeploymentRow(model=model, version_id=row.id)
                    s.add(deployment)
                    s.flush()
                    return ModelVersion.of(row, production=True, seq=deployment.id), True
            except IntegrityError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def deploy(self, model: str, version: int) -> ModelVersion:
        """Make `version` production (a promotion or a rollback)."""
        with self._db.sessions.begin() as s:
            row = self._version_row(s, model, version)
            deployment = DeploymentRow(model=model, version_id=row.id)
            s.add(deployment)
            s.flush()
            return ModelVersion.of(row, production=True, seq=deployment.id)

    def get(self, model: str, version: int) -> ModelVersion:
        with self._db.sessions() as s:
            row = self._version_row(s, model, version)
            prod = self._production_ids(s, model)
            return ModelVersion.of(row, production=prod.get(model, (None, None))[0] == row.id)

    def versions(self, model: str) -> list[ModelVersion]:
        with self._db.sessions() as s:
            rows = s.scalars(select(ModelVersionRow).where(ModelVersionRow.model == model)
                             .order_by(ModelVersionRow.version)).all()
            if not rows:
                raise NotFound(f"model {model!r} has no versions", details={"model": model})
            prod_id, seq = self._production_ids(s, model).get(model, (None, None))
            return [ModelVersion.of(r, production=r.id == prod_id, seq=seq if r.id == prod_id else None) for r in rows]

    def production(self, model: str | None = None) -> list[ModelVersion]:
        """The production version of every model (or of one), with its deployment seq."""
        with self._db.sessions() as s:
            prod = self._production_ids(s, model)
            if not prod:
                return []
            rows = s.scalars(select(ModelVersionRow).where(ModelVersionRow.id.in_([v for v, _ in prod.values()])))
            return sorted((ModelVersion.of(r, production=True, seq=prod[r.model][1]) for r in rows),
                          key=lambda v: v.model)

    def models(self) -> list[dict[str, Any]]:
        with self._db.sessions() as s:
            counts = s.execute(select(ModelVersionRow.model, func.count(), func.max(ModelVersionRow.version))
                               .group_by(ModelVersionRow.model)).all()
        production = {v.model: v for v in self.production()}
        return [{"model": name, "versions": n, "latest_version": latest,
                 "production_version": production[name].version if name in production else None}
                for name, n, latest in sorted(counts)]

    @staticmethod
    def _production_ids(s: Session, model: str | None) -> dict[str, tuple[int, int]]:
        latest = select(DeploymentRow.model, func.max(DeploymentRow.id).label("seq")).group_by(DeploymentRow.model)
        if model is not None:
            latest = latest.where(DeploymentRow.model == model)
        sub = latest.subquery()
        rows = s.execute(select(DeploymentRow.model, DeploymentRow.version_id, DeploymentRow.id)
                         .join(sub, DeploymentRow.id == sub.c.seq)).all()
        return {m: (vid, seq) for m, vid, seq in rows}

    def _with_seq(self, s: Session, row: ModelVersionRow) -> ModelVersion:
        prod_id, seq = self._production_ids(s, row.model).get(row.model, (None, None))
        return ModelVersion.of(row, production=prod_id == row.id, seq=seq if prod_id == row.id else None)

    @staticmethod
    def _version_row(s: Session, model: str, version: int) -> ModelVersionRow:
        row = s.scalars(select(ModelVersionRow).where(ModelVersionRow.model == model,
                                                      ModelVersionRow.version == version)).first()
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}", details={"model": model, "version": version})
        return row


class EventRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, *, kind: str, source: str, task_id: str | None, correlation_id: str | None,
            fields: dict[str, Any], at: dt.datetime | None = None) -> None:
        with self._db.sessions.begin() as s:
            s.add(EventRow(kind=kind, source=source, task_id=task_id, correlation_id=correlation_id, fields=fields,
                           at=at or utcnow()))

    def list(self, *, task_id: str | None = None, kind: str | None = None, limit: int = 200,
             offset: int = 0) -> list[dict[str, Any]]:
        query = select(EventRow)
        if task_id:
            query = query.where(EventRow.task_id == task_id)
        if kind:
            query = query.where(EventRow.kind == kind)
        with self._db.sessions() as s:
            rows = s.scalars(query.order_by(EventRow.at, EventRow.id).limit(limit).offset(offset))
            return [_event_json(r) for r in rows]

    def after(self, last_id: int, *, upto: int, task_id: str | None = None, limit: int = 500) -> builtins.list[dict[str, Any]]:
        """Events with `last_id < id <= upto`, in id order (the order of an event stream), of one task or all."""
        query = select(EventRow).where(EventRow.id > last_id, EventRow.id <= upto)
        if task_id:
            query = query.where(EventRow.task_id == task_id)
        with self._db.sessions() as s:
            return [_event_json(r) for r in s.scalars(query.order_by(EventRow.id).limit(limit))]

    def ids_after(self, last_id: int, *, limit: int = 1000) -> builtins.list[int]:
        """The ids committed above `last_id`, ascending: where an event stream may safely advance to."""
        with self._db.sessions() as s:
            return list(s.scalars(select(EventRow.id).where(EventRow.id > last_id).order_by(EventRow.id).limit(limit)))

    def last_id(self) -> int:
        with self._db.sessions() as s:
            return int(s.scalar(select(func.max(EventRow.id))) or 0)

    def kinds(self, task_id: str, *, upto: int) -> set[str]:
        """The kinds of event a task has up to an id: whether its stream has told its end."""
        with self._db.sessions() as s:
            return set(s.scalars(select(EventRow.kind).where(EventRow.task_id == task_id, EventRow.id <= upto).distinct()))


def _event_json(r: EventRow) -> dict[str, Any]:
    return {"id": r.id, "at": _iso(r.at), "kind": r.kind, "source": r.source, "task_id": r.task_id,
            "correlation_id": r.correlation_id, "fields": r.fields}
