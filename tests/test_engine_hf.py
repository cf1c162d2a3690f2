"""The transformers engine on the tiny random model: batching, n samples with KV reuse, seeds,
stop strings, logprobs, finish reasons, token counts, batch splitting and OOM retry."""

from __future__ import annotations

import math

import pytest
import torch

from longshort.engines import GenerationRequest, SamplingParams, make_engine, make_pair
from longshort.engines.hf import HFEngine, sample_tokens
from longshort.errors import LongshortError

QUESTIONS = ["What is 2+2?", "Name a prime number larger than ten, please, and explain why it is prime.",
             "Hi", "Compute 17 * 23 step by step."]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return make_engine("tiny-random", device="cpu")


def chat(q: str, **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": q}], params=SamplingParams(**params))


def hf_greedy(engine: HFEngine, req: GenerationRequest, n: int) -> list[int]:
    ids = engine.tokenizer(engine.render(req), return_tensors="pt", add_special_tokens=False)
    out = engine.model.generate(**ids, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_greedy_batch_matches_model_generate_per_prompt(engine):
    # prompts of different lengths in one batch: left padding and positions must be right
    reqs = [chat(q, temperature=0, max_new_tokens=8) for q in QUESTIONS[1:3]]
    reqs.append(GenerationRequest(prompt="Once upon a time", params=SamplingParams(temperature=0, max_new_tokens=8)))
    results = engine.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        c = res.completions[0]
        assert c.token_ids == hf_greedy(engine, req, 8)
        assert c.num_tokens == 8 and c.finish_reason == "length" and c.stop is None
        assert res.prompt_tokens == engine.count_tokens(engine.render(req))
        assert res.request is req


def test_render_applies_template_and_assistant_prefix(engine):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    req = GenerationRequest(messages=msgs, assistant_prefix="<think>\nstep one")
    text = engine.render(req)
    assert text == engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + \
        "<think>\nstep one"
    assert engine.render(GenerationRequest(prompt="raw text")) == "raw text"


def test_token_id_prompts_are_used_as_they_are(engine):
    req = chat(QUESTIONS[1], temperature=0.9, max_new_tokens=10, seed=7, logprobs=True)
    ids = engine.encode(engine.render(req))
    by_ids = GenerationRequest(prompt_token_ids=ids, params=req.params)
    a, b = engine.generate([req, by_ids])
    assert a.completions[0].token_ids == b.completions[0].token_ids and a.prompt_tokens == b.prompt_tokens == len(ids)
    assert a.completions[0].logprobs == b.completions[0].logprobs
    assert engine.render(by_ids) == engine.tokenizer.decode(ids, skip_special_tokens=False)
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(prompt="x", prompt_token_ids=[1])
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(ValueError, match="assistant_prefix"):
        GenerationRequest(prompt_token_ids=[1], assistant_prefix="<think>")


def test_seeds_reproducible_independent_of_batch_and_samples_differ(engine):
    req = chat(QUESTIONS[0], temperature=1.0, max_new_tokens=10, n=3, seed=123)
    alone = engine.generate([req])[0].completions
    mixed = engine.generate([chat(QUESTIONS[1], temperature=0.8, max_new_tokens=6, n=2), req,
                             chat(QUESTIONS[3], temperature=0, max_new_tokens=12)])[1].completions
    assert [c.token_ids for c in alone] == [c.token_ids for c in mixed]
    assert len({tuple(c.token_ids) for c in alone}) == 3  # the n samples are not copies
    other = engine.generate([chat(QUESTIONS[0], temperature=1.0, max_new_tokens=10, n=3, seed=124)])[0]
    assert [c.token_ids for c in other.completions] != [c.token_ids for c in alone]
    torch.manual_seed(0)
    a = engine.generate([chat(QUESTIONS[0], temperature=1.0, max_new_tokens=6)])[0].completions[0].token_ids
    torch.manual_seed(0)
    b = engine.generate([chat(QUESTIONS[0], temperature=1.0, max_new_tokens=6)])[0].completions[0].token_ids
    assert a == b  # unseeded requests follow torch's global RNG


def test_nucleus_samples_do_not_depend_on_the_batch(engine):
    req = chat(QUESTIONS[0], temperature=1.0, top_p=0.9, max_new_tokens=8, n=2, seed=5)
    alone = engine.generate([req])[0].completions
    mixed = engine.generate([chat(QUESTIONS[1], temperature=0.7, top_p=0.3, max_new_tokens=5, n=3, seed=1), req,
                             chat(QUESTIONS[3], temperature=0, max_new_tokens=9)])[1].completions
    assert [c.token_ids for c in alone] == [c.token_ids for c in mixed]
    assert alone[0].token_ids != alone[1].token_ids


def test_kv_reuse_gives_the_same_samples_as_reencoding(engine):
    reqs = [chat(q, temperature=1.0, max_new_tokens=8, n=4, seed=i) for i, q in enumerate(QUESTIONS[:2])]
    reuse = engine.generate(reqs)
    plain = HFEngine.from_model(engine.model, engine.tokenizer, reuse_prefix=False).generate(reqs)
    for a, b in zip(reuse, plain, strict=True):
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]


def test_prompts_that_begin_other_prompts_decode_off_their_cache(engine):
    """Monte Carlo prefixes of one trace (each extends the last), an identical prompt and an
    unrelated one in one batch: encoded once per family, the same samples and logprobs as
    encoding every prompt alone, greedy and sampled, on the dynamic and the static cache."""
    base = engine.render(chat(QUESTIONS[3]))
    steps = ["First, 17 * 20 = 340.", "\n\nThen 17 * 3 = 51.", "\n\nSo 340 + 51 = 391."]
    texts = [base + "".join(steps[:i]) for i in range(len(steps) + 1)] + [base, engine.render(chat(QUESTIONS[2]))]
    from longshort.engines.prefill import prefix_roots

    assert prefix_roots([engine.encode(t) for t in texts]) == [3, 3, 3, 3, 3, 5]  # two families
    for params in (dict(temperature=0.0, max_new_tokens=7), dict(temperature=1.0, top_p=0.9, max_new_tokens=9, n=3)):
        reqs = [GenerationRequest(prompt=t, params=SamplingParams(seed=i, logprobs=True, **params))
                for i, t in enumerate(texts)]
        plain = HFEngine.from_model(engine.model, engine.tokenizer, reuse_prefix=False).generate(reqs)
        for fast in ("off", "on"):
            shared = HFEngine.from_model(engine.model, engine.tokenizer, fast_path=fast, compile=False).generate(reqs)
            for a, b in zip(shared, plain, strict=True):
                assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
                for ca, cb in zip(a.completions, b.completions, strict=True):
                    assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)
                assert a.prompt_tokens == b.prompt_tokens


