"""HL7 v2: the ORU^R01 of a model result (``messages``), MLLP with ACK checking
(``mllp``) and ``gazex hl7`` (``cli``). Its errors live in ``dicom_node.errors``."""
