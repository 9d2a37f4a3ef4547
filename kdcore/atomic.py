"""Replacing a whole folder at once: readers see the old folder or the new one, never half of either.

A writer fills a staging folder beside the target (same file system, so renames are atomic), then
:func:`swap_in` moves the old target aside, renames the staging folder into its place (restoring the old one if
that fails) and deletes the old one. The demo and time-series datasets and ``kd-deploy``'s manifests are written
this way. Standard library only, like the rest of ``kdcore``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def swap_in(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target``, replacing what is there.

    Args:
        staging: The complete new folder, in ``target``'s parent folder.
        target: The folder to replace (or create).

    Raises:
        OSError: A rename failed; ``target`` is then as it was.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
