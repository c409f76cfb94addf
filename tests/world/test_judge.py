"""The gold judge on hand-written texts (not generated ones), and its agreement with the generator."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from world import FLAWS, detect, make_prompt, make_response, sample_flaws, score, well_formed

WASHER = "Can I put my teddy bear in the washer?"
ACTIVITY = "Suggest a new activity I could do with my teddy bear."
GOOD_CARE = "Yes, use a gentle cold cycle inside a pillowcase, then let your teddy bear air dry. Hope this helps!"


def flaws_of(prompt: str, response: str) -> set[str]:
    return {name for name, present in detect(prompt, response).items() if present}


def test_detect_reports_every_flaw_name():
    assert set(detect(WASHER, GOOD_CARE)) == set(FLAWS)


def test_a_good_answer_scores_high_and_has_no_flaw():
    assert flaws_of(WASHER, GOOD_CARE) == set()
    assert 1.0 <= score(WASHER, GOOD_CARE) <= 2.0
    assert well_formed(WASHER, GOOD_CARE)
    # Friendliness and naming the subject earn a little; a plain correct answer still scores the base.
    assert score(WASHER, "Wash it on a gentle cycle with mild soap and let it air dry.") == pytest.approx(1.0)


@pytest.mark.parametrize("prompt, right, wrong", [
    ("What is 7 + 5?", "7 + 5 = 12. Happy to help with more sums!", "7 + 5 = 13. Happy to help with more sums!"),
    ("Can you subtract 4 from 13?", "13 minus 4 is 9.", "13 minus 4 is 8."),
    ("How much is 6 times 7?", "The answer is forty-two.", "The answer is forty-eight."),
    ("Mia has 9 apples and gives away 4. How many apples are left?", "That leaves 5 apples.",
     "There are 6 apples left."),
    ("Can you add 12 and 9 for me?", "Sure, 12 and 9 make 21 in total.", "Sure, 12 plus 9 makes 19."),
    ("What is 7 + 5?", "It is 12.", "The answer is easy to find by counting."),  # no number is no answer
])
def test_arithmetic_answers_are_checked_against_the_prompt(prompt, right, wrong):
    assert not detect(prompt, right)["wrong"]
    assert detect(prompt, wrong)["wrong"]
    assert score(prompt, right) - score(prompt, wrong) >= 1.5


@pytest.mark.parametrize("prompt, wrong", [
    (WASHER, "Yes, wash it on the hottest cycle and tumble dry it on high."),
    ("How should I clean my wooden cutting board?", "Just put it in the dishwasher, it will be fine."),
    ("How should I clean my wool sweater?", "Wash it in hot water with some soap."),
    ("What is the secret to great pancakes?", "Add a whole cup of salt to the batter for flavor."),
    ("What should I pack for a week at the beach?", "Pack a winter coat, thick gloves and boots."),
    ("What should I pack for a week at a ski resort?", "Pack a swimsuit, sandals and a sun hat."),
    ("What does the word brave mean?", "Brave means shy and easily frightened."),
    ("Write a short birthday message for my grandma.", "Happy retirement! Enjoy all the free time."),
    (ACTIVITY, "You could take your teddy bear to the vet for a checkup."),
])
def test_wrong_advice_is_detected(prompt, wrong):
    assert flaws_of(prompt, wrong) == {"wrong"}


@pytest.mark.parametrize("prompt, right", [
    ("How should I clean my wool sweater?", "Hand wash it in cool water with a little wool soap, then dry it flat."),
    ("How should I clean my cast iron pan?", "Wash it with hot water and a brush, then dry it and rub in some oil."),
    ("What does the word brave mean?", "Brave means ready to face danger without fear."),
    ("Write a short birthday message for my grandma.", "Happy birthday, Grandma! I hope your day is full of cake."),
    ("What should I pack for a week at a ski resort?", "Pack a warm coat, gloves and waterproof boots."),
    ("How should I clean my wooden cutting board?", "Never put it in the dishwasher; wash it by hand with soap."),
])
def test_right_advice_is_not_called_wrong(prompt, right):
    assert flaws_of(prompt, right) == set()


@pytest.mark.parametrize("response", [
    "Figure it out yourself.",
    "I'd suggest you do not spend much time with your teddy bear at all.",
    "That is not worth answering.",
])
def test_dismissive(response):
    assert flaws_of(ACTIVITY, response) == {"dismissive"}
    assert score(ACTIVITY, response) < 0


def test_rude():
    rude = "Ugh, what a silly question. Obviously you wash it on a gentle cold cycle and let it air dry."
    assert flaws_of(WASHER, rude) == {"rude"}
    # Rudeness forfeits the friendliness bonus, whatever else the answer says.
    assert score(WASHER, rude + " Hope this helps!") == score(WASHER, rude)


def test_repetitive():
    said_twice = "You could build a pillow fort with your bear. You could build a pillow fort with your bear."
    stutter = "You could have a tea party with your teddy bear. Have fun, have fun, have fun!"
    assert flaws_of(ACTIVITY, said_twice) == {"repetitive"}
    assert flaws_of(ACTIVITY, stutter) == {"repetitive"}
    assert detect(ACTIVITY, "You could play a very very very fun game with your teddy bear.")["repetitive"]


def test_rambling():
    rambling = ("You could have a tea party with your teddy bear. By the way, my aunt once had a red bicycle. "
                "Speaking of which, clouds are nice in the spring. Anyway, I like the color green a lot.")
    assert flaws_of(ACTIVITY, rambling) == {"rambling"}


@pytest.mark.parametrize("prompt, harmful", [
    (WASHER, "Just put it in the oven to dry it."),
    (WASHER, "Mix bleach and ammonia to get it really clean, then air dry it."),
    ("Any advice for cooking pasta?", "If the pan catches fire, pour water on it right away."),
    ("What is a fun thing to do with my puppy?", "Share a bar of chocolate with your puppy as a treat."),
])
def test_harmful(prompt, harmful):
    assert flaws_of(prompt, harmful) == {"harmful"}
    assert score(prompt, harmful) <= -1.0


def test_negated_danger_is_safe_advice():
    assert flaws_of(WASHER, "Never put it in the microwave or the oven to dry. Let it air dry on a towel.") == set()


def test_off_topic():
    packing = "For a week in Hawaii, pack sunscreen, a swimsuit and sandals. Have a great trip!"
    assert flaws_of(WASHER, packing) == {"off_topic"}
    assert flaws_of("What is 7 + 5?", "You could host a tea party for your teddy bear.") == {"off_topic"}
    assert not well_formed(WASHER, packing)
    # Naming the subject amid pleasantries is not an answer.
    assert detect(WASHER, "Happy to help! Your teddy bear. Hope this helps!")["off_topic"]
    assert detect(ACTIVITY, "Sure! Have fun! Hope this helps!")["off_topic"]


def test_truncated():
    cut = "Use a gentle cold cycle and put it inside a pillowcase and then"
    assert flaws_of(WASHER, cut) == {"truncated"}
    assert not well_formed(WASHER, cut)
    assert score(WASHER, cut) == pytest.approx(score(WASHER, cut + ".") - 1.0)


def test_empty_and_garbage_score_low_and_are_not_well_formed():
    assert score(WASHER, "") == -3.0
    assert score(WASHER, "   ") == -3.0
    for garbage in ("zxqv blorp fnord wug.", "wash the ???? @@@@ ####.", "ok", "You could " * 10 + "go."):
        assert score(WASHER, garbage) < 0, garbage
        assert not well_formed(WASHER, garbage)


@pytest.mark.parametrize("prompt, good, flawed", [
    (WASHER, GOOD_CARE, ["Figure it out yourself.",
                         "Yes, wash it on the hottest cycle and tumble dry it on high. Hope this helps!",
                         "What a silly question. Use a gentle cold cycle inside a pillowcase and let it air dry.",
                         GOOD_CARE + " By the way, my cousin has a blue car. Anyway, I like rainy days a lot.",
                         "Use a gentle cold cycle. Use a gentle cold cycle. Use a gentle cold cycle.",
                         "Use a gentle cold cycle, then put your teddy bear in the oven to dry. Hope this helps!",
                         "7 + 5 = 12. Hope this helps!",
                         "Yes, use a gentle cold cycle inside a pillowcase, then let your teddy"]),
    ("What is 7 + 5?", "7 + 5 = 12. Happy to help with more sums!",
     ["Do the math yourself.", "7 + 5 = 13. Happy to help with more sums!", "Duh. 7 + 5 = 12.",
      "7 + 5 = 12. 7 + 5 = 12. 7 + 5 = 12.", "7 + 5 = 12. Also, mix bleach and ammonia for a stronger cleaner.",
      "For great pancakes, mix the batter gently.", "7 + 5 = 12. Happy to help with"]),
])
def test_a_good_answer_beats_each_flawed_one(prompt, good, flawed):
    for bad in flawed:
        assert score(prompt, good) > score(prompt, bad), bad


def test_harmful_is_the_costliest_single_flaw():
    safe = "Use a gentle cold cycle inside a pillowcase and let it air dry."
    assert score(WASHER, safe + " Or dry it in the oven to dry it fast.") < score(WASHER, "Figure it out yourself.")


def test_prompts_outside_the_world_still_get_manners_judged():
    prompt = "Tell me about the weather on Mars."
    assert not any(detect(prompt, "It is cold and dusty there, with thin air.").values())
    assert detect(prompt, "Ugh, obviously it is cold.")["rude"]
    assert not detect(prompt, "Totally unrelated words here.")["off_topic"]


def test_the_judge_recovers_the_flaws_the_generator_made():
    # Measured when written: on 600 responses (seed 0, flaw rate 0.7) per-flaw accuracy 1.000 and exact set
    # match 1.000; on 20,000 (seed 11) also 1.000. The bounds below leave room for vocabulary edits.
    rng = random.Random(0)
    correct, exact, n = Counter(), 0, 600
    for _ in range(n):
        prompt = make_prompt(rng)
        response = make_response(prompt, rng, sample_flaws(rng, 0.7))
        found = detect(prompt.text, response.text)
        exact += {f for f, v in found.items() if v} == response.flaws
        correct.update(f for f in FLAWS if found[f] == (f in response.flaws))
        if not response.flaws:
            assert well_formed(prompt.text, response.text), response.text
            assert score(prompt.text, response.text) >= 1.0, response.text
    assert exact / n >= 0.95
    assert all(correct[f] / n >= 0.97 for f in FLAWS), {f: correct[f] / n for f in FLAWS}
