"""Prompts: made from a template and slot words, split by a hash of their text, and read back into a topic.

Why procedural: these machines cannot download data, yet the training stack (SFT, reward model, DPO, PPO)
needs prompts, answers of varying quality, and a gold judge whose verdict is known. Every prompt is built
from a template and a slot vocabulary, so the same text can be parsed back (`read_prompt`) by the response
maker and by the judge: the judge reads only texts, never how they were made. Everything is deterministic
given a `random.Random`; never the global generator.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from world.vocabulary import (
    ACTIVITY_TEMPLATES,
    ARITH_SUFFIX,
    ARITH_TEMPLATES,
    ARITHMETIC_OBJECTS,
    CARE_ITEMS,
    CARE_TEMPLATES,
    CARE_WHEN,
    COMPANIONS,
    COOK_TEMPLATES,
    COOK_WHEN,
    DEFINE_CONTEXT,
    DEFINE_TEMPLATES,
    DISHES,
    GREET_ADJ,
    GREET_TEMPLATES,
    INTENTS,
    NAMES,
    OCCASIONS,
    OPENINGS,
    PACK_TEMPLATES,
    PEOPLE,
    PLACES,
    POSSESSORS,
    RECIPIENTS,
    SPILLS,
    TRIP_COMPANY,
    TRIP_LENGTHS,
    WHEN,
    WORD_SOURCES,
    WORDS,
    capitalize,
    pronoun,
)

Split = Literal["train", "validation", "test"]
SPLIT_SHARES: dict[str, float] = {"train": 0.90, "validation": 0.05, "test": 0.05}


@dataclass(frozen=True)
class Prompt:
    text: str
    intent: str


@dataclass(frozen=True)
class Topic:
    """What a prompt asks about, parsed from its text alone."""

    intent: str
    subject: str
    """The words a specific answer mentions: "teddy bear", "Mia", "brave", "birthday", "7 + 5"."""
    kind: str = ""
    """toy|pet|person (activity), a material (care), hot|cold (packing), an occasion, or + - x (arithmetic)."""
    numbers: tuple[int, ...] = ()
    phrase: str = ""
    """The slot as written in the prompt ("friend Mia", "a week in Hawaii"), reused in answers."""

    @property
    def answer(self) -> int | None:
        if self.intent != "arithmetic":
            return None
        a, b = self.numbers
        return {"+": a + b, "-": a - b, "x": a * b}[self.kind]


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Small operands a tiny model can learn: sums and differences up to 20, single-digit products."""
    if op == "+":
        return rng.randint(1, 20), rng.randint(1, 20)
    if op == "-":
        a = rng.randint(2, 20)
        return a, rng.randint(1, a)
    return rng.randint(2, 9), rng.randint(2, 9)


def make_prompt(rng: random.Random, intent: str | None = None) -> Prompt:
    """One prompt of `intent` (uniform over INTENTS when None), from a template and slot words.

    Prompts stay within 6-20 words (arithmetic from 4: "What is 7 + 5?"), short enough for a tiny model.
    """
    intent = intent or rng.choice(INTENTS)
    while True:
        text = _prompt_text(rng, intent)
        if (4 if intent == "arithmetic" else 6) <= len(text.split()) <= 20:
            return Prompt(text=text, intent=intent)


def _prompt_text(rng: random.Random, intent: str) -> str:
    if intent == "activity":
        text = rng.choice(ACTIVITY_TEMPLATES).format(c=rng.choice(tuple(COMPANIONS)), w=rng.choice(WHEN))
    elif intent == "care":
        item = rng.choice(tuple(CARE_ITEMS))
        text = rng.choice(CARE_TEMPLATES).format(p=rng.choice(POSSESSORS), i=item, it=pronoun(item),
                                                 w=rng.choice(CARE_WHEN), s=rng.choice(SPILLS))
    elif intent == "arithmetic":
        op = rng.choice(("+", "-", "x"))
        a, b = _operands(rng, op)
        text = rng.choice(ARITH_TEMPLATES[op]).format(a=a, b=b, n=rng.choice(NAMES), o=rng.choice(ARITHMETIC_OBJECTS))
        text += rng.choice(ARITH_SUFFIX)
    elif intent == "cooking":
        text = rng.choice(COOK_TEMPLATES).format(d=rng.choice(tuple(DISHES)), w=rng.choice(COOK_WHEN),
                                                 r=rng.choice(PEOPLE))
    elif intent == "packing":
        text = rng.choice(PACK_TEMPLATES).format(n=rng.choice(TRIP_LENGTHS), pl=rng.choice(tuple(PLACES)),
                                                 c=rng.choice(TRIP_COMPANY))
    elif intent == "definition":
        text = rng.choice(DEFINE_TEMPLATES).format(x=rng.choice(tuple(WORDS)), w=rng.choice(DEFINE_CONTEXT),
                                                   src=rng.choice(WORD_SOURCES), r=rng.choice(RECIPIENTS))
    elif intent == "greeting":
        text = rng.choice(GREET_TEMPLATES).format(a=rng.choice(GREET_ADJ), o=rng.choice(tuple(OCCASIONS)),
                                                  r=rng.choice(RECIPIENTS))
    else:
        raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")
    return rng.choice(OPENINGS) + capitalize(text)


