"""pynetdicom event handlers of the SCP.

The C-STORE handler makes the data durable and answers; it decodes no pixels, runs no
model and makes no network call, because the sender waits until it returns. Errors are
translated to DIMSE statuses here and only here.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta

from dicom_node.audit import AuditLog
from dicom_node.completion import CompletionTracker
from dicom_node.errors import CannotUnderstand, DataSetMismatch, OutOfResources, StoreRejected
from dicom_node.logs import bind, bind_thread
from dicom_node.metrics import Metrics
from dicom_node.receiver import ReceivedInstance, Receiver, StoreOutcome
from dicom_node.scu import no_delay
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
_PIXEL_DATA = BaseTag(0x7FE00010)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def describe(
    ds: Dataset, context_sop_class: str | None, request_sop_instance: str
) -> ReceivedInstance:
    """Check a received data set against its request; raise StoreRejected when it does not fit."""
    sop_class = _text(ds, "SOPClassUID")
    sop_instance = _text(ds, "SOPInstanceUID")
    if sop_class != context_sop_class:
        raise DataSetMismatch("SOP Class UID of the data set differs from the presentation context")
    if sop_instance != request_sop_instance:
        raise DataSetMismatch("SOP Instance UID of the data set differs from the request")
    study = _text(ds, "StudyInstanceUID")
    series = _text(ds, "SeriesInstanceUID")
    if not study or not series:
        raise DataSetMismatch("data set lacks Study or Series Instance UID")
    return ReceivedInstance(
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=sop_instance,
        SOPClassUID=sop_class,
        TransferSyntaxUID="",
        Modality=_text(ds, "Modality").upper(),
        BodyPartExamined=_text(ds, "BodyPartExamined").upper(),
        ViewPosition=_text(ds, "ViewPosition").upper(),
    )


class StoreSCPHandlers:
    """The handlers, built once in server.py with their dependencies."""

    def __init__(
        self,
        receiver: Receiver,
        completion: CompletionTracker,
        *,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        refusal: Callable[[], str | None] | None = None,
    ) -> None:
        self._receiver = receiver
        self._completion = completion
        self._metrics = metrics if metrics is not None else Metrics()
        self._audit = audit
        #: Why this thread's association request was refused for lack of spool space.
        self._refusal = refusal
        self._ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._ids_lock = threading.Lock()

    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_STORE, self._bound(self.on_c_store)),
            (evt.EVT_C_ECHO, self._bound(self.on_c_echo)),
            (evt.EVT_ACCEPTED, self._bound(self.on_accepted)),
            (evt.EVT_REJECTED, self._bound(self.on_rejected)),
            (evt.EVT_RELEASED, self._bound(self.on_ended)),
            (evt.EVT_ABORTED, self._bound(self.on_ended)),
        ]

    def association_id(self, assoc: Any) -> str:
        """A short random id of an association, the same in its log lines and audit rows."""
        with self._ids_lock:
            ident = self._ids.get(assoc)
            if ident is None:
                ident = self._ids[assoc] = uuid.uuid4().hex[:8]
            return ident

    def _bound(self, handler: Callable[[evt.Event], Any]) -> Callable[[evt.Event], Any]:
        """``handler`` with the association id bound to every line it logs."""

        def _with_context(event: evt.Event) -> Any:
            with bind(association=self.association_id(event.assoc)):
                return handler(event)

        return _with_context

    def _audit_association(self, assoc: Any, action: str, detail: str | None = None) -> None:
        if self._audit is not None:
            self._audit.record(
                "association",
                action,
                ae_title=assoc.requestor.ae_title,
                address=f"{assoc.requestor.address}:{assoc.requestor.port}",
                detail=detail,
            )

    def on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received, in the association's own thread: every line logged in
        that thread from now on (pynetdicom's too) carries the association id."""
        bind_thread(association=self.association_id(event.assoc))

    def on_c_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        logger.info(
            "association accepted: calling %s from %s:%s, %d context(s)",
            assoc.requestor.ae_title,
            assoc.requestor.address,
            assoc.requestor.port,
            len(assoc.accepted_contexts),
        )
        self._metrics.association("accepted")
        self._audit_association(
            assoc, "accepted", f"{len(assoc.accepted_contexts)} presentation context(s)"
        )

    def on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        called = assoc.requestor.primitive.called_ae_title if assoc.requestor.primitive else ""
        refusal = self._refusal() if self._refusal is not None else None
        if refusal is not None:
            reason = f"{refusal}; answered transient (local limit exceeded): retry later"
        elif assoc.ae.require_called_aet and called != assoc.acceptor.ae_title:
            reason = f"called AE title {called!r} is not ours"
        elif assoc.ae.require_calling_aet and calling not in assoc.ae.require_calling_aet:
            reason = "calling AE title not recognised (not an enabled source peer)"
        else:
            reason = "maximum number of associations reached"
        logger.warning(
            "association rejected: calling %s from %s: %s",
            calling,
            assoc.requestor.address,
            reason,
        )
        self._metrics.association("rejected")
        self._audit_association(assoc, "rejected", reason)

    def on_ended(self, event: evt.Event) -> None:
        assoc = event.assoc
        ended = "aborted" if event.event is evt.EVT_ABORTED else "released"
        logger.info("association %s: calling %s", ended, assoc.requestor.ae_title)
        self._metrics.association("aborted" if event.event is evt.EVT_ABORTED else "released")
        self._audit_association(assoc, ended)
        try:
            self._completion.association_ended(id(assoc))
        except Exception:
            # Studies stay receiving and the force-complete ceiling still completes them.
            logger.exception("could not start the quiet period after association end")

    def on_c_store(self, event: evt.Event) -> int:
        assoc = event.assoc
        request = cast(C_STORE, event.request)
        stream = cast(BytesIO, request.DataSet)
        try:
            try:
                instance = describe(
                    read_header(event, stream),
                    event.context.abstract_syntax,
                    str(request.AffectedSOPInstanceUID),
                )
            except StoreRejected:
                raise
            except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
                raise CannotUnderstand(f"data set cannot be parsed ({type(exc).__name__})") from exc
            instance = ReceivedInstance(
                **{**vars(instance), "TransferSyntaxUID": event.context.transfer_syntax}
            )
            # Stored as received: our file meta, then the data set bytes untouched.
            meta = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
            with stream.getbuffer() as body, bind(study=short_hash(instance.StudyInstanceUID)):
                size = len(meta) + len(body)
                outcome = self._receiver.store(
                    (meta, body), instance, assoc.requestor.ae_title, id(assoc)
                )
        except StoreRejected as exc:
            logger.warning(
                "C-STORE refused with 0x%04X from %s: %s", exc.status, assoc.requestor.ae_title, exc
            )
            return exc.status
        except OutOfResources as exc:
            logger.error("C-STORE refused with 0xA700 from %s: %s", assoc.requestor.ae_title, exc)
            return exc.status
        if outcome is not StoreOutcome.DUPLICATE:
            logger.debug(
                "instance %s %s (%d bytes)",
                short_hash(instance.SOPInstanceUID),
                outcome.value,
                size,
            )
        self._metrics.instance_received(size)
        return SUCCESS


def _before_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag >= _PIXEL_DATA)


def read_header(event: evt.Event, stream: BytesIO) -> Dataset:
    """The data set up to its pixel data: all the handler needs, without copying pixels."""
    syntax = UID(event.context.transfer_syntax)
    if syntax.is_deflated:
        return event.dataset  # inflating needs the whole stream
    stream.seek(0)
    try:
        return read_dataset(
            stream, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_before_pixel_data
        )
    finally:
        stream.seek(0)