def _check_prefill_passes(engine, monkeypatch, texts, check_passes) -> None:
    """Generate `texts` (greedy, and sampled with n = 2) on the dynamic and the static cache with
    prefix reuse, recording the shape of every prefill forward pass; `check_passes(shapes)` judges
    them, and the samples and logprobs must be those of encoding every prompt alone."""
    from longshort.engines import prefill as pf

    passes = []
    real = pf.prefill

    def spy(forward, *a, **k):
        return real(lambda cache, **kw: passes.append(tuple(kw["input_ids"].shape)) or forward(cache, **kw), *a, **k)

    monkeypatch.setattr(pf, "prefill", spy)  # what `prefill_bucketed` calls, once per bucket
    for params in (dict(temperature=0.0, max_new_tokens=6), dict(temperature=1.0, top_p=0.9, max_new_tokens=8, n=2)):
        reqs = [GenerationRequest(prompt=t, params=SamplingParams(seed=i, logprobs=True, **params))
                for i, t in enumerate(texts)]
        plain = HFEngine.from_model(engine.model, engine.tokenizer, reuse_prefix=False).generate(reqs)
        for fast in ("off", "on"):
            passes.clear()
            got = HFEngine.from_model(engine.model, engine.tokenizer, fast_path=fast, compile=False).generate(reqs)
            check_passes(list(passes))
            for a, b in zip(got, plain, strict=True):
                assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
                for ca, cb in zip(a.completions, b.completions, strict=True):
                    assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)
                assert a.prompt_tokens == b.prompt_tokens


