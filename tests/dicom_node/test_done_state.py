"""A study is marked done when its last result and its HL7 message finish together."""

from __future__ import annotations

import threading

from pydicom.uid import generate_uid

from dicom_node import db
from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Notification,
    NotificationState,
    OutboxItem,
    OutboxState,
    Peer,
    Study,
    StudyState,
)
from dicom_node.outbox import mark_done_if_finished


def test_delivery_and_notification_finishing_together_mark_the_study_done(
    database_url: str,
) -> None:
    """Transaction A records the delivery and checks; transaction B records the HL7 ACK
    and checks before A commits. Whichever checks second must see the other's outcome."""
    engine = db.make_engine(database_url)
    sessions = db.make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            peer = Peer(name="PACS", ae_title="PACS", host="127.0.0.1", port=104)
            study = Study(StudyInstanceUID=generate_uid(), state=StudyState.ANALYSED)
            session.add_all([peer, study])
            session.flush()
            analysis = Analysis(study_id=study.id, revision=1, state=AnalysisState.SUCCEEDED)
            session.add(analysis)
            session.flush()
            item = OutboxItem(
                peer_id=peer.id,
                analysis_id=analysis.id,
                SOPInstanceUID=generate_uid(),
                SOPClassUID="1.2.840.10008.5.1.4.1.1.88.34",
                path="/nonexistent",
                state=OutboxState.PENDING,
            )
            note = Notification(
                analysis_id=analysis.id, control_id="GX1", state=NotificationState.PENDING
            )
            session.add_all([item, note])
            session.flush()
            ids = (study.id, analysis.id, item.id, note.id)
        study_id, analysis_id, item_id, note_id = ids

        delivery = sessions()
        delivery.begin()
        sent = delivery.get(OutboxItem, item_id)
        assert sent is not None
        sent.state = OutboxState.SENT
        mark_done_if_finished(delivery, delivery.get_one(Analysis, analysis_id))

        def notify() -> None:
            with sessions.begin() as session:
                acked = session.get(Notification, note_id)
                assert acked is not None
                acked.state = NotificationState.ACCEPTED
                mark_done_if_finished(session, session.get_one(Analysis, analysis_id))

        other = threading.Thread(target=notify)
        other.start()
        # B either waits for A's lock or, without it, checks now and sees A unfinished.
        other.join(timeout=2)
        delivery.commit()
        delivery.close()
        other.join(timeout=30)
        assert not other.is_alive()
        with sessions() as session:
            assert session.get_one(Study, study_id).state is StudyState.DONE
    finally:
        engine.dispose()
