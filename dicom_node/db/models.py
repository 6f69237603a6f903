"""Database tables: the source of truth for peers, studies, instances, analyses and the outbox.

Columns holding DICOM attributes are named after their keyword. No patient name, ID or
birth date is stored: the spool file holds those; the database holds UIDs and routing facts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite (which drops the zone) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


UID = String(64)


class Base(DeclarativeBase):
    pass


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not complete yet
    COMPLETE = "complete"  # complete and routed for analysis, not yet handed to the broker
    QUEUED = "queued"  # handed to the analysis queue
    ANALYSING = "analysing"
    ANALYSED = "analysed"  # results built and placed in the outbox
    #: results built, but no destination to send them to: kept in the spool, said plainly
    UNDELIVERED = "undelivered"
    DONE = "done"  # results delivered (and HL7 sent, when configured)
    SKIPPED = "skipped"  # no routing rule matched; reason recorded
    FAILED = "failed"  # analysis refused the input; reason recorded


class AnalysisState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # the study re-opened; the next analysis is a new revision


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up after the configured attempts


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Peer(Base):
    """A remote application entity: a PACS that sends to us and/or receives our results."""

    __tablename__ = "peer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    #: Its DICOM (DIMSE) address; none for a peer reached over DICOMweb only.
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    #: Its DICOMweb base URL (the STOW-RS service is ``<url>/studies``); results go there
    #: instead of by C-STORE when set.
    dicomweb_url: Mapped[str | None] = mapped_column(String(1024))
    #: What the node presents to that URL: ``basic:<user>:<password>`` or ``bearer:<token>``.
    #: Kept as given (it must be sent); never printed, logged or audited.
    dicomweb_auth: Mapped[str | None] = mapped_column(Text)
    is_source: Mapped[bool] = mapped_column(Boolean, default=False)
    is_destination: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def roles(self) -> list[str]:
        return [
            r for r, on in (("source", self.is_source), ("destination", self.is_destination)) if on
        ]


class Credential(Base):
    """A secret a peer presents to the node's DICOMweb: HTTP basic (a user name and a
    password) or a bearer token (``gzx_<key_id>_<secret>``). Only its argon2 hash is kept."""

    __tablename__ = "credential"

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_id: Mapped[int] = mapped_column(ForeignKey("peer.id", ondelete="CASCADE"), index=True)
    #: basic, bearer
    kind: Mapped[str] = mapped_column(String(8))
    #: The user name of a basic credential; the key id of a bearer token.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    peer: Mapped[Peer] = relationship()


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    StudyInstanceUID: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), index=True)
    #: Bumped when a study re-opens after an analysis was queued; outputs carry it.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    Modality: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the association that carried the latest instance ended (release or abort).
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the study becomes complete if nothing else arrives.
    complete_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    routing_rule: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    analyses: Mapped[list[Analysis]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    SeriesInstanceUID: Mapped[str] = mapped_column(UID)
    SOPInstanceUID: Mapped[str] = mapped_column(UID, unique=True)
    SOPClassUID: Mapped[str] = mapped_column(UID)
    TransferSyntaxUID: Mapped[str] = mapped_column(UID)
    Modality: Mapped[str | None] = mapped_column(String(16))
    BodyPartExamined: Mapped[str | None] = mapped_column(String(16))
    ViewPosition: Mapped[str | None] = mapped_column(String(16))
    #: Path relative to the spool root.
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="instances")


class Analysis(Base):
    """One analysis of one revision of a study."""

    __tablename__ = "analysis"
    __table_args__ = (UniqueConstraint("study_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[AnalysisState] = mapped_column(_enum(AnalysisState), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    #: The model's domain gate on the analysed film: its score, and True when the film is
    #: unlike the training films (its results say so); None: not checked (no gate).
    domain_score: Mapped[float | None] = mapped_column(Float)
    out_of_domain: Mapped[bool | None] = mapped_column(Boolean)

    study: Mapped[Study] = relationship(back_populates="analyses")


class StepOutcome(StrEnum):
    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class Step(Base):
    """One step of an analysis (load, select, predict, build, store, route, deliver, notify)
    with its start, end and outcome: what `gazex status` and the metrics read."""

    __tablename__ = "step"

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[StepOutcome] = mapped_column(_enum(StepOutcome))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[str | None] = mapped_column(Text)


class Output(Base):
    """A DICOM object the analysis produced, stored in the spool."""

    __tablename__ = "output"
    __table_args__ = (UniqueConstraint("analysis_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    SOPInstanceUID: Mapped[str] = mapped_column(UID, unique=True)
    SOPClassUID: Mapped[str] = mapped_column(UID)
    SeriesInstanceUID: Mapped[str] = mapped_column(UID)
    #: Path relative to the spool root.
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"  # ACK AA
    ERROR = "error"  # ACK AE: the receiver had a problem; retried
    REJECTED = "rejected"  # ACK AR: not retried
    FAILED = "failed"  # gave up after retries


class Notification(Base):
    """One HL7 ORU^R01 for one analysis, with the ACK that came back."""

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), unique=True
    )
    control_id: Mapped[str] = mapped_column(String(20))
    state: Mapped[NotificationState] = mapped_column(_enum(NotificationState), index=True)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxItem(Base):
    """One object to deliver to one destination, with its retry state."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("SOPInstanceUID", "peer_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_id: Mapped[int] = mapped_column(ForeignKey("peer.id", ondelete="CASCADE"), index=True)
    #: The analysis whose output this is (none for objects sent by hand).
    analysis_id: Mapped[int | None] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), index=True
    )
    SOPInstanceUID: Mapped[str] = mapped_column(UID)
    SOPClassUID: Mapped[str] = mapped_column(UID)
    #: Absolute path of the file to send.
    path: Mapped[str] = mapped_column(String(1024))
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    peer: Mapped[Peer] = relationship()


