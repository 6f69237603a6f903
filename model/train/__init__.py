"""Everything that does not run per study: training, evaluation and the gaze training data.

Layout: ``loop`` (the training loop) with ``losses`` (teacher-forced forward, per-task
losses) and ``batching`` (samples to examples and batches); ``evaluate`` and ``metrics``
(``gazex eval``); ``datasets`` (dataset folders to samples); ``cli`` (``gazex train`` /
``gazex eval``); ``gazedata/`` (the sample type, the synthetic generator, the simulated
readers and the REFLACX / EGD-CXR / MIMIC-Eye layouts). Serving code never imports it.
"""
