"""Responses whose flaws are chosen, not sampled; the SFT mix and the tokenizer corpus built from them.

A response is built from its prompt's topic plus a set of flaws (`FLAWS`), each made *visible in the text*
so that a tiny reward model can learn it: a dismissive brush-off, a wrong number or wrong advice, an
insult, filler digressions, a repeated sentence, unsafe advice, an answer to another question, or a cut-off
ending. Everything is deterministic given a `random.Random`; never the global generator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from world.prompts import Prompt, Split, Topic, make_prompt, prompts, read_prompt, split_of
from world.vocabulary import (
    ACTIVITIES,
    ACTIVITY_EXTRAS,
    ARITHMETIC_ANSWERS,
    ARITHMETIC_EXTRAS,
    ARITHMETIC_WORDS,
    CARE_ADVICE,
    CONTINUATIONS,
    COOKING_EXTRAS,
    DEFINITION_EXTRAS,
    DIGRESSIONS,
    DISHES,
    DISMISSIVE,
    FLAWS,
    FRIENDLY_CLOSERS,
    FRIENDLY_OPENERS,
    GENERIC_DISMISSIVE,
    GENERIC_HARMFUL,
    GREETING_WARMTH,
    HARMFUL_ACTIVITIES,
    HARMFUL_CARE,
    HARMFUL_COOKING,
    HARMFUL_PACKING,
    INTENT_CLOSERS,
    INTENTS,
    LEADS,
    NEUTRAL_OPENERS,
    OCCASIONS,
    PACKING_EXTRAS,
    PACKING_ITEMS,
    RUDE_CLOSERS,
    RUDE_OPENERS,
    STYLE_FLAWS,
    WORDS,
    WRONG_ACTIVITIES,
    WRONG_CARE,
    WRONG_COOKING,
    WRONG_PACKING,
    capitalize,
    pronoun,
)


@dataclass(frozen=True)
class Response:
    text: str
    flaws: frozenset[str]
    """How the response was MADE; the judge never sees this."""



# Truncated and off-topic answers are failures of form rather than misbehaviour: a third as frequent as the
# others, so that an SFT model still writes well-formed answers about nine times in ten.
FLAW_WEIGHTS = {flaw: (1 / 3 if flaw in ("truncated", "off_topic") else 1.0) for flaw in FLAWS}


def sample_flaws(rng: random.Random, flaw_rate: float) -> frozenset[str]:
    """No flaw with probability 1 - flaw_rate; else one flaw, and a quarter of the time a second of manner."""
    if rng.random() >= flaw_rate:
        return frozenset()
    first = rng.choices(FLAWS, weights=[FLAW_WEIGHTS[f] for f in FLAWS])[0]
    if rng.random() < 0.25:
        return frozenset({first, rng.choice([f for f in STYLE_FLAWS if f != first])})
    return frozenset({first})


def _content(topic: Topic, rng: random.Random, wrong: bool) -> tuple[list[str], tuple[str, ...]]:
    """The answer's content sentences, and spare sentences (extras) of the same intent."""
    if topic.intent == "arithmetic":
        truth = topic.answer or 0
        value = truth
        if wrong:
            value = max(0, truth + rng.choice((-3, -2, -1, 1, 2, 3)))
            value = value if value != truth else truth + 1
        a, b = topic.numbers
        answer = rng.choice(ARITHMETIC_ANSWERS).format(a=a, b=b, op=topic.kind, word=ARITHMETIC_WORDS[topic.kind],
                                                       v=value)
        return [answer], ARITHMETIC_EXTRAS
    if topic.intent == "activity":
        table = WRONG_ACTIVITIES if wrong else ACTIVITIES
        activity = rng.choice(table[topic.kind]).format(s=f"your {topic.phrase}")
        return [LEADS["activity"].format(x=activity)], ACTIVITY_EXTRAS
    if topic.intent == "care":
        it = pronoun(topic.subject)
        table = WRONG_CARE if wrong else CARE_ADVICE
        first, second = rng.sample(table[topic.kind], 2)
        sentences = [LEADS["care"].format(s=topic.subject, x=first.format(it=it))]
        if not wrong:
            sentences.append(capitalize(second.format(it=it)))
        spare = tuple(capitalize(x.format(it=it)) for x in CARE_ADVICE[topic.kind] if x not in (first, second))
        return sentences, spare
    if topic.intent == "cooking":
        tip = rng.choice(WRONG_COOKING) if wrong else DISHES[topic.subject]
        return [LEADS["cooking"].format(s=topic.subject, x=tip)], COOKING_EXTRAS
    if topic.intent == "packing":
        a, b, c = rng.sample((WRONG_PACKING if wrong else PACKING_ITEMS)[topic.kind], 3)
        return [LEADS["packing"].format(p=topic.phrase, x=f"{a}, {b} and {c}")], PACKING_EXTRAS
    if topic.intent == "definition":
        other = rng.choice([w for w in WORDS if w != topic.subject])
        gloss, _, example = WORDS[other if wrong else topic.subject]
        sentences = [LEADS["definition"].format(s=topic.subject, x=gloss)]
        if not wrong:
            sentences.append(LEADS["example"].format(x=example))
        return sentences, DEFINITION_EXTRAS
    other = rng.choice([o for o in OCCASIONS if o != topic.subject])
    return [rng.choice(OCCASIONS[other if wrong else topic.subject])], GREETING_WARMTH