class AuditEvent(Base):
    """One line of the audit trail (append-only; also written as JSON lines).

    Who talked to the node and what was done: associations, studies received and complete,
    results sent, configuration changes. UIDs, AE titles and addresses only: never a
    patient name or ID.
    """

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: association, study, results, config
    kind: Mapped[str] = mapped_column(String(16), index=True)
    #: accepted, rejected, released, aborted; received, reopened, complete, skipped;
    #: sent, failed; peer-add, peer-edit, peer-remove
    action: Mapped[str] = mapped_column(String(32))
    #: The remote AE the event concerns: the calling AE, the destination, the edited peer.
    ae_title: Mapped[str | None] = mapped_column(String(16), index=True)
    #: host:port of the remote AE.
    address: Mapped[str | None] = mapped_column(String(300))
    #: The OS user who made a configuration change (or who runs the node).
    actor: Mapped[str | None] = mapped_column(String(64))
    #: Short id of the association (as in the logs).
    association: Mapped[str | None] = mapped_column(String(16))
    StudyInstanceUID: Mapped[str | None] = mapped_column(UID, index=True)
    SOPInstanceUID: Mapped[str | None] = mapped_column(UID)
    #: Why (a rejection reason, a routing decision) or what changed.
    detail: Mapped[str | None] = mapped_column(Text)


class User(Base):
    """An account of the review page (``/review``): a radiologist or an admin. Only the
    password's argon2id hash is kept; a disabled account cannot log in."""

    __tablename__ = "review_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: radiologist, admin
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A logged-in browser of the review page. The cookie holds a random token; only its
    SHA-256 (hex) is kept, as the id, so a copy of the database opens no session."""

    __tablename__ = "web_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("review_user.id", ondelete="CASCADE"), index=True
    )
    #: What every state-changing request must echo (header X-CSRF-Token or field csrf).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The absolute end of the session (the idle timeout ends it earlier).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: host:port the login came from.
    address: Mapped[str | None] = mapped_column(String(300))

    user: Mapped[User] = relationship()


class ReviewState(StrEnum):
    PENDING = "pending"  # signed; the verified SR is being built
    BUILT = "built"  # the verified SR is in the spool and the outbox
    FAILED = "failed"  # the verified SR could not be built (the reason is kept)


class SignedReview(Base):
    """A radiologist's signature on one analysis: the decisions per finding, one revision
    per signature (1, 2, ... for each analysis), and what came of it (the verified SR
    revision, its HL7 ORU^R01 with the ACK). The decisions hold finding codes, reasons and
    boxes only, never patient data."""

    __tablename__ = "review"
    __table_args__ = (UniqueConstraint("analysis_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int] = mapped_column(Integer)
    #: The signer: always the logged-in user of the request that signed.
    user_id: Mapped[int] = mapped_column(ForeignKey("review_user.id"), index=True)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: JSON: {"decisions": [{finding, meaning, decision, reason?, box?}], "added": [...]}.
    decisions: Mapped[str] = mapped_column(Text)
    state: Mapped[ReviewState] = mapped_column(_enum(ReviewState), index=True)
    #: The verified SR revision, once built.
    SOPInstanceUID: Mapped[str | None] = mapped_column(UID)
    #: MSH-10 of its ORU^R01 (status F, or C from revision 2), and what came back.
    control_id: Mapped[str | None] = mapped_column(String(20))
    hl7_state: Mapped[NotificationState | None] = mapped_column(_enum(NotificationState))
    ack_code: Mapped[str | None] = mapped_column(String(2))
    error: Mapped[str | None] = mapped_column(Text)
    built_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
