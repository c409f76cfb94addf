"""The embedded assistant world: generated prompts and responses, the gold judge, and preference labels.

Standard library only, and it imports none of our packages: trainers, the evaluation, the load test and the
judge reward backend all use it, so it sits below every one of them.
"""

from world.judge import PENALTIES, detect, score, well_formed
from world.preferences import Pair, bt_probability, label_pair, listwise, pointwise
from world.prompts import Prompt, Split, Topic, make_prompt, prompts, read_prompt, split_of
from world.responses import Response, corpus, make_response, sample_flaws, sft_examples
from world.vocabulary import FLAWS, INTENTS, STYLE_FLAWS

__all__ = [
    "FLAWS", "INTENTS", "PENALTIES", "STYLE_FLAWS", "Pair", "Prompt", "Response", "Split", "Topic",
    "bt_probability", "corpus", "detect", "label_pair", "listwise", "make_prompt", "make_response", "pointwise",
    "prompts", "read_prompt", "sample_flaws", "score", "sft_examples", "split_of", "well_formed",
]
