"""Continuous batching: the transformers engine's step-wise decode session (`engines.session`),
per-row sampling steps, and the solver driving one session (`dialogue.collab.iter_solve`).

A row that joins a running decode batch must decode exactly as it would alone: same tokens at
temperature 0 and, seeded, at temperature > 0 (its sampling step counts its own tokens). The
solver's records must not depend on the scheduler: one continuous session gives the dialogues
of the turn-by-turn scheduler (one `generate` call per step, the base class's session).
"""

from __future__ import annotations

import pytest
import torch

from longshort.dialogue.collab import CollabConfig, solve_problems
from longshort.engines import GenerationRequest, SamplingParams, make_engine
from longshort.engines.base import Completion, Engine, GenerationResult, GenerationSession
from longshort.engines.hf import HFEngine
from longshort.engines.sampling import row_uniform, sample_tokens
from longshort.engines.session import ContinuousSession, DecodeSession, PrefixStore

QUESTIONS = ["What is 2+2?", "Name a prime number larger than ten, please, and explain why it is prime.",
             "Hi", "Compute 17 * 23 step by step.", "Is 91 prime?"]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return make_engine("tiny-random", device="cpu", join_threshold=0.0, prefix_cache_tokens=None)


def chat(q: str, **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": q}], params=SamplingParams(**params))


def test_per_row_steps_sample_as_each_row_alone():
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(12, 500, generator=gen) * torch.tensor([4.0, 0.05, 1.0] * 4)[:, None]
    temperature = torch.tensor([1.0, 0.7, 0.0, 1.3] * 3)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.2] * 3)
    seeds = torch.arange(12) * 11 + 3
    steps = torch.tensor([0, 1, 5, 17, 2, 0, 40, 3, 3, 9, 1, 6])
    mixed, lp = sample_tokens(rows, temperature, top_p, seeds, steps, want_logprobs=True)
    for r in range(12):
        alone, lp1 = sample_tokens(rows[r:r + 1], temperature[r:r + 1], top_p[r:r + 1], seeds[r:r + 1],
                                   int(steps[r]), want_logprobs=True)
        assert alone.item() == mixed[r].item(), r
        assert lp1.item() == pytest.approx(lp[r].item(), abs=1e-6)
    # a tensor of equal steps is the int step, draw by draw
    for draw in (0, 2):
        assert torch.equal(row_uniform(seeds, torch.full((12,), 7), draw), row_uniform(seeds, 7, draw))


def _run(session: ContinuousSession, schedule: dict[int, list[GenerationRequest]]) -> dict[int, GenerationResult]:
    """Step `session`, adding schedule[k] before step k; results by id(request)."""
    out: dict[int, GenerationResult] = {}
    k = 0
    while k <= max(schedule) or len(session):
        if k in schedule:
            session.add(schedule[k])
        for req, res in session.step():
            out[id(req)] = res
        k += 1
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_that_join_late_decode_as_alone(engine, temperature, monkeypatch):
    merges = []
    real = DecodeSession._merge

    def spy(self, cache, rows, new):
        merges.append((self.live, len(rows)))
        return real(self, cache, rows, new)

    monkeypatch.setattr(DecodeSession, "_merge", spy)
    reqs = [chat(q, temperature=temperature, top_p=0.8 if i % 2 else 1.0, max_new_tokens=3 + 2 * i,
                 seed=100 + i, n=1 + i % 2, logprobs=True) for i, q in enumerate(QUESTIONS)]
    session = engine.open_session()
    assert isinstance(session, ContinuousSession)
    got = _run(session, {0: reqs[:2], 2: reqs[2:3], 3: reqs[3:], 9: [reqs[0]]})
    assert merges and all(live > 0 for live, _ in merges)  # they joined a running batch
    for r in reqs:
        [alone] = engine.generate([r])
        res = got[id(r)]
        assert res.request is r and res.prompt_tokens == alone.prompt_tokens
        assert [c.token_ids for c in res.completions] == [c.token_ids for c in alone.completions]
        assert [c.finish_reason for c in res.completions] == [c.finish_reason for c in alone.completions]
        for a, b in zip(res.completions, alone.completions, strict=True):
            assert a.text == b.text and a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_session_limits_rows_and_generate_is_unchanged(engine):
    capped = HFEngine.from_model(engine.model, engine.tokenizer, batch_size=2, join_threshold=0.0)
    reqs = [chat(q, temperature=0.7, max_new_tokens=4, seed=i) for i, q in enumerate(QUESTIONS)]
    session = capped.open_session()
    session.add(reqs)
    widths, results = [], {}
    while len(session):
        for req, res in session.step():
            results[id(req)] = res
        widths.append(session.decode.live)
    assert max(widths) <= 2
    together = engine.generate(reqs)
    assert [results[id(r)].completions[0].token_ids for r in reqs] == [g.completions[0].token_ids for g in together]


