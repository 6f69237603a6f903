"""DICOMweb (PS3.18) on the node's HTTP port: QIDO-RS, WADO-RS and STOW-RS.

``routes.dicomweb_mount`` puts them under ``dicomweb.base_path`` behind ``auth`` (a peer's
credential on every request). STOW-RS keeps the C-STORE contract: written durably and
indexed (``dicom_node.receiver``) before the answer, then routed and completed like an
association's instances.
"""
