"""Gaze training data: the sample type, the synthetic generator and the real datasets' layouts.

``sample`` (:class:`~model.train.gazedata.sample.GazeSample`); the generator: ``synth`` over
``anatomy``, ``pathology``, ``simulated_readers`` and ``reports``; the REFLACX, EGD-CXR and
MIMIC-Eye writers and loaders (``reflacx``, ``egd``, ``mimic_eye``, over ``tables`` and
``images``); ``supervision`` (gaze to training targets); ``drawing``; ``cli`` (``gazex data``).
"""
