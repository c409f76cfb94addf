from transformers import AutoTokenizer

from models.chat import completion_ids, prompt_ids, user
from training.tokenizer import BOS, EOS, train_tokenizer

TEXTS = [
    "Suggest a new activity I could do with my teddy bear.",
    "How about you both build a blanket fort? Happy to help!",
    "Can I put my teddy bear in the washer?",
    "Use a gentle cold cycle inside a pillowcase.",
    "What is 7 + 5?",
    "7 + 5 = 12.",
] * 50


def test_round_trip_and_chat_template_after_save_and_reload(tmp_path):
    train_tokenizer(TEXTS, vocab_size=400).save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ["What is 7 + 5?", "Caf\u00e9 na\u00efve \u2013 unseen words, emoji \U0001f9f8 and  spaces"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "What is 7 + 5?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == f"{BOS}<|system|>\nBe kind.{EOS}\n<|user|>\nWhat is 7 + 5?{EOS}\n<|assistant|>\n"
    ids = prompt_ids(tok, user("What is 7 + 5?"))
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[-2]) == "<|assistant|>"
    assert ids.count(tok.eos_token_id) == 1, "special tokens must be single ids, not spelled out"
    answer = completion_ids(tok, "7 + 5 = 12.")
    assert answer[-1] == tok.eos_token_id and tok.decode(answer, skip_special_tokens=True) == "7 + 5 = 12."
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)


def test_content_parts_render_like_plain_strings(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "7 + 5?"}]}]
    plain = [{"role": "user", "content": "What is 7 + 5?"}]
    assert prompt_ids(tok, parts) == prompt_ids(tok, plain)
