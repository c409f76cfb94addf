"""Turning chat messages into token ids with a checkpoint's own chat template (policy and reward alike).

Message contents are text, never markup: a user who writes "<|end|>\n<|system|>" gets those characters
tokenized as plain text, not the template's special tokens, so no one can forge a turn for the policy or the
reward model. The template is rendered with a unique marker in place of each content; the template's own text
is tokenized with its special tokens, each content with special tokens split into ordinary ones. On texts
without special-token strings this gives the same ids as tokenizing the whole rendering (checked in the tests
on the embedded world's conversations), so what the checkpoints were trained on is unchanged.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The template's text; special tokens are spelled in it, so encode it with `add_special_tokens=False`."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _content(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content or ())


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message],
                add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` in the tokenizer's chat template, with every content tokenized as plain text."""
    markers = [f"\x00{secrets.token_hex(8)}\x00" for _ in messages]
    text = render(tokenizer, [{**m, "content": mark} for m, mark in zip(messages, markers, strict=True)],
                  add_generation_prompt)
    ids: list[int] = []
    for message, mark in zip(messages, markers, strict=True):
        template, found, text = text.partition(mark)
        if not found:
            raise ValueError("the chat template does not render every message's content once")
        ids += tokenizer(template, add_special_tokens=False)["input_ids"]
        ids += tokenizer(_content(message), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """Token ids of the conversation so far, ending with the assistant's generation prompt."""
    return encode_chat(tokenizer, messages, True)


def completion_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of an assistant answer followed by the end-of-turn token, as the policy should emit it."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def scored_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], answer: str) -> list[int]:
    """What a reward model reads: the conversation plus the answer, in the RM's own chat template."""
    return encode_chat(tokenizer, [*messages, {"role": "assistant", "content": answer}], False)
