"""The project's Triton client: validation of served models (:mod:`client.validate`) and production scoring
of image folders (:mod:`client.scoring`, with tiling, heatmaps, reports and evaluation against ground truth).

``python client/client.py`` is the command line; the modules import as a library (``from client.scoring import
score_images``). It is the project's base install: numpy, OpenCV, pydantic, tritonclient and the torch-free
core :mod:`kdcore` (the wire contract, the image codec, the metrics), so training, serving and the client name
tensors, read images and compute metrics by one definition.
"""
