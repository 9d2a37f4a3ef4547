"""kdcore.atomic.swap_in: a folder is replaced whole, and a failed rename leaves the old one in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdcore.atomic import swap_in


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_a_new_folder_is_renamed_into_place_and_an_old_one_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    swap_in(_folder(tmp_path / "a", "first"), target)
    assert (target / "file.txt").read_text() == "first"
    swap_in(_folder(tmp_path / "b", "second"), target)
    assert (target / "file.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


def test_a_failed_rename_restores_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _folder(tmp_path / "out", "old")
    staging = _folder(tmp_path / "staging", "new")
    real = os.replace

    def failing(src, dst):  # moving the old one aside works; renaming the staging folder in fails
        if Path(src) == staging:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        swap_in(staging, target)
    assert (target / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "staging"]
