"""Turning chat messages into token ids with a checkpoint's own chat template (policy and reward alike)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The template's text; special tokens are spelled in it, so encode it with `add_special_tokens=False`."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """Token ids of the conversation so far, ending with the assistant's generation prompt."""
    return tokenizer(render(tokenizer, messages, True), add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of an assistant answer followed by the end-of-turn token, as the policy should emit it."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def scored_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], answer: str) -> list[int]:
    """What a reward model reads: the conversation plus the answer, in the RM's own chat template."""
    turns = [*messages, {"role": "assistant", "content": answer}]
    return tokenizer(render(tokenizer, turns, False), add_special_tokens=False)["input_ids"]