def split_of(prompt_text: str) -> Split:
    """90/5/5 by a stable hash of the text, so a prompt is in one split whatever the seed or the process."""
    bucket = int.from_bytes(hashlib.sha256(prompt_text.encode()).digest()[:8], "big") % 1000
    if bucket < 1000 * SPLIT_SHARES["train"]:
        return "train"
    return "validation" if bucket < 1000 * (SPLIT_SHARES["train"] + SPLIT_SHARES["validation"]) else "test"


def prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """`n` distinct prompts of `split`, in a deterministic order (rejection sampling over all prompts)."""
    rng = random.Random(f"prompts-{seed}")
    out: list[Prompt] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        p = make_prompt(rng)
        if p.text not in seen and split_of(p.text) == split:
            seen.add(p.text)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct {split} prompts (got {len(out)})")
    return out


# ---------------------------------------------------------------- reading prompts back
def _find(text: str, phrases: Iterable[str]) -> str | None:
    """The longest phrase of `phrases` that occurs in `text` as whole words (case-insensitive)."""
    lowered = text.lower()
    for phrase in sorted(phrases, key=len, reverse=True):
        if re.search(rf"\b{re.escape(phrase.lower())}\b", lowered):
            return phrase
    return None


_NUM = r"(\d+)"
_ARITH_PATTERNS: tuple[tuple[str, str, bool], ...] = (
    (rf"{_NUM}\s*(?:\+|plus)\s*{_NUM}", "+", False), (rf"add {_NUM} and {_NUM}", "+", False),
    (rf"sum of {_NUM} and {_NUM}", "+", False), (rf"has {_NUM} \w+ and gets {_NUM} more", "+", False),
    (rf"subtract {_NUM} from {_NUM}", "-", True), (rf"has {_NUM} \w+ and gives away {_NUM}", "-", False),
    (rf"{_NUM}\s*(?:-|minus|take away)\s*{_NUM}", "-", False),
    (rf"{_NUM}\s*(?:x|\*|times|multiplied by)\s*{_NUM}", "x", False), (rf"multiply {_NUM} by {_NUM}", "x", False),
    (rf"{_NUM} bags with {_NUM}", "x", False),
)
_INTENT_CUES: dict[str, str] = {
    "definition": r"\b(mean|meaning|define|definition|explain the word)\b",
    "greeting": r"\b(message|card|note|text|kind words)\b",
    "packing": r"\b(pack|packing|bring|suitcase|must have)\b",
    "care": r"\b(wash|washer|washing|clean|dry|dishwasher|stain|care for|freshen)\b",
    "cooking": r"\b(make|making|cook|cooking|tips?|secret|trick|advice)\b",
}


@lru_cache(maxsize=8192)  # the judge reads the same prompt once per candidate answer
def read_prompt(text: str) -> Topic | None:
    """Parse a world prompt back into its topic, from the text alone; None when it is not a world prompt."""
    lowered = text.lower()
    for pattern, op, swap in _ARITH_PATTERNS:
        m = re.search(pattern, lowered)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            a, b = (b, a) if swap else (a, b)
            return Topic("arithmetic", f"{a} {op} {b}", op, (a, b))
    word = _find(text, WORDS)
    if word and re.search(_INTENT_CUES["definition"], lowered):
        return Topic("definition", word, phrase=word)
    occasion = _find(text, OCCASIONS)
    if occasion and re.search(_INTENT_CUES["greeting"], lowered):
        return Topic("greeting", occasion, occasion, phrase=occasion)
    place = _find(text, PLACES)
    if place and re.search(_INTENT_CUES["packing"], lowered):
        length = _find(text, TRIP_LENGTHS) or "a trip"
        return Topic("packing", place.split(" ", 1)[1], PLACES[place], phrase=f"{length} {place}")
    item = _find(text, CARE_ITEMS)
    if item and re.search(_INTENT_CUES["care"], lowered):
        return Topic("care", item, CARE_ITEMS[item], phrase=item)
    dish = _find(text, DISHES)
    if dish and re.search(_INTENT_CUES["cooking"], lowered):
        return Topic("cooking", dish, phrase=dish)
    companion = _find(text, COMPANIONS)
    if companion:  # "friend Mia" is mentioned as "Mia"
        subject = companion.split()[-1] if companion.split()[-1] in NAMES else companion
        return Topic("activity", subject, COMPANIONS[companion], phrase=companion)
    return None
