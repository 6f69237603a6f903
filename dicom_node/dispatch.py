"""Hand studies to the analysis queue by Celery task name.

The node only produces messages: it never imports ``workers``. The broker settings built
here are shared with the workers' Celery app so both ends agree on the transport.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from dicom_node import folder_broker
from dicom_node.settings import Settings

logger = logging.getLogger(__name__)

#: Task names: the node and the workers agree on these, never on imports.
ANALYZE_STUDY = "gazex.analyze_study"
NOTIFY = "gazex.notify"
#: A radiologist's signature (review id): build the verified SR, then its ORU^R01.
SIGN_REVIEW = "gazex.sign_review"
NOTIFY_REVIEW = "gazex.notify_review"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings both the producer (node) and the consumers (workers) use."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.broker.analysis_queue,
        "task_routes": {
            ANALYZE_STUDY: {"queue": settings.broker.analysis_queue},
            NOTIFY: {"queue": settings.broker.io_queue},
            SIGN_REVIEW: {"queue": settings.broker.io_queue},
            NOTIFY_REVIEW: {"queue": settings.broker.io_queue},
        },
    }
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport"] = folder_broker.TRANSPORT
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # Each hop (node -> analysis -> delivery) waits half an interval on average;
            # measured, an idle `gazex serve` uses 3.5 % of a core at 10 ms (2.8 % at 20 ms).
            "polling_interval": 0.01,
        }
    else:
        # Fail fast when the broker is down: the database keeps the job for a later try.
        config["broker_transport_options"] = {"max_retries": 2, "interval_start": 0.2}
    return config


class Dispatcher:
    """Sends task messages; one instance (and connection pool) per process."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("gazex-node", set_as_current=False)
        self._app.conf.update(celery_config(settings))

    def analyze_study(self, study_id: int) -> None:
        """Raises on broker failure; the caller leaves the study for the next sweep."""
        self._app.send_task(
            ANALYZE_STUDY,
            args=[study_id],
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
            },
        )

    def sign_review(self, review_id: int) -> None:
        """Hand a signature to the workers; raises on broker failure (the review row stays
        pending and is handed on again at the next start)."""
        self._app.send_task(
            SIGN_REVIEW,
            args=[review_id],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def close(self) -> None:
        self._app.close()
