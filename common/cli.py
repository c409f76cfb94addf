"""Command-line flags made from typed fields (config dataclasses, settings models): one `--flag` per field."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from pathlib import Path
from typing import Any

_CONVERTED = (int, float, str, Path)


def script_logging() -> None:
    """The logging of the long-running scripts (soak, fleet, GPU benchmark): INFO lines with their time, without
    one line per HTTP request."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def positive_ints(value: object) -> tuple[int, ...]:
    """A sorted tuple of distinct positive ints from an iterable or from the command line's "1,4,16"; ValueError
    (which argparse reports as a bad value) for anything else."""
    items = value.split(",") if isinstance(value, str) else value
    out = tuple(sorted({int(v) for v in items if str(v).strip()}))  # type: ignore[union-attr]
    if not out or out[0] < 1:
        raise ValueError(f"expected positive integers, got {value!r}")
    return out


def add_field_flag(parser: argparse.ArgumentParser, name: str, annotation: Any, help_text: str) -> None:
    """`--name-with-dashes`, stored as `name`; None when not given, so that the field's default still applies.

    The annotation decides how the value is read (`X | None` as X): bool as `--flag/--no-flag`, a Literal as
    its choices, int, float, str and Path converted, anything else left a string for the field to parse.
    """
    flag = f"--{name.replace('_', '-')}"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    if annotation is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(flag, dest=name, choices=list(typing.get_args(annotation)), default=None, help=help_text)
    else:
        scalar = annotation in _CONVERTED
        parser.add_argument(flag, dest=name, type=annotation if scalar else str, default=None, help=help_text,
                            metavar=annotation.__name__.upper() if scalar else "VALUE")
