"""The decode loop's in-place KV cache (`engines.kvcache`): the same tokens and logprobs as
transformers' DynamicCache, through growth, compaction and shared-prefix copies."""

from __future__ import annotations

import pytest
import torch

from longshort.engines import GenerationRequest, SamplingParams, kvcache, make_engine


@pytest.fixture(scope="module")
def engine():
    return make_engine("tiny-random", device="cpu")


def test_growing_layer_matches_dynamic_layer_op_by_op(engine):
    from transformers import DynamicCache

    cfg = engine.model.config
    grown, plain = kvcache.growing_cache(cfg), DynamicCache(config=cfg)
    assert type(grown.layers[0]).__name__ == "_GrowingLayer"
    torch.manual_seed(0)
    shape = (3, 2, 5, 4)
    for step in range(40):  # past CHUNK: at least one reallocation
        k, v = torch.randn(shape), torch.randn(shape)
        a, b = grown.update(k, v, 0), plain.update(k, v, 0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        shape = (shape[0], 2, 1, 4)
        if step == 20:  # compaction, with a repeated row (a shared prefix copied to two rows)
            idx = torch.tensor([2, 0, 0])
            grown.batch_select_indices(idx)
            plain.batch_select_indices(idx)
    assert grown.get_seq_length() == plain.get_seq_length() == 5 + 39
    assert grown.layers[0]._k.shape[-2] > grown.get_seq_length()  # spare columns, written in place


def test_generation_is_identical_to_dynamic_cache(engine, monkeypatch):
    from transformers import DynamicCache

    monkeypatch.setattr(kvcache, "CHUNK", 2)  # grow often
    qs = ["What is 2+2?", "Name a prime number larger than ten.", "Hi", "Compute 17 * 23 step by step."]
    reqs = [GenerationRequest(messages=[{"role": "user", "content": q}],
                              params=SamplingParams(temperature=0.8, max_new_tokens=6 + 5 * i, n=2, seed=i,
                                                    logprobs=True))
            for i, q in enumerate(qs)]  # different lengths: rows finish at different steps (compaction)
    grown = engine.generate(reqs)
    monkeypatch.setattr("longshort.engines.hf.growing_cache", lambda config: DynamicCache(config=config))
    plain = engine.generate(reqs)
    for a, b in zip(grown, plain, strict=True):
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        assert [c.logprobs for c in a.completions] == [c.logprobs for c in b.completions]
