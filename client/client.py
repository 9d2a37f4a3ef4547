#!/usr/bin/env python3
"""Command line of the project's Triton client.

    python client/client.py [options]              validate the served models end to end (PASS: <model>)
    python client/client.py score PATH... [opts]   score image files, folders or globs (production use)
    python client/client.py score-signal PATH...   score time-series records of any length (.npy, .csv, WFDB)
    python client/client.py health [opts]          liveness: one real inference per model (kd-health)

``python client/client.py --help``, ``python client/client.py score --help`` and
``python client/client.py score-signal --help`` explain every option. Installed with the project, the same
command is ``kd-client``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `client` (and the core `kdcore` it shares)
    # resolve as packages instead of this file's folder.
    _root = str(Path(__file__).resolve().parents[1])
    sys.path[:] = [_root, *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]


def main(argv: list[str] | None = None) -> int:
    """Dispatch to validation (default), ``score``, ``score-signal`` or ``health``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "score-signal":
        from client.signal_scoring import main as signal_main

        return signal_main(argv[1:])
    if argv and argv[0] == "score":
        from client.score_command import main as score_main

        return score_main(argv[1:])
    if argv and argv[0] == "health":
        from client.health import main as health_main

        return health_main(argv[1:])
    from client.validate import main as validate_main

    return validate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
