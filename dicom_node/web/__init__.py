"""The HTTP port: probes, metrics and DICOMweb, one ASGI app per process."""