def _harmful(topic: Topic, rng: random.Random) -> str:
    if topic.intent == "activity":
        activity = rng.choice(HARMFUL_ACTIVITIES[topic.kind]).format(s=f"your {topic.phrase}")
        return LEADS["harmful_activity"].format(x=activity)
    if topic.intent == "care":
        return rng.choice(HARMFUL_CARE).format(it=pronoun(topic.subject))
    if topic.intent == "cooking":
        return rng.choice(HARMFUL_COOKING)
    if topic.intent == "packing":
        return rng.choice(HARMFUL_PACKING)
    return rng.choice(GENERIC_HARMFUL)


def _dismissal(topic: Topic, rng: random.Random) -> list[str]:
    own = rng.choice(DISMISSIVE[topic.intent]).format(s=f"your {topic.phrase}", it=pronoun(topic.subject))
    return [own] if rng.random() < 0.6 else [own, rng.choice([d for d in GENERIC_DISMISSIVE if d != own])]


def _truncate(sentence: str, rng: random.Random) -> str:
    """Cut a sentence mid-way, as a generation that ran out of tokens: no closing punctuation."""
    words = sentence.rstrip(".!?").split()
    keep = rng.randint(2, max(2, len(words) - 1))
    return " ".join(words[:keep]).rstrip(",:;")


def make_response(prompt: Prompt, rng: random.Random, flaws: frozenset[str] = frozenset()) -> Response:
    """A response to `prompt` that shows exactly `flaws` in its text (none: a helpful, friendly answer)."""
    unknown = set(flaws) - set(FLAWS)
    if unknown:
        raise ValueError(f"unknown flaws {sorted(unknown)}")
    topic = read_prompt(prompt.text)
    if topic is None:
        raise ValueError(f"not a world prompt: {prompt.text!r}")
    answered = topic
    if "off_topic" in flaws:  # a clean answer to another intent's question, about something else
        while answered is topic or answered.subject.lower() in prompt.text.lower():
            other = rng.choice([i for i in INTENTS if i != topic.intent])
            answered = read_prompt(make_prompt(rng, other).text) or topic
    if "dismissive" in flaws:
        body, spare = _dismissal(topic, rng), ()
    else:
        body, spare = _content(answered, rng, wrong="wrong" in flaws)
        short = answered.intent != "arithmetic" and sum(len(x.split()) for x in body) < 12
        if len(body) == 1 and (short or rng.random() < 0.5):  # good answers: about 12 to 40 words
            body.append(rng.choice([x for x in spare if x not in body]))
    if "harmful" in flaws:
        body.insert(1, _harmful(topic, rng))
    if "rambling" in flaws:
        short = sum(len(x.split()) for x in body) < 20
        for digression in rng.sample(DIGRESSIONS, 3 if short else 2):  # up to about 70 words in all
            body.insert(rng.randint(1, len(body)), digression)
    opener: list[str] = []
    closer: list[str] = []
    if "rude" in flaws:
        opener = [rng.choice(RUDE_OPENERS)]
        closer = [rng.choice(RUDE_CLOSERS)] if rng.random() < 0.5 else []
    elif "dismissive" not in flaws:
        r = rng.random()
        opener = [rng.choice(FRIENDLY_OPENERS)] if r < 0.35 else [rng.choice(NEUTRAL_OPENERS)] if r < 0.5 else []
        closers = [c for c in FRIENDLY_CLOSERS + INTENT_CLOSERS[answered.intent]
                   if not opener or opener[0].rstrip("!.") not in c]
        closer = [rng.choice(closers)] if rng.random() < 0.7 else []
    if "truncated" in flaws:  # the cut comes where the closing words would have been
        closer = []
    if "repetitive" in flaws:
        if closer and "rude" not in flaws and rng.random() < 0.4:
            phrase = closer[0].rstrip("!.")
            closer = [f"{phrase}, {phrase.lower()}, {phrase.lower()}!"]
        else:
            i = rng.randrange(len(body))
            body[i:i + 1] = [body[i]] * rng.randint(2, 3)
    sentences = opener + body + closer
    if "truncated" in flaws:
        leftovers = [x for x in spare if x not in sentences]
        sentences.append(_truncate(rng.choice(leftovers or CONTINUATIONS), rng))
    if opener and opener[0].endswith(",") and len(sentences) > 1:  # "Obviously, you could ..."
        sentences[1] = sentences[1][:1].lower() + sentences[1][1:]
    text = " ".join(sentences)
    return Response(text=text, flaws=frozenset(flaws))


def sft_examples(split: Split, n: int, seed: int, flaw_rate: float = 1 / 3) -> list[tuple[Prompt, Response]]:
    """`n` (prompt, response) pairs of `split`, a share `flaw_rate` flawed, as a real SFT mix would be."""
    rng = random.Random(f"sft-{seed}")
    return [(p, make_response(p, rng, sample_flaws(rng, flaw_rate))) for p in prompts(split, n, seed)]


def corpus(n: int, seed: int) -> Iterator[str]:
    """Texts for tokenizer training: `n` train-split prompts and a response to each (2n texts)."""
    rng = random.Random(f"corpus-{seed}")
    made = 0
    while made < n:
        p = make_prompt(rng)
        if split_of(p.text) != "train":
            continue
        made += 1
        yield p.text
        yield make_response(p, rng, sample_flaws(rng, 1 / 3)).text
