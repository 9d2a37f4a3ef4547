"""The inspection console: a web page over the served models (``kd-console``), a thin layer over ``client/``."""
