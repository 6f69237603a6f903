"""The radiologist's review page under /review: accounts, sessions, worklist.

- ``accounts``: users (argon2id password hashes), server-side sessions, the login throttle.
- ``worklist``: the analysed studies awaiting review, in triage order.
- ``web``: the routes (login page, logout, ``/review/api/...``) and the middleware that
  asks every other request for a session and every state-changing one for its CSRF token;
  ``review_routes(ctx)`` is what the node mounts on its HTTP port.

Settings: ``dicom_node.settings.ReviewSettings`` (``[review]``). Nothing here imports the
SCP, the CLI, the workers or the model.
"""
