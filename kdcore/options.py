"""Command-line options generated from a pydantic config, so help, defaults and validation cannot disagree."""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: Separates a nested model's field from its own fields in an option's ``dest`` (``tiling.tile_size``).
NESTED = "."


def _base_type(annotation: object) -> object:
    """``Path | None`` -> ``Path``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _is_model(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config: type[BaseModel],
    *,
    exclude: Collection[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add one ``--field-name`` option per field of ``config``, its description as the help text.

    Booleans become flags (``--x``, or ``--x/--no-x`` when the default is true), enums and ``Literal`` types get
    their values as choices, numbers and strings their type, anything else (paths) a :class:`~pathlib.Path`. A
    field that is itself a pydantic model (``TilingConfig | None``) becomes an argument group of its fields'
    options, titled ``<field> (<description>)``; their options keep the nested fields' own names and store to
    ``<field>.<name>``, which :func:`config_values` gathers back into a dict.

    Args:
        parser: The parser (or argument group) to add to.
        config: The pydantic model whose fields become options.
        exclude: Fields that get no option (the program sets them); ``"tiling.columns"`` names a nested field.
        aliases: Further option strings per field, e.g. ``{"batch_size": ["-b"]}``.

    Returns:
        The argument group made for each nested model field, by field name (to put hand-written options in).
    """
    return _add(parser, config, exclude=set(exclude), aliases=dict(aliases or {}), prefix="")


def _add(parser, config: type[BaseModel], *, exclude: set[str], aliases: dict[str, Sequence[str]],
         prefix: str) -> dict[str, argparse._ArgumentGroup]:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in config.model_fields.items():
        key = prefix + name
        if key in exclude:
            continue
        kind = _base_type(field.annotation)
        if _is_model(kind):
            if prefix:
                raise TypeError(f"{key}: options are generated for one level of nested models")
            title = f"{name} ({field.description})" if field.description else name
            groups[key] = parser.add_argument_group(title)
            groups.update(_add(groups[key], kind, exclude=exclude, aliases=aliases, prefix=key + NESTED))
            continue
        flags = [*aliases.get(key, ()), "--" + name.replace("_", "-")]
        options: dict[str, Any] = {"dest": key, "help": field.description or name.replace("_", " ")}
        if prefix:
            options["metavar"] = name.upper()  # not the dest's "TILING.TILE_SIZE"
        if kind is bool:
            options.pop("metavar", None)
            action = argparse.BooleanOptionalAction if field.default else "store_true"
            parser.add_argument(*flags, action=action, default=bool(field.default), **options)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            parser.add_argument(*flags, choices=[m.value for m in kind], default=field.default.value, **options)
        elif typing.get_origin(kind) is typing.Literal:
            choices = list(typing.get_args(kind))
            parser.add_argument(*flags, choices=choices, type=type(choices[0]), default=field.default, **options)
        else:
            parser.add_argument(*flags, type=kind if kind in (int, float, str) else Path, default=field.default,
                                **options)
    return groups


def config_values(config: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``config``'s options in parsed ``args``: one entry per field that got an option, nested
    models' fields as a dict under the model field's name (validate them with ``config.model_validate``)."""
    parsed = vars(args)
    values: dict[str, Any] = {}
    for name, field in config.model_fields.items():
        if _is_model(_base_type(field.annotation)):
            nested = {k.split(NESTED, 1)[1]: v for k, v in parsed.items() if k.startswith(name + NESTED)}
            if nested:
                values[name] = nested
        elif name in parsed:
            values[name] = parsed[name]
    return values
