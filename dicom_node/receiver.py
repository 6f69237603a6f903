"""Make a received instance durable and index it; nothing else happens on this path.

The C-STORE handler calls ``Receiver.store`` and answers with what it returns or raises:
the file is on disk (fsynced) and its row committed before success is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import lifecycle
from dicom_node.audit import AuditLog
from dicom_node.completion import CompletionTracker
from dicom_node.db.models import Instance, Study, StudyState, utcnow
from dicom_node.errors import OutOfResources
from dicom_node.settings import Settings
from dicom_node.spool import Spool, short_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """What the handler learnt from the data set (UIDs and routing facts, no PHI)."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    TransferSyntaxUID: str
    Modality: str
    BodyPartExamined: str
    ViewPosition: str


class StoreOutcome(Enum):
    STORED = "stored"
    REPLACED = "replaced"  # same SOP Instance UID, different bytes
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing to do


class Receiver:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        spool: Spool,
        completion: CompletionTracker,
        *,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._spool = spool
        self._completion = completion
        #: Study received / re-opened rows go in the instance's own transaction.
        self._audit = audit

    def store(
        self,
        data: Sequence[bytes | memoryview],
        instance: ReceivedInstance,
        calling_ae: str,
        association: int,
    ) -> StoreOutcome:
        """Write ``data`` (file meta, then the data set as received) durably, index it, and
        report what happened.

        Raises OutOfResources (disk full, database unavailable) with nothing half-written.
        """
        relative = self._spool.relative_path(
            instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID
        )
        previous = self._previous(instance)
        if previous is not None and self._spool.same_bytes(previous.path, *data):
            logger.info("instance %s resent with identical bytes: no-op", _tag(instance))
            return StoreOutcome.DUPLICATE

        self._spool.write(relative, *data)
        size = sum(len(memoryview(part).cast("B")) for part in data)
        return self._commit(instance, relative, size, calling_ae, association, previous)

    def store_file(
        self,
        staged: Path,
        instance: ReceivedInstance,
        calling_ae: str,
        association: int,
    ) -> StoreOutcome:
        """As ``store``, for a complete file already written to ``staged`` (from
        ``Spool.staging_file``, e.g. a STOW-RS part): it is adopted by rename, never copied.

        ``staged`` is gone once this returns STORED or REPLACED; on DUPLICATE or an error
        it is left where it is, for the caller to remove. Raises OutOfResources with
        nothing half-written, as ``store`` does.
        """
        relative = self._spool.relative_path(
            instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID
        )
        previous = self._previous(instance)
        if previous is not None and self._spool.same_file(previous.path, staged):
            logger.info("instance %s resent with identical bytes: no-op", _tag(instance))
            return StoreOutcome.DUPLICATE
        try:
            size = staged.stat().st_size
        except OSError as exc:
            raise OutOfResources(f"staged file unreadable: {exc.strerror}") from exc
        self._spool.adopt(staged, relative)
        return self._commit(instance, relative, size, calling_ae, association, previous)

    def _previous(self, instance: ReceivedInstance) -> Instance | None:
        """The row of an earlier copy of this SOP instance, if any."""
        try:
            with self._sessions() as session:
                return session.scalar(
                    select(Instance).where(Instance.SOPInstanceUID == instance.SOPInstanceUID)
                )
        except SQLAlchemyError as exc:
            raise OutOfResources("database unavailable") from exc

    def _commit(
        self,
        instance: ReceivedInstance,
        relative: Path,
        size: int,
        calling_ae: str,
        association: int,
        previous: Instance | None,
    ) -> StoreOutcome:
        """Index the file just made durable at ``relative``; on a database failure remove
        it again (unless it replaced an earlier copy) and raise OutOfResources."""
        try:
            study_id = self._index(instance, relative.as_posix(), size, calling_ae)
        except SQLAlchemyError as exc:
            if previous is None:
                self._spool.remove(relative)
            raise OutOfResources("database unavailable") from exc
        if previous is not None and previous.path != relative.as_posix():
            self._spool.remove(previous.path)
        self._completion.instance_stored(association, study_id)
        return StoreOutcome.STORED if previous is None else StoreOutcome.REPLACED

    def _index(self, instance: ReceivedInstance, path: str, size: int, calling_ae: str) -> int:
        # Two associations may create the same study at once: the loser retries and joins.
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    return self._index_in(session, instance, path, size, calling_ae)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _index_in(
        self,
        session: Session,
        instance: ReceivedInstance,
        path: str,
        size: int,
        calling_ae: str,
    ) -> int:
        now = utcnow()
        force_due = now + timedelta(seconds=self._settings.completion.force_complete_after)
        study = session.scalar(
            select(Study)
            .where(Study.StudyInstanceUID == instance.StudyInstanceUID)
            .with_for_update()
        )
        if study is None:
            study = lifecycle.new_study(instance.StudyInstanceUID, instance.Modality or None, now)
            session.add(study)
            session.flush()
            logger.info(
                "study %s receiving (from %s)", short_hash(instance.StudyInstanceUID), calling_ae
            )
            self._audit_study(session, "received", study, calling_ae, None)
        elif study.state is not StudyState.RECEIVING:
            self._audit_study(session, "reopened", study, calling_ae, f"was {study.state.value}")
        lifecycle.receiving(session, study)
        study.calling_ae = calling_ae
        study.last_received_at = now
        study.complete_due_at = force_due

        row = session.scalar(
            select(Instance).where(Instance.SOPInstanceUID == instance.SOPInstanceUID)
        )
        if row is None:
            row = Instance(SOPInstanceUID=instance.SOPInstanceUID)
            session.add(row)
        row.study_id = study.id
        row.SeriesInstanceUID = instance.SeriesInstanceUID
        row.SOPClassUID = instance.SOPClassUID
        row.TransferSyntaxUID = instance.TransferSyntaxUID
        row.Modality = instance.Modality or None
        row.BodyPartExamined = instance.BodyPartExamined or None
        row.ViewPosition = instance.ViewPosition or None
        row.path = path
        row.size = size
        row.calling_ae = calling_ae
        row.received_at = now
        session.flush()
        return study.id

    def _audit_study(
        self, session: Session, action: str, study: Study, calling_ae: str, detail: str | None
    ) -> None:
        if self._audit is not None:
            self._audit.add(
                session,
                "study",
                action,
                ae_title=calling_ae,
                StudyInstanceUID=study.StudyInstanceUID,
                detail=detail,
            )


def _tag(instance: ReceivedInstance) -> str:
    return short_hash(instance.SOPInstanceUID)
