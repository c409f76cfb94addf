"""Preference pairs as real pipelines collect them: two answers to one prompt, labelled by the annotator.

Answers come from the SFT policy sampled at temperature 1 (on-policy data, as in the lecture's pipeline) or
from the world's generator; the gold judge plays the annotator with Bradley-Terry noise. Built once per
(policy version, split, size, seed) and cached as JSONL beside the checkpoints, so the RM and DPO trainers
label the same data and a rerun does not sample again.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import world
from common.files import write_atomic
from models.checkpoint import verify
from models.sampling import SamplingParams
from training.evaluate import generate_answers, load_policy

log = logging.getLogger(__name__)


def build_pairs(policy_dir: Path, split: world.Split, n_pairs: int, seed: int, policy_share: float,
                temperature: float, max_new_tokens: int = 96) -> list[world.Pair]:
    """`n_pairs` labelled pairs on distinct prompts of `split` (cached under `<root>/.data/`)."""
    version = verify(policy_dir, kind="policy").version
    name = f"pairs-{version}-{split}-{n_pairs}-{seed}-{policy_share}-{temperature}.jsonl"
    cache = Path(policy_dir).parent / ".data" / name
    if cache.is_file():
        return [world.Pair(**json.loads(line)) for line in cache.read_text().splitlines()]
    rng = random.Random(seed)
    prompts = world.prompts(split, n_pairs, seed)
    n_policy = round(n_pairs * policy_share)
    log.info("sampling %d answer pairs from %s for preference data", n_policy, version)
    model, tokenizer = load_policy(policy_dir)
    sampled = generate_answers(model, tokenizer, [p.text for p in prompts[:n_policy]], 2,
                               SamplingParams(max_new_tokens, 1.0), seed=seed, batch_prompts=32)
    pairs = []
    for i, prompt in enumerate(prompts):
        if i < n_policy and sampled[i][0] != sampled[i][1]:
            a, b = sampled[i]
        else:
            a, b = (world.make_response(prompt, rng, world.sample_flaws(rng, 0.5)).text for _ in range(2))
        pairs.append(world.label_pair(prompt.text, a, b, rng, temperature))
    rng.shuffle(pairs)
    write_atomic(cache, "".join(json.dumps(asdict(p)) + "\n" for p in pairs))
    return pairs
