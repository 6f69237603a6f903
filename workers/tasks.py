"""The Celery app and its tasks: thin wrappers over the stages (``analysis``,
``notification``), like web views over a service layer.

The reliability contract lives once, on the base task, not in each decorator: late acks (a
task whose worker dies is delivered again), soft and hard time limits (from the settings,
``workers.worker``), automatic retries with exponential backoff for transient errors
(database, network, broker, HL7 receiver), and ``Reject`` without requeue for poison input,
which the stage records as failed first. Task names come from ``dicom_node.dispatch``: the
node enqueues by name and never imports this module.

Delivery has no task: the outbox (``dicom_node.outbox``) owns it. The analysis only adds
the outbox rows, in the same transaction that records its results.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError

from dicom_node.dispatch import ANALYZE_STUDY, NOTIFY, NOTIFY_REVIEW, SIGN_REVIEW
from dicom_node.errors import (
    AnalysisRefused,
    DeliveryError,
    HL7BuildError,
    MLLPTransportError,
    OutOfResources,
)
from dicom_node.logs import bind
from workers import analysis, notification, review
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

#: Errors worth retrying: the database, a peer or the disk may be back soon.
TRANSIENT = (OperationalError, DeliveryError, OutOfResources, MLLPTransportError, ConnectionError)
#: Input no retry will change: rejected, never redelivered.
POISON = (AnalysisRefused, HL7BuildError)
#: What records a task's final failure, by task name.
GIVE_UP = {
    NOTIFY: notification.give_up,
    SIGN_REVIEW: review.give_up,
    NOTIFY_REVIEW: notification.give_up_review,
}


class GazexTask(Task):  # type: ignore[misc]
    """Base of every task: the reliability options and the error translation.

    ``max_retries`` is the default; ``workers.worker.configure`` applies
    ``worker.max_retries`` from the settings to every task through Celery's annotations.
    """

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 10

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with bind(task=self.request.id):
                return super().__call__(*args, **kwargs)
        except POISON as exc:
            # Poison input: recorded as failed by the stage; never redelivered.
            logger.warning("task %s rejected: %s", self.name, exc)
            raise Reject(str(exc), requeue=False) from exc

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Retries spent (or an error no retry helps): the stage records why, if it keeps
        a record a person reads (the analysis of a study is re-queued by the node instead)."""
        record = GIVE_UP.get(self.name)
        if record is not None and args:
            record(WorkerContext.current(), int(args[0]), f"{type(exc).__name__}: {exc}")


app = Celery("gazex", set_as_current=False, task_cls=GazexTask)


@app.task(name=ANALYZE_STUDY)  # type: ignore[untyped-decorator]
def analyze_study(study_id: int) -> str:
    """Analyse a complete study; hand its HL7 notification on when there is one."""
    outcome = analysis.analyze_study(WorkerContext.current(), study_id)
    if outcome.notify and outcome.analysis_id is not None:
        app.send_task(NOTIFY, args=[outcome.analysis_id])
    return outcome.status


@app.task(name=NOTIFY)  # type: ignore[untyped-decorator]
def notify(analysis_id: int) -> str:
    """Send an analysis's ORU^R01 and record the ACK."""
    return notification.notify(WorkerContext.current(), analysis_id)


@app.task(name=SIGN_REVIEW)  # type: ignore[untyped-decorator]
def sign_review(review_id: int) -> str:
    """Build a signed review's verified SR and route it; hand its ORU^R01 on."""
    outcome = review.sign_review(WorkerContext.current(), review_id)
    if outcome.notify:
        app.send_task(NOTIFY_REVIEW, args=[review_id])
    return outcome.status


@app.task(name=NOTIFY_REVIEW)  # type: ignore[untyped-decorator]
def notify_review(review_id: int) -> str:
    """Send a signed review's ORU^R01 (F, or C for a correction) and record the ACK."""
    return notification.notify_review(WorkerContext.current(), review_id)
