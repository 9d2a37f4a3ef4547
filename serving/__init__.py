"""Serving on Triton Inference Server: the embedded server and its Python-based stand-in backends."""
