"""Celery workers: the tasks (``tasks``) over plain stage functions (``analysis``,
``notification``), the per-process context and model backend (``context``), the object
builder helper (``builder``), the worker process (``worker``) and HL7 v2 (``hl7``).

Delivery is not here: the outbox in ``dicom_node.outbox`` owns it.
"""
