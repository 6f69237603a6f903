"""What every DICOMweb route is given: built once by the node, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from dicom_node.audit import AuditLog
from dicom_node.completion import CompletionTracker
from dicom_node.dicomweb.catalog import Catalog
from dicom_node.metrics import Metrics
from dicom_node.peers import PeerInfo
from dicom_node.receiver import Receiver
from dicom_node.settings import Settings
from dicom_node.spool import Spool

#: The calling AE of anonymous requests (only when ``dicomweb.allow_anonymous``).
ANONYMOUS_AE = "DICOMWEB"


@dataclass(frozen=True)
class DicomWebContext:
    settings: Settings
    sessions: sessionmaker[Session]
    spool: Spool
    receiver: Receiver
    completion: CompletionTracker
    metrics: Metrics
    audit: AuditLog | None = None
    #: What is stored, shared by search and retrieve (one header cache).
    catalog: Catalog = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog", Catalog(self.sessions, self.spool))


def request_peer(request: Request) -> PeerInfo | None:
    """The peer whose credential the request carried (set by ``auth``); None: anonymous."""
    peer: PeerInfo | None = getattr(request.state, "peer", None)
    return peer


def calling_ae(request: Request) -> str:
    """The AE title a DICOMweb request acts as: its peer's, as a C-STORE's calling AE is;
    routing rules (``calling_aes``) and "results go back home" read it the same way."""
    peer = request_peer(request)
    return peer.ae_title if peer is not None else ANONYMOUS_AE


def request_actor(request: Request) -> str | None:
    """The signed-in person a front end authenticated for this request (the review page's
    session guard names its user in ``request.state.actor``), for the audit; None when the
    request acts only as its peer."""
    actor: str | None = getattr(request.state, "actor", None)
    return actor
