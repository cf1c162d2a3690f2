"""The sampler: the nucleus found without a sort equals the one a full sort gives (flat rows,
peaked rows, ties, masked tokens), draws follow the renormalised nucleus distribution, and a
seeded row's tokens do not depend on the other rows of its batch."""

from __future__ import annotations

import math

import pytest
import torch

from longshort.engines.sampling import (
    _mass_above,
    nucleus_threshold,
    nucleus_threshold_by_sort,
    row_uniform,
    sample_tokens,
)


def brute_nucleus(p: list[float], top_p: float) -> set[int]:
    """The nucleus by its definition, in exact rational arithmetic: the most likely tokens down
    to the first at which their mass reaches top_p of the total, plus every token tied with it."""
    from fractions import Fraction

    exact = [Fraction(x) for x in p]
    need = Fraction(top_p) * sum(exact)
    order = sorted(range(len(p)), key=lambda i: -exact[i])
    run = Fraction(0)
    for i in order:
        run += exact[i]
        if run >= need:
            return {j for j in range(len(p)) if exact[j] >= exact[i]}
    return set(range(len(p)))


def logit_rows(gen: torch.Generator, rows: int, vocab: int) -> torch.Tensor:
    """Rows of many shapes: peaked, flat, near-uniform, exact ties, a few dominant tokens, masked."""
    out = []
    for r in range(rows):
        kind = r % 6
        if kind == 0:
            x = torch.randn(vocab, generator=gen) * 4
        elif kind == 1:
            x = torch.randn(vocab, generator=gen) * 0.02  # flat, like the tiny random models
        elif kind == 2:
            x = torch.randint(0, 4, (vocab,), generator=gen).float()  # many exact ties
        elif kind == 3:
            x = torch.zeros(vocab)  # all equal
        elif kind == 4:
            x = torch.full((vocab,), -5.0)
            x[torch.randint(0, vocab, (3,), generator=gen)] = torch.randn(3, generator=gen) * 2
        else:
            x = torch.randn(vocab, generator=gen)
            masked = torch.rand(vocab, generator=gen) < 0.3
            masked[0] = False
            x[masked] = float("-inf")  # masked tokens (p = 0)
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("vocab", [1, 2, 7, 300, 5000])
def test_threshold_without_sort_equals_the_sorted_reference_and_the_definition(vocab):
    gen = torch.Generator().manual_seed(vocab)
    for trial in range(4):
        logits = logit_rows(gen, 12, vocab)
        probs = logits.softmax(-1)
        top_p = torch.rand(12, generator=gen) * 0.999 + 0.0005
        top_p[:3] = torch.tensor([0.95, 0.9, 1.0])
        fast = nucleus_threshold(probs, top_p)
        assert torch.equal(fast, nucleus_threshold_by_sort(probs, top_p)), (vocab, trial)
        if vocab <= 300:
            for r in range(12):
                got = set(torch.nonzero(probs[r] >= fast[r])[:, 0].tolist())
                assert got == brute_nucleus(probs[r].tolist(), float(top_p[r])), (vocab, trial, r)


def test_threshold_on_a_full_vocabulary_batch():
    gen = torch.Generator().manual_seed(1)
    probs = logit_rows(gen, 12, 49152).softmax(-1)
    top_p = torch.full((12,), 0.95)
    assert torch.equal(nucleus_threshold(probs, top_p), nucleus_threshold_by_sort(probs, top_p))