def test_prompts_sharing_a_start_encode_it_once(engine, monkeypatch):
    """Dialogue turns of many problems share the role's system prompt but no prompt begins
    another: the shared start is encoded once (two forward passes, the first one row per group),
    and the samples and logprobs are those of encoding every prompt alone, next to a prompt that
    begins another, one with nothing shared and n > 1; dynamic and static cache."""
    system = "You are a careful solver. Think step by step, then give the answer in a box. " * 3
    texts = [engine.render(GenerationRequest(messages=[{"role": "system", "content": system},
                                                       {"role": "user", "content": q}])) for q in QUESTIONS]
    texts += [texts[0] + " Let me think.", engine.render(chat("Unrelated"))]
    from longshort.engines import prefill as pf

    ids = [engine.encode(t) for t in texts]
    encoded = sorted(set(pf.prefix_roots(ids)))
    ends = {k: len(ids[k]) for k in encoded}
    groups = pf.shared_starts(ids, encoded, ends)
    assert len({g for g, _ in groups}) == 2 and min(s for _, s in groups) >= pf.MIN_SHARED

    def check(shapes):
        assert [w[0] for w in shapes] == [2, 5]  # the starts, one row per group; then the 5 prompts' rests

    _check_prefill_passes(engine, monkeypatch, texts, check)


def test_length_buckets_split_only_where_padding_costs_more_than_a_pass():
    from longshort.engines.prefill import length_buckets

    assert length_buckets([5]) == [[0]]
    assert length_buckets([100, 100, 100], fixed=0) == [[0, 1, 2]]
    # free passes: every distinct length alone; costly passes: one bucket
    assert length_buckets([3, 9, 3, 9], fixed=0) == [[0, 2], [1, 3]]
    assert length_buckets([3, 9, 3, 9], fixed=100) == [[0, 2, 1, 3]]
    lengths = [7, 120, 30, 118, 8, 31, 9, 119]
    buckets = length_buckets(lengths, fixed=20)
    assert sorted(i for b in buckets for i in b) == list(range(8))
    cost = sum(len(b) * max(lengths[i] for i in b) + 20 for b in buckets)
    assert cost < len(lengths) * max(lengths) + 20 and len(buckets) == 3


def test_prompts_of_very_different_lengths_prefill_in_buckets(engine, monkeypatch):
    """Short and long prompts (with a family of prefixes and n > 1) are prefilled in length
    buckets, several forward passes joined into one batch, and decode exactly as every prompt
    encoded alone: samples and logprobs, dynamic and static cache."""
    long_q = "Explain, step by step and with care, " + "why the sum of two odd numbers is even, " * 12
    base = engine.render(chat(long_q))
    texts = [engine.render(chat(q)) for q in ("Hi", "2+2?", "Is 7 prime?")] + [base, base + " First,", base + " ok"]

    def check(shapes):
        widths = sorted(w for _, w in shapes)
        assert len(shapes) >= 2 and widths[0] * 4 < widths[-1], shapes  # a short bucket and a long one

    _check_prefill_passes(engine, monkeypatch, texts, check)


def test_prefix_roots_group_prompts_by_family():
    from longshort.engines.prefill import prefix_roots

    assert prefix_roots([[1], [1, 2], [1, 2, 3], [2, 1], [1, 2, 3]]) == [2, 2, 2, 3, 2]
    assert prefix_roots([[5, 6], [5, 7]]) == [0, 1]  # a shared start that is neither prompt is no family


