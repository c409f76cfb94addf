"""The world's vocabulary: the names other code uses, and `TABLES` naming every table the judge must know."""

from __future__ import annotations

from world import vocabulary
from world.vocabulary import FLAWS, INTENTS, TABLES


def test_names_others_code_against():
    assert len(INTENTS) >= 6 and {"activity", "care", "arithmetic"} <= set(INTENTS)
    assert FLAWS == ("dismissive", "wrong", "rude", "rambling", "repetitive", "harmful", "off_topic", "truncated")


def test_tables_names_every_table_of_the_module():
    # The judge counts a word as known when it is in TABLES: a table missing from it would make the judge call
    # the world's own answers garbage. Reflection is fine here, in a test that guards the explicit list.
    names = {"INTENTS", "FLAWS", "STYLE_FLAWS", "TABLES"}
    tables = [value for name, value in vars(vocabulary).items() if name.isupper() and name not in names]
    assert len(TABLES) == len(tables)
    assert {id(t) for t in TABLES} == {id(t) for t in tables}
