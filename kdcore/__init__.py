"""The torch-free core every part of the project agrees on.

- :mod:`kdcore.contract`: the wire contract (tensor and model names, labels, the 0.5 decision line, opset, specs)
- :mod:`kdcore.imageio`: how an image file becomes a model input
- :mod:`kdcore.layout`: the MVTec AD folder layout
- :mod:`kdcore.stats`: the stats JSON schema and the 0..1 calibration formula
- :mod:`kdcore.scorer`: the calibration applied to a batch of raw outputs (what the server's scorer runs)
- :mod:`kdcore.metrics`: image/pixel AUROC, AUPRO, F1
- :mod:`kdcore.manifest`: the repository manifest and validation samples the exporter leaves for clients
- :mod:`kdcore.probes`: process and memory probes (``/proc``, Triton's metrics)
- :mod:`kdcore.options`: command-line options generated from pydantic configs

It depends on the standard library, numpy, OpenCV and pydantic only, and imports nothing else of the project
(training, export, serving, client and bench import it). Some of its modules are shipped into the model
repository beside the Triton Python backends, so this file imports none of them.
"""
