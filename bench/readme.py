"""Figures written into README.md between a benchmark's markers, with the command, machine and date."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of section ``name`` (``<!-- name:begin -->``, ``<!-- name:end -->``)."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(readme: Path, name: str, body: str, command: str) -> None:
    """Replaces the text between the markers of ``name`` with ``body`` and a line saying how it was measured.

    Raises:
        ValueError: If ``readme`` lacks the markers (nothing is written).
    """
    begin, end = markers(name)
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise ValueError(f"{readme} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    stamp = f"`{command}` on {platform.machine()}, {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}"
    readme.write_text(f"{head}{begin}\n{body.rstrip()}\n\n{stamp}\n{end}{tail}", encoding="utf-8")


def publish(readme: Path | None, name: str, body: str, command: str, tool: str) -> int:
    """Writes section ``name`` of ``readme`` (nothing when ``readme`` is None); every benchmark ends with it.

    Returns:
        0 when written (or not asked for); 1 when the markers are missing or the file cannot be written: the
        benchmark then says so on stderr and exits 1, its figures already printed and saved to its JSON.
    """
    if readme is None or Path(readme) == Path(""):
        return 0
    try:
        write_section(Path(readme), name, body, command)
    except (OSError, ValueError) as e:
        print(f"{tool}: README table not written: {e}", file=sys.stderr)
        return 1
    return 0