def test_stop_strings_cut_text_and_report_the_stop(engine):
    base = chat(QUESTIONS[1], temperature=1.0, max_new_tokens=24, seed=7)
    full = engine.generate([base])[0].completions[0]
    assert full.finish_reason == "length"
    text = full.text
    # two stop strings taken from the sampled text; the earlier one must win
    first, second = text[8:12], text[16:20]
    assert first not in text[:8] and second not in text[:8]
    req = chat(QUESTIONS[1], temperature=1.0, max_new_tokens=24, seed=7, stop=[second, first])
    c = engine.generate([req])[0].completions[0]
    assert c.finish_reason == "stop" and c.stop == first
    assert c.text == text[:8]
    assert c.num_tokens < full.num_tokens and c.token_ids == full.token_ids[:c.num_tokens]
    # generated tokens up to and including the stop are counted
    assert first in engine.tokenizer.decode(c.token_ids)
    assert first not in engine.tokenizer.decode(c.token_ids[:-1])


def test_per_request_limits_and_stops_in_one_batch(engine):
    base = engine.generate([chat(QUESTIONS[2], temperature=1.0, max_new_tokens=20, seed=3)])[0].completions[0]
    stop = base.text[5:9]
    reqs = [chat(QUESTIONS[0], temperature=0, max_new_tokens=3),
            chat(QUESTIONS[2], temperature=1.0, max_new_tokens=20, seed=3, stop=[stop]),
            chat(QUESTIONS[3], temperature=0.7, max_new_tokens=11, n=2, seed=1)]
    res = engine.generate(reqs)
    assert res[0].completions[0].num_tokens == 3
    assert res[1].completions[0].stop == stop and res[1].completions[0].text == base.text[:5]
    assert [c.num_tokens for c in res[2].completions] == [11, 11]


def test_eos_ends_with_stop_and_is_counted(engine):
    req = chat(QUESTIONS[0], temperature=0, max_new_tokens=8)
    first = hf_greedy(engine, req, 1)[0]
    eng = HFEngine.from_model(engine.model, engine.tokenizer)
    eng._eos = {first}  # the token greedy decoding emits first plays EOS here
    c = eng.generate([req])[0].completions[0]
    assert (c.finish_reason, c.num_tokens, c.token_ids, c.stop) == ("stop", 1, [first], None)
    assert c.text == ""


def test_logprobs_match_a_forward_pass(engine):
    req = chat(QUESTIONS[0], temperature=0, max_new_tokens=5, logprobs=True)
    c = engine.generate([req])[0].completions[0]
    assert len(c.logprobs) == c.num_tokens == 5
    prompt = engine.encode(engine.render(req))
    seq = torch.tensor([prompt + c.token_ids])
    with torch.no_grad():
        logp = engine.model(seq).logits[0].float().log_softmax(-1)
    expect = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(c.token_ids)]
    assert c.logprobs == pytest.approx(expect, abs=1e-4)
    assert engine.generate([chat(QUESTIONS[0], temperature=0, max_new_tokens=2)])[0].completions[0].logprobs is None


def test_tiny_top_p_is_greedy_and_sampling_kernel_is_sane():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seeds = torch.tensor([1, 2, 3])
    toks, _ = sample_tokens(logits, torch.ones(3), torch.full((3,), 1e-6), seeds, 0, want_logprobs=False)
    assert toks.tolist() == logits.argmax(-1).tolist()
    # empirical frequencies follow softmax(logits / T)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    toks, _ = sample_tokens(logits, torch.ones(4000), torch.ones(4000), torch.arange(4000), 5, want_logprobs=False)
    freq = torch.bincount(toks, minlength=4).float() / 4000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.03)
    # top-p 0.8 keeps the two most likely tokens (0.64 + 0.24 >= 0.8), renormalised
    toks, _ = sample_tokens(logits, torch.ones(4000), torch.full((4000,), 0.8), torch.arange(4000), 5,
                            want_logprobs=False)
    freq = torch.bincount(toks, minlength=4).float() / 4000
    p = logits[0].softmax(-1)[:2]
    assert freq[2:].sum() == 0 and torch.allclose(freq[:2], p / p.sum(), atol=0.03)


