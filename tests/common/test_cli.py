"""common/cli.py: one flag per typed field, read as its type says, None when not given."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest

from common.cli import add_field_flag, positive_ints

FIELDS = {
    "steps": (int, "optimizer steps"),
    "lr": (float, "peak learning rate"),
    "out": (Path, "checkpoint directory"),
    "name": (str, "a name"),
    "parent": (Path | None, "parent checkpoint, if any"),
    "server": (bool, "measure through the server"),
    "loss_type": (Literal["sigmoid", "ipo"], "the loss"),
    "best_of": (tuple[int, ...], "N values, comma-separated; 100% of them"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test", exit_on_error=False)
    for name, (annotation, help_text) in FIELDS.items():
        add_field_flag(p, name, annotation, help_text)
    return p


def test_each_type_is_read_as_its_field_says():
    args = parser().parse_args(["--steps", "3", "--lr", "1e-3", "--out", "ckpt", "--name", "x", "--parent", "sft",
                                "--no-server", "--loss-type", "ipo", "--best-of", "1,4"])
    assert vars(args) == {"steps": 3, "lr": 1e-3, "out": Path("ckpt"), "name": "x", "parent": Path("sft"),
                          "server": False, "loss_type": "ipo", "best_of": "1,4"}  # the field parses "1,4" itself
    assert parser().parse_args(["--server"]).server is True


def test_flags_not_given_are_none_so_that_defaults_apply():
    assert set(vars(parser().parse_args([])).values()) == {None}


def test_bad_values_are_refused():
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parser().parse_args(["--loss-type", "hinge"])
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        parser().parse_args(["--steps", "many"])


def test_help_names_the_types_and_keeps_percent_signs():
    text = parser().format_help()
    for usage in ("--steps INT", "--lr FLOAT", "--out PATH", "--name STR",
                  "--parent PATH", "--server, --no-server", "--loss-type {sigmoid,ipo}", "--best-of VALUE"):
        assert usage in text, usage
    assert "100% of them" in text


def test_positive_ints_sorts_dedupes_and_refuses_the_rest():
    assert positive_ints("16,1,4,4") == (1, 4, 16)
    assert positive_ints((8, 2)) == (2, 8)
    for bad in ("", "0,4", "-1", "a"):
        with pytest.raises(ValueError):
            positive_ints(bad)
