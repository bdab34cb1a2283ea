"""`--config FILE`: a TOML or JSON recipe read into the types of a dataclass's fields.

TOML is parsed by the standard library's tomllib and JSON by json; the values are then checked
against the fields' annotations (`_typed`: bool, int, float, str, dict, tuples, unions with None)
by the ~40 lines here rather than by a library. cattrs, pydantic or dacite would do the typing,
but each is a new dependency of the core install for what these lines do, and each words its
errors its own way (nested reports, several lines, their own type names), where cgnet's
command line gives one line that names the file, the setting and the value
(`--config r.json: lr = "fast" is not a float`); their strict modes would also need configuring
to refuse what `_typed` refuses (a bool where an int is wanted, a list of the wrong length).
"""
from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from dataclasses import fields
from pathlib import Path

from ..common import ConfigError


def read_config_file(path: str | os.PathLike, config: type, skip: tuple[str, ...] = ()) -> dict:
    """The settings of a recipe file (TOML or JSON, a flat table of the fields of the dataclass
    `config`), checked for unknown names and typed as the fields' annotations say.

    Args:
        path: the file (.toml is read as TOML, anything else as JSON).
        config: the dataclass whose fields the file sets (`TrainConfig`).
        skip: fields that are accepted but left out (never taken from a file: --out, --max-iters).

    Returns:
        {field name: value of the field's type}; ConfigError (one line naming the file, the
        setting and the value) for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} "
                          f"({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of settings")
    hints, known = typing.get_type_hints(config), {f.name for f in fields(config)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        if key in skip:
            continue
        try:
            values[key] = _typed(value, hints[key])
        except TypeError:
            raise ConfigError(f"--config {path}: {key} = {json.dumps(value)} is not a {_type_name(hints[key])}") \
                from None
    return values


def _type_name(hint) -> str:
    """'float', 'tuple[int, int]', 'int | None'."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _typed(value, hint):
    """`value` (from JSON or TOML) as the field type `hint` wants it; TypeError when it is not one."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option_type in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option_type)
            except TypeError:
                pass
        raise TypeError(value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        element = args[0]
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise TypeError(value)
        return tuple(_typed(v, element) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(value)
        return float(value)
    if hint is str or hint is dict:
        if not isinstance(value, hint):
            raise TypeError(value)
        return value
    raise TypeError(value)
