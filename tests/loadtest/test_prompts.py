"""Prompt sources and URL handling of `bon loadtest`."""

from __future__ import annotations

import json

import pytest

from loadtest import prompts
from loadtest.cli import chat_url


def test_prompts_file_takes_prompt_or_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path.write_text(json.dumps({"prompt": "What is 2 + 2?"}) + "\n\n" + json.dumps({"messages": messages}) + "\n")
    assert prompts.from_file(path) == [[{"role": "user", "content": "What is 2 + 2?"}], messages]
    path.write_text(json.dumps({"text": "no"}) + "\n")
    with pytest.raises(ValueError, match="p.jsonl:1"):
        prompts.from_file(path)


def test_builtin_prompts_are_varied_user_messages():
    built = prompts.builtin()
    assert len({m[0]["content"] for m in built}) == len(built) >= 10
    assert all(m[0]["role"] == "user" for m in built)


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/",
                                 "http://h:8000/v1/chat/completions"])
def test_chat_url_accepts_base_v1_or_full_url(url):
    assert chat_url(url) == "http://h:8000/v1/chat/completions"
