"""The time-series family: ECG windows with per-step labels (data), and the detectors that mark anomalous steps."""
