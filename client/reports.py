"""Streaming reports of a scoring run: one CSV row and one JSON line per image as it is scored, then a summary.

Rows are flushed as they are written, so a run stopped by Ctrl-C (or killed) keeps every result it produced.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Self, TextIO

from client.results import RECORD_FIELDS, ImageResult, RunSummary

#: CSV columns, in order (the JSON lines carry the same keys): the recorded fields of :class:`ImageResult`.
COLUMNS = list(RECORD_FIELDS)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


class ResultWriter:
    """Writes results to CSV and/or JSON lines as they arrive; use as a context manager.

    Args:
        csv_path: CSV file to write (``None``: no CSV).
        jsonl_path: JSON-lines file to write (``None``: none).
    """

    def __init__(self, csv_path: Path | None, jsonl_path: Path | None) -> None:
        self.csv_path, self.jsonl_path = csv_path, jsonl_path
        self._csv_file: TextIO | None = None
        self._jsonl_file: TextIO | None = None
        self._csv: csv.DictWriter | None = None
        self.rows = 0

    def __enter__(self) -> Self:
        for path in (self.csv_path, self.jsonl_path):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.csv_path is not None:
            self._csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=COLUMNS)
            self._csv.writeheader()
        if self.jsonl_path is not None:
            self._jsonl_file = open(self.jsonl_path, "w", encoding="utf-8")
        return self

    def write(self, result: ImageResult) -> None:
        """Append one result to every open report and flush it to disk."""
        row = {k: _clean(v) for k, v in result.record().items()}
        if self._csv is not None:
            self._csv.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
            self._csv_file.flush()
        if self._jsonl_file is not None:
            self._jsonl_file.write(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n")
            self._jsonl_file.flush()
        self.rows += 1

    def __exit__(self, *exc: object) -> None:
        for handle in (self._csv_file, self._jsonl_file):
            if handle is not None:
                handle.close()


def format_summary(summary: RunSummary) -> str:
    """The summary as a few human-readable lines."""
    s = summary
    lines = [
        f"{s.model} over {s.protocol}: {s.images} images, {s.scored} scored, {s.errors} errors"
        + (f", {s.not_scored} not scored (interrupted)" if s.interrupted else ""),
    ]
    if s.scored:
        lat = s.latency()
        rate = f"{s.images_per_second:.1f}" if s.images_per_second is not None else "-"
        lines.append(
            f"anomalous {s.anomalous} ({100 * s.anomalous_fraction:.1f}%), normal {s.normal}; "
            f"{rate} images/s; latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_clean) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