def test_static_fast_path_and_plain_engines_fall_back_to_batch_sessions(engine):
    static = HFEngine.from_model(engine.model, engine.tokenizer, fast_path="on", compile=False)
    session = static.open_session()
    assert type(session) is GenerationSession
    req = chat("Hi", temperature=0.0, max_new_tokens=3)
    session.add([req])
    [(back, res)] = session.step()
    assert back is req and res.completions[0].token_ids == engine.generate([req])[0].completions[0].token_ids
    assert not len(session)


class _EchoEngine(Engine):
    """An engine without a session of its own: the base class's (one generate call per step)."""

    name = "echo"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests, *, progress=False):
        return [GenerationResult([Completion(text=" \\boxed{1} </answer>", num_tokens=3, finish_reason="stop",
                                             stop="</answer>")], prompt_tokens=1, request=r) for r in requests]


def test_base_session_engine_still_solves():
    recs = solve_problems([{"id": "e", "problem": "1?"}], long_engine=_EchoEngine(),
                          config=CollabConfig(max_turns=1, temperature=0.0))
    assert recs[0]["final_answer"] == "1"


def _problems(n: int) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"{QUESTIONS[i % len(QUESTIONS)]} (variant {i})", "answer": "4"}
            for i in range(n)]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_solver_on_one_session_gives_the_turn_by_turn_dialogues(engine, temperature, monkeypatch):
    """The same problems, seeds and model; the turn-by-turn scheduler is the base class's session.
    A random model never writes a closing tag, so every seventh token id is made an end of
    sequence: sampled turns then end at different steps and next turns join a running batch
    (greedy, the random model repeats one token, which is not one of them)."""
    cont = HFEngine.from_model(engine.model, engine.tokenizer, join_threshold=0.0, prefix_cache_tokens=None)
    ref = HFEngine.from_model(engine.model, engine.tokenizer)
    for e in (cont, ref):
        e._eos = {*e._eos, *range(0, len(engine.tokenizer), 7)}
    monkeypatch.setattr(ref, "open_session", lambda: GenerationSession(ref))
    merges = []
    real = DecodeSession._merge
    monkeypatch.setattr(DecodeSession, "_merge", lambda self, *a: merges.append(self.live) or real(self, *a))

    served = []
    real_take = PrefixStore.take
    monkeypatch.setattr(PrefixStore, "take", lambda self, ids: served.append(ids) or real_take(self, ids))

    cfg = CollabConfig(max_turns=3, max_new_tokens_long=8, max_new_tokens_short=5, temperature=temperature,
                       top_p=0.9, seed=7, samples=2, max_active=3)
    probs = _problems(4)
    a = solve_problems(probs, long_engine=cont, config=cfg)
    b = solve_problems(probs, long_engine=ref, config=cfg)
    assert [r["id"] for r in a] == [r["id"] for r in b] == [f"p{i}#{k}" for i in range(4) for k in range(2)]
    assert a == b  # later turns prefilled from the store decode as if encoded whole
    assert served  # every turn's prompt was looked up in the session's store
    if temperature:
        assert any(live > 0 for live in merges)  # turns joined a running batch
        assert len({len(r["turns"]) for r in a}) > 1 and len({t["tokens"] for r in a for t in r["turns"]}) > 2