def test_batches_split_to_fit_give_identical_results(engine):
    reqs = [chat(q, temperature=0.9, max_new_tokens=4, n=3, seed=i) for i, q in enumerate(QUESTIONS[1:3])]
    big = engine.generate(reqs)
    small = HFEngine.from_model(engine.model, engine.tokenizer, batch_size=2).generate(reqs, progress=True)
    # budget of 2 rows of the longest request: its 3 samples are split over two batches
    span = engine.count_tokens(engine.render(reqs[0])) + 4
    budget = HFEngine.from_model(engine.model, engine.tokenizer, token_budget=2 * span).generate(reqs)
    for a, b, c in zip(big, small, budget, strict=True):
        assert [x.token_ids for x in a.completions] == [x.token_ids for x in b.completions] \
            == [x.token_ids for x in c.completions]


def test_out_of_memory_halves_the_batch_and_retries(engine, monkeypatch):
    """Fault injection: the model raises torch's real OOM error for batches over 3 rows."""
    eng = HFEngine.from_model(engine.model, engine.tokenizer, batch_size=16)
    real = eng._forward
    seen = []

    def limited(cache, **kw):
        seen.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(cache, **kw)

    monkeypatch.setattr(eng, "_forward", limited)
    reqs = [chat(q, temperature=0, max_new_tokens=4, n=2) for q in QUESTIONS]
    res = eng.generate(reqs)
    expected = engine.generate(reqs)
    assert [c.token_ids for r in res for c in r.completions] == \
        [c.token_ids for r in expected for c in r.completions]
    assert max(seen) > 3 and eng._rows_cap <= 3


def test_static_cache_path_matches_dynamic(engine):
    reqs = [chat(q, temperature=0.8, max_new_tokens=7, n=2, seed=i) for i, q in enumerate(QUESTIONS[:3])]
    static = HFEngine.from_model(engine.model, engine.tokenizer, fast_path="on", compile=False)
    assert static.fast and not engine.fast  # auto: off on CPU
    a, b = engine.generate(reqs), static.generate(reqs)
    assert [c.token_ids for r in a for c in r.completions] == [c.token_ids for r in b for c in r.completions]


def test_different_tokenizer_model_generates():
    eng = make_engine("tiny-random-bytes", device="cpu")
    res = eng.generate([chat("2+2?", temperature=1.0, max_new_tokens=5, seed=0, n=2)])[0]
    assert [c.num_tokens for c in res.completions] == [5, 5]
    text = eng.render(res.request)
    specials = text.count("<|im_start|>") + text.count("<|im_end|>")
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert res.prompt_tokens == len(plain.encode()) + specials  # one token per byte, specials one each


def test_bad_requests_and_engine_names_are_clear_errors(engine):
    with pytest.raises(LongshortError, match="max_new_tokens"):
        engine.generate([chat("x", max_new_tokens=0)])
    with pytest.raises(LongshortError, match="temperature"):
        engine.generate([chat("x", temperature=-1)])
    with pytest.raises(LongshortError, match="accepted: transformers"):
        make_engine("tiny-random", "tgi")
    with pytest.raises(LongshortError, match="base URL"):
        make_engine("tiny-random", "openai")
    with pytest.raises(LongshortError, match="unknown model spec"):
        make_engine("no-such-model")
    with pytest.raises(LongshortError, match="does not take option.*batchsize.*it takes:.*batch_size"):
        make_engine("tiny-random", "hf", batchsize=4)
    with pytest.raises(LongshortError, match="does not take option.*batch_size"):
        make_engine("m", "openai", base_url="http://127.0.0.1:9/v1", batch_size=4)


