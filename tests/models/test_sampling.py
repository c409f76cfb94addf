import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.interface import Cancelled
from models.sampling import SamplingParams, sample

PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def _greedy_reference(model, prompt, steps):
    ids = torch.tensor([prompt])
    out = []
    for _ in range(steps):
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
        if nxt == EOS:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_greedy_with_shared_prefill_and_left_padding_matches_plain_decoding(model):
    prompts = [[1, 5, 9, 12, 7, 3], [1, 40], [1, 22, 23, 24]]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    with torch.no_grad():
        expected = [_greedy_reference(model, p, 12) for p in prompts]
    got = sample(model, prompts, 3, params, stop_ids={EOS}, pad_id=PAD)
    for want, samples in zip(expected, got, strict=True):
        assert [s.token_ids for s in samples] == [want] * 3


def test_seeded_sampling_reproduces_and_seeds_differ(model):
    params = SamplingParams(max_new_tokens=10, temperature=1.0)

    def draw(seed):
        out = sample(model, [[1, 5, 9]], 8, params, stop_ids={EOS}, pad_id=PAD,
                     generator=torch.Generator().manual_seed(seed))
        return [s.token_ids for s in out[0]]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert len({tuple(t) for t in draw(3)}) > 1, "the N samples of one prompt must differ at temperature 1"


def test_finish_reasons_and_length_limit(model):
    stop_everything = set(range(64))
    out = sample(model, [[1, 5]], 2, SamplingParams(max_new_tokens=5), stop_ids=stop_everything, pad_id=PAD)
    assert all(s.finish_reason == "stop" and s.token_ids == [] for s in out[0])
    out = sample(model, [[1, 5]], 2, SamplingParams(max_new_tokens=5), stop_ids=set(), pad_id=PAD)
    assert all(s.finish_reason == "length" and len(s.token_ids) == 5 for s in out[0])


def test_top_p_near_zero_is_greedy(model):
    greedy = sample(model, [[1, 7, 8]], 1, SamplingParams(8, temperature=0.0), stop_ids={EOS}, pad_id=PAD)
    nucleus = sample(model, [[1, 7, 8]], 4, SamplingParams(8, temperature=1.0, top_p=1e-6), stop_ids={EOS},
                     pad_id=PAD, generator=torch.Generator().manual_seed(0))
    assert all(s.token_ids == greedy[0][0].token_ids for s in nucleus[0])


def test_cancellation_stops_between_steps(model):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        sample(model, [[1, 5]], 2, SamplingParams(max_new_tokens=50), stop_ids=set(), pad_id=PAD, cancelled=cancelled)
    assert len(calls) == 3
