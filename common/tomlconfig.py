"""Dataclass configs as TOML files: read one, checked key by key, and write one back.

    python cli.py train --config my.toml          # any TrainConfig field by its name
    python cli.py train --config runs/X/config.toml   # a run's resolved config: the same run again

Reads a flat TOML table (stdlib tomllib) whose keys must be fields of the dataclass and whose values
must have the field's type: an integer is a valid float, a list fills a tuple field. Every problem
is one line naming the file and the key. Writes the same flat form: the values of these configs are
strings, numbers, booleans and flat lists of them, so no TOML library is needed to write.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path

from common.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib


def field_types(cls) -> dict[str, object]:
    """{field name: its type} of a dataclass, annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def type_name(kind) -> str:
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, str(item))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def check_value(kind, value) -> object | None:
    """`value` converted to the field type `kind`, or None when it does not fit."""
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list):
            return None
        items = [check_value(typing.get_args(kind)[0], v) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    if kind is bool or isinstance(value, bool):  # a bool is an int in Python, never in a config
        return value if kind is bool and isinstance(value, bool) else None
    if kind is float and isinstance(value, (int, float)):
        return float(value) if abs(value) <= 1e308 and math.isfinite(value) else None  # 10**400: no float
    return value if isinstance(value, kind) else None


def read_toml_fields(path: Path, cls, *, skip: tuple[str, ...] = ()) -> dict:
    """The fields a TOML file sets, typed; UserError naming the file and key of the first problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is unreadable ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    return check_fields(raw, cls, str(path), skip=skip)


def check_fields(raw: dict, cls, where: str, *, skip: tuple[str, ...] = ()) -> dict:
    types = {k: v for k, v in field_types(cls).items() if k not in skip}
    out = {}
    for key, value in raw.items():
        if key not in types:
            near = difflib.get_close_matches(key, list(types), n=1) or difflib.get_close_matches(
                key.lower(), [k.lower() for k in types], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; the keys are {', '.join(types)}"
            raise UserError(f"{where}: unknown key {key!r}{hint}")
        typed = check_value(types[key], value)
        if typed is None:
            raise UserError(f"{where}: {key} must be {type_name(types[key])}, got {value!r}")
        out[key] = typed
    return out


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # finite: the configs refuse inf and nan
    if isinstance(value, str):
        return json.dumps(value).replace("\x7f", "\\u007f")  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_text(values: dict, *, header: str = "", comments: dict[str, str] | None = None,
              left_out: dict[str, str] | None = None) -> str:
    """A flat TOML document: `header` as comment lines, one `key = value` per entry (with its
    comment, if any), and `left_out` keys as commented-out lines saying why."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    comments = comments or {}
    for key, value in values.items():
        note = f"  # {comments[key]}" if key in comments else ""
        lines.append(f"{key} = {toml_value(value)}{note}")
    for key, why in (left_out or {}).items():
        lines.append(f"# {key}: {why}")
    return "\n".join(lines) + "\n"