@pytest.mark.parametrize("vocab", [300, 5000])  # the batched and the row-by-row mass sums
def test_the_rejection_test_is_nucleus_membership(vocab):
    """Token x is in the nucleus exactly when the mass strictly above p(x) is below top_p of the
    mass: the test the sampler applies to each draw, checked here token by token."""
    gen = torch.Generator().manual_seed(3)
    probs = logit_rows(gen, 12, vocab).softmax(-1)
    top_p = torch.rand(12, generator=gen) * 0.98 + 0.01
    need = top_p.double() * probs.double().sum(-1)
    t_star = nucleus_threshold_by_sort(probs, top_p)
    for x in range(0, vocab, vocab // 300):
        above = _mass_above(probs, probs[:, x].contiguous()).double()
        assert torch.equal(above < need, probs[:, x] >= t_star), x


def draw_frequencies(logits: torch.Tensor, top_p: float, draws: int) -> torch.Tensor:
    rows = logits[None].repeat(draws, 1)
    toks, _ = sample_tokens(rows, torch.ones(draws), torch.full((draws,), top_p), torch.arange(draws), 3,
                            want_logprobs=False)
    return torch.bincount(toks, minlength=logits.shape[-1]).double() / draws


@pytest.mark.parametrize("top_p", [0.95, 0.6, 0.2])
def test_draws_follow_the_renormalised_nucleus(top_p):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(40, generator=gen) * 1.5
    p = logits.softmax(-1)
    inside = p >= nucleus_threshold_by_sort(p[None], torch.tensor([top_p]))[0]
    want = torch.where(inside, p, 0.0).double()
    want /= want.sum()
    draws = 20000
    freq = draw_frequencies(logits, top_p, draws)
    assert freq[~inside].sum() == 0  # nothing outside the nucleus, ever
    # every token within 4.5 binomial standard deviations of its nucleus probability
    sd = (want * (1 - want) / draws).sqrt()
    assert ((freq - want).abs() <= 4.5 * sd + 1e-12).all(), (freq - want).abs().max()


def test_flat_rows_are_sampled_from_their_nucleus_too():
    """A flat row (most of the vocabulary in the nucleus) with exact ties at the boundary."""
    logits = torch.cat([torch.zeros(30), torch.full((10,), -0.5), torch.full((20,), -3.0)])
    p = logits.softmax(-1)
    nucleus = brute_nucleus(p.tolist(), 0.9)
    assert len(nucleus) == 40  # the ten tied at -0.5 all straddle the boundary and all stay
    freq = draw_frequencies(logits, 0.9, 20000)
    assert set(torch.nonzero(freq)[:, 0].tolist()) == nucleus
    assert freq[:30].sum().item() == pytest.approx(30 * p[0].item() / p[:40].sum().item(), abs=0.015)


def test_a_row_samples_the_same_tokens_whatever_its_batch():
    gen = torch.Generator().manual_seed(11)
    vocab = 2000
    rows = logit_rows(gen, 18, vocab)
    temperature = torch.tensor([1.0, 0.7, 0.0, 1.3, 1.0, 0.5] * 3)
    top_p = torch.tensor([0.95, 0.9, 0.8, 1.0, 0.3, 0.999] * 3)
    seeds = torch.arange(18) * 7 + 1
    for step in (0, 1, 17):
        together, lp = sample_tokens(rows, temperature, top_p, seeds, step, want_logprobs=True)
        for r in range(18):
            alone, lp1 = sample_tokens(rows[r:r + 1], temperature[r:r + 1], top_p[r:r + 1], seeds[r:r + 1], step,
                                       want_logprobs=True)
            assert alone.item() == together[r].item(), (step, r)
            assert lp1.item() == pytest.approx(lp[r].item(), abs=1e-6)
        # shuffled batch, other company
        perm = torch.randperm(18, generator=gen)
        shuffled, _ = sample_tokens(rows[perm], temperature[perm], top_p[perm], seeds[perm], step,
                                    want_logprobs=False)
        assert torch.equal(shuffled, together[perm])
    # greedy rows take the argmax whatever their top_p; other seeds give other tokens
    assert together[2].item() == rows[2].argmax().item()
    other, _ = sample_tokens(rows, temperature, top_p, seeds + 1, 0, want_logprobs=False)
    assert not torch.equal(other, sample_tokens(rows, temperature, top_p, seeds, 0, want_logprobs=False)[0])


def test_uniforms_are_a_function_of_seed_step_and_draw():
    seeds = torch.tensor([1, 2, 3])
    a = row_uniform(seeds, 4)
    assert torch.equal(a, row_uniform(seeds, 4, 0)) and torch.equal(a[1:], row_uniform(seeds[1:], 4))
    assert not torch.equal(a, row_uniform(seeds, 4, 1)) and not torch.equal(a, row_uniform(seeds, 5))
    u = row_uniform(torch.arange(20000), 0)
    assert 0 < u.min() and u.max() < 1 and math.isclose(u.mean().item(), 0.5, abs_tol=0.01)