def test_from_model_with_a_training_peft_policy(engine):
    """RL generates with the policy being trained: a LoRA-wrapped model in train mode. Fresh LoRA
    weights are a no-op, so samples equal the base model's; train mode is restored afterwards."""
    import copy

    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(copy.deepcopy(engine.model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    policy.train()
    reqs = [chat(q, temperature=1.0, max_new_tokens=6, n=2, seed=9, logprobs=True) for q in QUESTIONS[:2]]
    got = HFEngine.from_model(policy, engine.tokenizer).generate(reqs)
    assert policy.training
    want = engine.generate(reqs)
    for a, b in zip(got, want, strict=True):
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        assert a.completions[0].logprobs == pytest.approx(b.completions[0].logprobs, abs=1e-4)


@pytest.mark.slow
def test_smollm2_engine_answers_stops_at_eos_and_at_stop_strings():
    eng = make_engine("smollm2-135m", device="cpu")
    req = chat("What is 2+3? Reply with just the number.", temperature=0, max_new_tokens=24)
    c = eng.generate([req])[0].completions[0]
    assert c.finish_reason == "stop" and c.stop is None and c.num_tokens < 24
    assert c.text.strip() and "5" in c.text and "<|im_end|>" not in c.text
    assert c.token_ids == hf_greedy(eng, req, 24)[:c.num_tokens]  # same tokens as model.generate up to EOS
    cut = eng.generate([chat("What is 2+3? Reply with just the number.", temperature=0, max_new_tokens=24,
                             stop=["5"])])[0].completions[0]
    assert (cut.finish_reason, cut.stop) == ("stop", "5") and cut.text == c.text[:c.text.index("5")]


def test_max_context_reads_the_model_then_the_tokenizer(engine):
    assert engine.max_context == engine.model.config.max_position_embeddings == 4096
    eng = HFEngine.from_model(engine.model, engine.tokenizer)
    eng.model = type("M", (), {"config": type("C", (), {})()})()  # a config without the field
    eng.tokenizer = type("T", (), {"model_max_length": 2048})()
    assert eng.max_context == 2048
    eng.tokenizer = type("T", (), {"model_max_length": int(1e30)})()  # transformers' "unknown"
    assert eng.max_context is None


def test_prompt_longer_than_the_context_is_a_clear_error(engine):
    context = engine.max_context
    with pytest.raises(LongshortError, match=f"model's context is {context} tokens"):
        engine.generate([GenerationRequest(prompt="7 " * context, params=SamplingParams(max_new_tokens=2))])


def test_bf16_engine_keeps_fp32_logits_and_agrees_with_fp32(engine):
    bf = make_engine("tiny-random", device="cpu", dtype="bf16")
    assert next(bf.model.model.parameters()).dtype is torch.bfloat16
    assert bf.model.lm_head.weight.dtype is torch.float32  # the head runs in fp32, the body in bf16
    assert bf.model.model.embed_tokens.weight.dtype is torch.bfloat16
    ids = torch.tensor([engine.encode("Once upon a time")])
    with torch.inference_mode():
        lo, hi = bf.model(ids).logits, engine.model(ids).logits
    assert lo.dtype is torch.float32 and (lo - hi).abs().max() < 0.05
    head = bf.model.lm_head
    for shape in ((1, 1), (3, 1), (2, 5)):  # decode rows, prefill positions: nn.Linear's results
        h = torch.randn(*shape, head.weight.shape[1]).bfloat16()
        want = torch.nn.functional.linear(h.float(), head.weight)
        assert head(h).shape == want.shape and torch.allclose(head(h), want, atol=1e-5)
    req = chat(QUESTIONS[3], temperature=1.0, max_new_tokens=6, n=2, seed=2, logprobs=True)
    c = bf.generate([req])[0].completions[0]
    assert len(c.logprobs) == c.num_tokens == 6 and all(math.isfinite(x) and x < 0 for x in c.logprobs)
    plain = make_engine("tiny-random", device="cpu", dtype="bf16", fp32_logits=False)
    assert plain.model.lm_head.weight.dtype is torch.bfloat16


def test_make_pair_builds_one_engine_per_distinct_model():
    a, b = make_pair("tiny-random", "tiny-random", device="cpu")
    assert a is b and a.model_name == "tiny-random"
    c, d = make_pair("tiny-random", None, device="cpu")
    assert d is None and c is not a
    e, f = make_pair(None, "tiny-random-bytes", device="cpu")
    assert e is None and f.model_name == "tiny-random-bytes"
    with pytest.raises(LongshortError, match="unknown engine"):
        make_pair("tiny-random", "tiny-random", "tgi")
    for eng in (a, c, f):
        eng.close()
