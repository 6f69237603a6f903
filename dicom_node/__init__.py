"""The DICOM side of GazeX Node, in three parts.

- the kernel (the modules at this level, plus ``db/``): settings, errors, logs, the
  database, spool, peers, the study lifecycle, outbox, SCU, dispatch, audit, metrics and the
  HTTP probes. ``workers`` builds on it.
- ``scp/``: the DICOM server process (server, handlers, receiver, completion, routing).
- ``cli/``: the ``gazex`` command, one module per command group.

Never imports ``workers`` or the model stack: studies are handed on by task name.
"""
