from concurrent.futures import Future

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.interface import Cancelled
from models.sampling import Decoder, Job, Rejection, SamplingParams, _next_tokens, sample

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


def _run(decoder, jobs_at_step):
    """Drive `decoder`, admitting each job at its step; returns when the batch is empty and all are admitted."""
    step = 0
    pending = sorted(jobs_at_step, key=lambda pair: pair[0])
    while pending or decoder.rows:
        while pending and pending[0][0] <= step:
            decoder.admit([pending.pop(0)[1]])
        if decoder.rows:
            decoder.step()
        step += 1


def test_jobs_joining_a_running_batch_decode_as_if_alone(model):
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    prompts = [[1, 5, 9, 12, 7, 3], [1, 40], [1, 22, 23, 24, 25, 26, 27, 28, 29]]
    alone = [sample(model, [p], 2, greedy, stop_ids=set(), pad_id=PAD)[0] for p in prompts]
    decoder = Decoder(model, PAD)
    jobs = [Job([p], 2, greedy, stop_ids=set()) for p in prompts]
    _run(decoder, [(0, jobs[0]), (3, jobs[1]), (4, jobs[2])])
    for want, job in zip(alone, jobs, strict=True):
        assert [s.token_ids for s in job.done.result()[0]] == [s.token_ids for s in want]
    assert decoder.rows == 0


def test_seeded_job_is_unchanged_by_its_neighbours(model):
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    alone = sample(model, [[1, 5, 9]], 3, params, stop_ids=set(), pad_id=PAD,
                   generator=torch.Generator().manual_seed(7))[0]
    decoder = Decoder(model, PAD)
    mine = Job([[1, 5, 9]], 3, params, stop_ids=set(), generator=torch.Generator().manual_seed(7))
    other = Job([[1, 30, 31, 32]], 4, params, stop_ids=set(), generator=torch.Generator().manual_seed(8))
    _run(decoder, [(0, other), (2, mine)])
    assert [s.token_ids for s in mine.done.result()[0]] == [s.token_ids for s in alone]


def test_a_cancelled_job_leaves_and_the_others_finish(model):
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    decoder = Decoder(model, PAD)
    stop = []
    leaving = Job([[1, 5]], 2, params, stop_ids=set(), cancelled=lambda: bool(stop))
    staying = Job([[1, 6]], 2, params, stop_ids=set())
    decoder.admit([leaving, staying])
    decoder.step()
    decoder.step()
    stop.append(1)
    decoder.step()
    with pytest.raises(Cancelled) as raised:
        leaving.done.result()
    assert raised.value.tokens == 4, "two tokens for each of its two rows were generated before it left"
    assert decoder.rows == 2
    _run(decoder, [])
    assert all(len(s.token_ids) == 6 for s in staying.done.result()[0])


def test_a_job_cancelled_before_its_prefill_costs_nothing(model):
    decoder = Decoder(model, PAD)
    job = Job([[1, 5]], 2, SamplingParams(max_new_tokens=6), stop_ids=set(), cancelled=lambda: True)
    decoder.admit([job])
    assert decoder.rows == 0
    with pytest.raises(Cancelled) as raised:
        job.done.result()
    assert raised.value.tokens == 0


def test_early_rejection_finishes_only_the_kept_rows(model):
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    seen = []

    def judge(partials):
        seen.append([len(t) for t in partials])
        verdict = Future()
        verdict.set_result([1, 3])
        return verdict

    job = Job([[1, 5, 9]], 4, params, stop_ids=set(), generator=torch.Generator().manual_seed(1),
              rejection=Rejection(after_tokens=4, judge=judge))
    decoder = Decoder(model, PAD)
    _run(decoder, [(0, job)])
    samples = job.done.result()[0]
    assert seen == [[4, 4, 4, 4]], "the verdict is asked for once, when every row has 4 tokens"
    assert [s.finish_reason for s in samples] == ["rejected", "length", "rejected", "length"]
    assert [len(s.token_ids) for s in samples] == [4, 12, 4, 12]
    assert job.generated == 32


def test_rows_decode_on_while_the_verdict_is_pending(model):
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    verdict = Future()
    job = Job([[1, 5]], 2, params, stop_ids=set(), generator=torch.Generator().manual_seed(1),
              rejection=Rejection(after_tokens=2, judge=lambda partials: verdict))
    decoder = Decoder(model, PAD)
    decoder.admit([job])
    for _ in range(5):
        decoder.step()
    assert [len(t) for t in job.tokens] == [5, 5]
    verdict.set_result([0])
    _run(decoder, [])
    samples = job.done.result()[0]
    assert [s.finish_reason for s in samples] == ["length", "rejected"]
    assert [len(s.token_ids) for s in samples] == [10, 6]


def test_a_verdict_that_comes_after_every_row_finished_still_decides(model):
    params = SamplingParams(max_new_tokens=3, temperature=1.0)
    verdict = Future()
    job = Job([[1, 5]], 3, params, stop_ids=set(), generator=torch.Generator().manual_seed(1),
              rejection=Rejection(after_tokens=2, judge=lambda partials: verdict))
    decoder = Decoder(model, PAD)
    decoder.admit([job])
    for _ in range(4):
        decoder.step()
    assert decoder.rows == 0 and decoder.parked == [job] and not decoder.has_work() and not job.done.done()
    verdict.set_result([2])
    assert decoder.has_work()
    decoder.step()
    assert decoder.parked == [] and [s.finish_reason for s in job.done.result()[0]] == ["rejected", "rejected",
                                                                                         "length"]


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (1e-7, 1.0), (1.0, 1e-300), (0.7, 1e-9)])
def test_values_too_small_for_float32_sample_the_top_token(temperature, top_p):
    """A temperature under SAMPLING_EPS is greedy; a top_p that rounds to 0 still keeps each row's top token."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=temperature, top_p=top_p)
    for seed in range(3):
        chosen = _next_tokens(logits, params, torch.Generator().manual_seed(seed))
        assert chosen.tolist() == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_tokens_are_drawn_with_their_probabilities_and_cut_ones_never(top_p):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0, 0.5]]).expand(40_000, -1)
    probs = logits[0].softmax(-1)
    kept = torch.tensor([True, True, top_p == 1.0, top_p == 1.0, top_p == 1.0, True])  # top_p 0.8: 0, 1, then 5
    expected = torch.where(kept, probs, 0) / probs[kept].sum()
    chosen = _next_tokens(logits, SamplingParams(temperature=1.0, top_p=top_p), torch.Generator().manual_seed(0))
    frequencies = torch.bincount(chosen, minlength=6) / len(chosen)
    assert torch.all(frequencies[~kept] == 0)
    # three standard errors of a frequency from 40,000 draws (about 0.0075 at p = 0.5)
    assert torch.allclose(frequencies, expected, atol=3 * (0.25 / len(chosen)) ** 0.5)
