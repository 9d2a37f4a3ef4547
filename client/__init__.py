"""The project's Triton client: validation of served models (:mod:`client.validate`) and production scoring
of image folders (:mod:`client.scoring`, with tiling, heatmaps, reports and evaluation against ground truth).

``python client/client.py`` is the command line; the modules import as a library (``from client.scoring import
score_images``). The client needs no torch: numpy, OpenCV, tritonclient and two torch-free modules of
:mod:`training` (the image codec and the metrics), so training and serving read images and compute metrics
by one definition.
"""