def test_a_prompt_that_continues_a_finished_row_encodes_only_its_new_tokens(engine, monkeypatch):
    first = chat(QUESTIONS[1], temperature=0.0, max_new_tokens=6, logprobs=True)
    prompt = engine.encode(engine.render(first))
    session = engine.open_session()
    done = _run(session, {0: [first]})[id(first)].completions[0]
    assert len(session.store) == 1 and session.store.tokens == len(prompt) + done.num_tokens - 1
    extra = engine.encode(" and then, the next turn:")
    follow = GenerationRequest(prompt_token_ids=prompt + done.token_ids + extra,
                               params=SamplingParams(temperature=0.9, max_new_tokens=5, seed=3, logprobs=True))
    widths = []
    real = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda cache, **kw: widths.append(kw["input_ids"].shape[1]) or
                        real(cache, **kw))
    got = _run(session, {0: [follow]})[id(follow)].completions[0]
    assert widths[0] == len(extra) + 1  # the row's last token (never fed) and the new text, not the prompt
    assert session.store.hits == 1 and session.store.reused == len(prompt) + done.num_tokens - 1
    monkeypatch.setattr(engine, "_forward", real)
    [alone] = engine.generate([follow])
    assert got.token_ids == alone.completions[0].token_ids
    assert got.logprobs == pytest.approx(alone.completions[0].logprobs, abs=1e-4)


def test_prefix_store_takes_the_longest_start_and_keeps_to_its_budget():
    def kv(n, fill=0.0):
        return [(torch.full((2, n, 3), fill + i), torch.full((2, n, 3), -fill - i)) for i in range(2)]

    store = PrefixStore(100, min_shared=4)
    a, b = list(range(30)), list(range(20)) + [99] * 10
    store.put(a, kv(30))
    store.put(b, kv(30, 5.0))
    assert store.take([7] * 10) is None  # nothing shared
    got = store.take(list(range(25)) + [1, 2])  # shares 25 with a, 20 with b: a's first 25
    assert got[1][0].shape == (2, 25, 3) and float(got[1][0][0, 0, 0]) == 1.0 and len(store) == 2
    whole = store.take(a + [5])  # a taken whole leaves the store
    assert whole[0][0].shape[1] == 30 and len(store) == 1 and store.tokens == 30
    part = store.take(list(range(10)))  # b's start, one token short: the prompt's last token is encoded
    assert part[0][0].shape[1] == 9 and float(part[0][0][0, 0, 0]) == 5.0 and len(store) == 1
    store.put(b + [1, 2], kv(32))  # extends b: b is dropped
    assert len(store) == 1 and store.tokens == 32
    store.put(list(range(200, 280)), kv(80))  # over the budget: the least recently used goes
    assert len(store) == 1 and store.tokens == 80
    store.put(list(range(3)), kv(3))  # shorter than min_shared: not kept
    assert store.tokens == 80 and store.hits == 3 and store.reused == 64


def test_joins_read_their_shared_system_prompt_from_the_memo(engine, monkeypatch):
    """Requests with one system prompt joining a running batch in groups: the first join encodes
    the shared start, later joins read it from the session's memo (no pass of it), and every
    request decodes as if generated alone."""
    from longshort.engines import prefill as pf

    system = "You are a careful solver. Think step by step, then give the answer in a box. " * 2
    plain = HFEngine.from_model(engine.model, engine.tokenizer, join_threshold=0.0, prefix_cache_tokens=0)

    def req(q: str, i: int) -> GenerationRequest:
        return GenerationRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
                                 params=SamplingParams(temperature=0.8, max_new_tokens=4 + i, seed=i, logprobs=True))

    reqs = [req(q, i) for i, q in enumerate(QUESTIONS * 2)]
    passes = []
    real = pf.prefill

    def spy(forward, *a, **k):
        return real(lambda cache, **kw: passes.append(kw["input_ids"].shape[0]) or forward(cache, **kw), *a, **k)

    monkeypatch.setattr(pf, "prefill", spy)
    session = plain.open_session()
    got = _run(session, {0: reqs[:2], 2: reqs[2:5], 4: reqs[5:8], 6: reqs[8:]})
    memo = session.decode.starts
    assert memo.misses == 1 and memo.hits == 3  # the start encoded by the first join only
    assert len(passes) == 5  # first join: start + rests; the other three: rests only
    for r in reqs:
        [alone] = engine.generate([r])
        assert [c.token_ids for c in got[id(r)].completions] == [c.token_ids for c in alone.completions]
        for a, b in zip(got[id(r)].completions, alone.completions, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
