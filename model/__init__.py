"""Gaze-guided chest radiograph model: the serving runtime at the top, the rest in ``train/``.

What runs per study (the workers' path, :class:`model.predictor.Predictor`):

- ``result``: the inference result contract handed to ``sr_templates`` and ``workers``
- ``predictor``: DICOM datasets in, results out; ``inference``: free-running decoding of a
  batch; ``decoding``: the KV-cached text decoder
- ``architecture``: the network and its checkpoint; ``tokenizer``: text and special tokens
- ``pixels``: DICOM pixel data to a display image; ``imaging``: image to vision patches;
  ``geometry``: source pixels to the patch grid and back; ``prompt``: the sequence prefix
  and the report text format
- ``abcdef``, ``findings``: the review steps, regions and finding codes
- ``overlay``: the trajectory PNG; ``cli``: ``gazex predict`` and the subcommands' wiring

``train/``: training, evaluation, the synthetic data generator and the dataset loaders
(:mod:`model.train`). Nothing above imports it, except ``cli`` wiring its commands in
lazily.

Importing this package is cheap and never imports torch; the heavy parts live in
submodules that the caller imports explicitly.
"""
