"""Command-line options generated from a pydantic config, so help, defaults and validation cannot disagree."""

from __future__ import annotations

import argparse
import enum
import types
import typing
from pathlib import Path

from pydantic import BaseModel


def _base_type(annotation: object) -> object:
    """``Path | None`` -> ``Path``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def add_config_options(parser: argparse.ArgumentParser, config: type[BaseModel]) -> None:
    """Add one ``--field-name`` option per field of ``config``, its description as the help text.

    Booleans become flags, enums get their values as choices, numbers and strings their type, anything else
    (paths) a :class:`~pathlib.Path`.
    """
    for name, field in config.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _base_type(field.annotation)
        help_text = field.description or name.replace("_", " ")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            parser.add_argument(flag, choices=[m.value for m in kind], default=field.default.value, help=help_text)
        else:
            parser.add_argument(flag, type=kind if kind in (int, float, str) else Path, default=field.default,
                                help=help_text)
