"""Assemble and run the node: database, spool, completion loop, delivery loop and the SCP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import BaseRoute

from dicom_node import db
from dicom_node.audit import AuditLog, os_user
from dicom_node.completion import CompletionTracker, DispatchFunc
from dicom_node.dicomweb import qido, wado
from dicom_node.dicomweb.context import DicomWebContext
from dicom_node.dicomweb.routes import dicomweb_mount
from dicom_node.errors import port_error
from dicom_node.metrics import Metrics, QueueDepthCollector, StudiesCollector
from dicom_node.outbox import Outbox
from dicom_node.peers import PeerDirectory
from dicom_node.receiver import Receiver
from dicom_node.review.web import ReviewContext, hand_on_pending, review_routes
from dicom_node.scp.handlers import StoreSCPHandlers
from dicom_node.settings import Settings
from dicom_node.spool import Spool, space_shortfall
from dicom_node.tls import server_ssl_context
from dicom_node.web.server import WebServer, start_http

logger = logging.getLogger(__name__)


class AcceptorContext(PresentationContext):
    """A supported presentation context whose per-association copy is cheap.

    pynetdicom deep-copies the acceptor's contexts for every association, and ours are
    every storage SOP class and Verification with 45 transfer syntaxes each: 44 ms of
    deepcopy per association, measured. A context holds scalars and one list of immutable
    UIDs, so a shallow copy with a list of its own is the same copy.
    """

    @classmethod
    def like(cls, context: PresentationContext) -> AcceptorContext:
        clone = cls()
        clone.__dict__.update(context.__dict__)
        clone._transfer_syntax = list(context.transfer_syntax)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> AcceptorContext:
        return AcceptorContext.like(self)


class NodeAE(AE):
    """An AE whose allowed calling AE titles are read live from the peer table.

    pynetdicom reads ``require_calling_aet`` once per association request, so edits made
    with ``gazex ae`` apply to the next association without a restart.
    """

    def __init__(
        self,
        ae_title: str,
        peers: PeerDirectory,
        accept_any: bool,
        admission: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(ae_title)
        self._peers = peers
        self._accept_any = accept_any
        #: Returns why new associations must be refused now (spool nearly full), or None.
        self._admission = admission
        self._refusal = threading.local()
        self._refusing = False

    @property
    def maximum_associations(self) -> int:
        """0 while ``admission`` gives a reason to refuse: pynetdicom then answers every
        new association with A-ASSOCIATE-RJ (transient, local limit exceeded), so the PACS
        retries later instead of failing mid-transfer. Read once per association request,
        in that association's thread."""
        reason = self._admission() if self._admission is not None else None
        self._refusal.reason = reason
        if (reason is not None) != self._refusing:
            self._refusing = reason is not None
            if reason is not None:
                logger.warning("refusing new associations: %s", reason)
            else:
                logger.info("accepting associations again")
        if reason is not None:
            return 0
        return int(AE.maximum_associations.fget(self))  # type: ignore[attr-defined]

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)  # type: ignore[attr-defined]

    def refusal(self) -> str | None:
        """Why the association request handled in this thread was refused, if it was for
        lack of spool space (set when pynetdicom read ``maximum_associations``)."""
        reason: str | None = getattr(self._refusal, "reason", None)
        return reason

    @property
    def require_calling_aet(self) -> list[str]:
        if self._accept_any:
            return []
        # pynetdicom reads an empty list as "accept anyone"; a list holding only an empty
        # title matches no caller, which is right when no source peer is enabled.
        return self._peers.source_ae_titles() or [""]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("calling AE titles come from the peer table (gazex ae)")


