"""The embedded assistant world: generated prompts and responses, the gold judge, and preference labels."""

from training.world.generator import (
    FLAWS,
    INTENTS,
    STYLE_FLAWS,
    Prompt,
    Response,
    Split,
    Topic,
    corpus,
    make_prompt,
    make_response,
    prompts,
    read_prompt,
    sample_flaws,
    sft_examples,
    split_of,
)
from training.world.judge import PENALTIES, detect, score, well_formed
from training.world.preferences import Pair, bt_probability, label_pair, listwise, pointwise

__all__ = [
    "FLAWS", "INTENTS", "PENALTIES", "STYLE_FLAWS", "Pair", "Prompt", "Response", "Split", "Topic",
    "bt_probability", "corpus", "detect", "label_pair", "listwise", "make_prompt", "make_response", "pointwise",
    "prompts", "read_prompt", "sample_flaws", "score", "sft_examples", "split_of", "well_formed",
]
