"""Prompts to send: a built-in list of varied short prompts, a JSONL file, or the embedded world's held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import world

Messages = list[dict[str, str]]

BUILTIN = (
    "Suggest a new activity I could do with my teddy bear.",
    "Can I put my teddy bear in the washer?",
    "What is 17 + 25?",
    "Give me three tips for a rainy afternoon at home.",
    "How do I fix a small tear in a stuffed animal?",
    "What is 9 times 8?",
    "Write a two-line poem about the sea.",
    "Explain in one sentence why the sky is blue.",
    "What should I pack for a picnic?",
    "How often should I clean a plush toy?",
    "What is 144 divided by 12?",
    "Recommend a board game for two players.",
    "How can I help my child fall asleep faster?",
    "Name a good name for a brown teddy bear.",
    "What is 53 minus 19?",
    "Summarize the rules of tic-tac-toe.",
)


def as_messages(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def builtin() -> list[Messages]:
    return [as_messages(t) for t in BUILTIN]


def from_file(path: Path) -> list[Messages]:
    """JSONL, one object a line with "prompt" (a string) or "messages" (OpenAI chat messages)."""
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            prompts.append(list(row["messages"]))
        elif "prompt" in row:
            prompts.append(as_messages(str(row["prompt"])))
        else:
            raise ValueError(f"{path}:{n}: a line needs \"prompt\" or \"messages\"")
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def from_world(n: int, seed: int, split: str = "test") -> list[Messages]:
    """The embedded assistant world's prompts (`world` is standard library only, installed with this package)."""
    return [as_messages(p.text) for p in world.prompts(split, n, seed)]