@dataclass
class Node:
    """Everything one node process runs. Build with ``Node.build``; ``start``; ``stop``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    spool: Spool
    peers: PeerDirectory
    completion: CompletionTracker
    outbox: Outbox
    ae: NodeAE
    metrics: Metrics = field(default_factory=Metrics)
    audit: AuditLog | None = None
    http: WebServer | None = None
    _server: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _outbox_thread: threading.Thread | None = None
    #: Hands a radiologist's signature (review id) to the workers.
    review_dispatch: DispatchFunc | None = None

    @classmethod
    def build(
        cls, settings: Settings, dispatch: DispatchFunc, review_dispatch: DispatchFunc | None = None
    ) -> Node:
        engine = db.make_engine(settings.database_url, echo=settings.database.echo)
        sessions = db.make_sessionmaker(engine)
        spool = Spool(settings.spool_path)
        metrics = Metrics()
        metrics.add_collector(StudiesCollector(sessions))
        metrics.add_collector(QueueDepthCollector(settings))
        audit = AuditLog(sessions, settings.audit_path)
        peers = PeerDirectory(sessions, audit=audit)
        completion = CompletionTracker(settings, sessions, dispatch, metrics=metrics, audit=audit)
        outbox = Outbox(settings, sessions, metrics=metrics, audit=audit)
        min_free_mb = settings.spool.min_free_mb
        ae = NodeAE(
            settings.node.ae_title,
            peers,
            settings.node.accept_any_calling_ae,
            admission=lambda: space_shortfall(spool.root, min_free_mb),
        )
        ae.require_called_aet = True
        ae.maximum_associations = settings.node.max_associations
        ae.acse_timeout = settings.node.acse_timeout
        ae.dimse_timeout = settings.node.dimse_timeout
        ae.network_timeout = settings.node.network_timeout
        ae.maximum_pdu_size = settings.node.max_pdu
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return cls(
            settings,
            engine,
            sessions,
            spool,
            peers,
            completion,
            outbox,
            ae,
            metrics,
            audit,
            review_dispatch=review_dispatch,
        )

    def start(self) -> tuple[str, int]:
        """Start the loops and the SCP; returns the address it listens on."""
        receiver = Receiver(
            self.settings, self.sessions, self.spool, self.completion, audit=self.audit
        )
        self.spool.sweep_partials()
        self.http = start_http(
            self.settings,
            self.engine,
            self.metrics,
            routes=[*self._dicomweb(receiver), *self._review(receiver)],
            tls=self.settings.tls.enabled,
        )
        self.peers.seed(self.settings.peers, actor=f"{os_user()} (settings file)")
        self.completion.start()
        self._outbox_thread = threading.Thread(
            target=self.outbox.run, args=(self._stop,), name="gazex-outbox", daemon=True
        )
        self._outbox_thread.start()
        handlers = StoreSCPHandlers(
            receiver,
            self.completion,
            metrics=self.metrics,
            audit=self.audit,
            refusal=self.ae.refusal,
        )
        node = self.settings.node
        try:
            self._server = self.ae.start_server(
                (node.bind, node.port),
                block=False,
                contexts=[AcceptorContext.like(cx) for cx in self.ae.supported_contexts],
                evt_handlers=handlers.handlers(),
                ssl_context=server_ssl_context(self.settings.tls),
            )
        except OSError as exc:
            raise port_error("node.port", node.bind, node.port, exc) from None
        host, port = self._server.server_address[:2]
        logger.info(
            "%s listening on %s:%d%s",
            self.settings.node.ae_title,
            host,
            port,
            " (TLS)" if self.settings.tls.enabled else "",
        )
        return host, port

    def _dicomweb(self, receiver: Receiver) -> list[BaseRoute]:
        """The DICOMweb services on the HTTP port, when ``dicomweb.enabled``."""
        if not self.settings.dicomweb.enabled:
            return []
        context = DicomWebContext(
            self.settings,
            self.sessions,
            self.spool,
            receiver,
            self.completion,
            self.metrics,
            self.audit,
        )
        return [dicomweb_mount(context)]

    def _review(self, receiver: Receiver) -> list[BaseRoute]:
        """The radiologist's review page (/review): login, sessions, worklist, signing, and
        the read-only DICOMweb (QIDO-RS, WADO-RS) at /review/dicom-web behind its session,
        whether or not ``dicomweb.enabled`` opens it to peers."""
        base_path = "/review/dicom-web"  # what the answers' URLs (BulkDataURI, ...) name
        images = DicomWebContext(
            self.settings.model_copy(
                update={
                    "dicomweb": self.settings.dicomweb.model_copy(update={"base_path": base_path})
                }
            ),
            self.sessions,
            self.spool,
            receiver,
            self.completion,
            self.metrics,
            self.audit,
        )
        context = ReviewContext(
            self.settings.review, self.sessions, self.spool, self.audit, self.review_dispatch
        )
        hand_on_pending(context)
        return review_routes(context, image_routes=[*qido.routes(images), *wado.routes(images)])

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self.completion.stop()
        if self._outbox_thread is not None:
            self._outbox_thread.join(timeout=30)
        if self.http is not None:
            self.http.stop()
        self.engine.dispose()
