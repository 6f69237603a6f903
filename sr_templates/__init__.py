"""Result objects: DICOM SR (TID 1500), SEG, Parametric Map and GSPS built from a model
result.

Modules, named as in highdicom:

- ``build``      ``build_all`` (result + source dataset -> {kind: dataset}, the entry the
                 workers call) and ``encode`` (a dataset as a Part 10 file)
- ``sr``         the findings SR and the trajectory SR (Comprehensive 3D SR, TID 1500):
                 ``build_findings_sr``, ``build_trajectory_sr``
- ``seg``        the SEG: ``build_segmentation`` (BINARY, a segment per grounded finding)
- ``pm``         the attention map as a Parametric Map: ``build_attention_map``
- ``gsps``       the GSPS overlay: ``build_gsps``, and ``voi_window`` (its VOI window)
- ``templates``  the SR templates (TID 1500, 1410, 1501, 1600, 4019, 1001)
- ``content``    content items and geometry shared by the builders
- ``codes``      coded concepts, including the private ``99GAZEX`` scheme
- ``enum``       defined terms: object kinds (series numbers and descriptions), GSPS layers
- ``uids``       deterministic UIDs from (source study and image, model, kind, revision)
- ``cli``        ``gazex render``

Private: ``_common`` (series, equipment and finding order shared by the builders),
``_geometry`` (the plane geometry of the SEG and the map) and ``_drawing`` (the GSPS canvas
and arrowheads).
"""
