"""Which files a scoring run reads: files, folders (recursively) and glob patterns, in a stable order."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from kdcore.imageio import IMAGE_EXTENSIONS


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _folder(folder: Path) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints, .cache) are skipped at every level.
    return sorted(
        p for p in folder.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])
    )


def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Image files named by ``inputs``, without duplicates, in the order given (folders and globs sorted).

    A file given explicitly is kept whatever its suffix (so a corrupt ``.png`` or a ``.jpe`` is reported, not
    skipped); folders and globs contribute files with an image suffix (:data:`IMAGE_EXTENSIONS`); ``@FILE``
    reads one path per line from FILE (a missing listed file becomes an error row, not a crash).

    Raises:
        FileNotFoundError: An input matches nothing, or nothing at all was found.
    """
    inputs = list(inputs)
    found: list[Path] = []
    for item in inputs:
        if str(item).startswith("@"):  # a list file, e.g. the not_scored.txt of an earlier run
            listed = Path(str(item)[1:]).read_text(encoding="utf-8").splitlines()
            found += [Path(line) for line in listed if line.strip()]
            continue
        path = Path(item)
        if path.is_dir():
            found += _folder(path)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            found += [p for p in matches if _is_image(p)] + [q for p in matches if p.is_dir() for q in _folder(p)]
        else:
            raise FileNotFoundError(f"no such file, folder or pattern: {item}")
    unique = list(dict.fromkeys(str(p) for p in found))
    if not unique:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))}")
    return unique
