"""The server-side TLS context of the node, shared by its DICOM port and its HTTP port."""

from __future__ import annotations

import ssl

from dicom_node.settings import TLSSettings


def server_ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """TLS 1.2 or later with the node's certificate; client certificates are checked
    against ``ca_file`` when one is given, and required when ``require_client_cert``."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None  # checked by settings
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    if not tls.require_client_cert and tls.ca_file is None:
        context.verify_mode = ssl.CERT_NONE
    return context
