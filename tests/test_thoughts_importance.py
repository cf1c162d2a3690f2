"""Monte Carlo importance: arithmetic with a scripted engine whose correctness we control,
truncation, metrics, and the real tiny-random HFEngine."""

from __future__ import annotations

import math

import pytest

from longshort.engines.base import Completion, Engine, GenerationResult
from longshort.errors import InputError
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.importance import (
    METRICS,
    ImportanceConfig,
    check_answer,
    hoeffding_bound,
    plan,
    register_metric,
    validate_scoring_input,
)
from longshort.thoughts.scoring import score_record
from longshort.thoughts.synthetic import SynthConfig, generate


class ScriptedEngine(Engine):
    """Completion j of a request is right (\\boxed{answer}) iff `right(prefix, j)`; else \\boxed{0}."""

    name = "scripted"
    model_name = "scripted"

    def __init__(self, right, answer="19", max_context=None):
        self.right, self.answer, self.calls = right, answer, []
        if max_context:
            self.max_context = max_context

    def generate(self, requests, *, progress=False):
        self.calls.append(list(requests))
        return [GenerationResult([Completion(f"so \\boxed{{{self.answer if self.right(r.assistant_prefix, j) else 0}}}",
                                             7, "stop") for j in range(r.params.n)], 10, r) for r in requests]

    def count_tokens(self, text):
        return len(text.split())


def _record():
    steps = ["Okay, so I need the total.", "First, 9 + 10 = 19.", "Wait, let me check: 9 + 10 = 19. Yes.",
             "So the answer is 19."]
    th = [{"start": i + 1, "end": i + 1, "type": t, "category": t, "text": s}
          for i, (s, t) in enumerate(zip(steps, ["understanding", "computation", "verification", "conclusion"],
                                         strict=True))]
    return {"id": "r1", "problem": "Omar has 9 cards and gets 10. How many?", "answer": "19",
            "response": "<think>\n" + "\n\n".join(steps) + "\n</think>", "steps": steps, "thoughts": th,
            "flags": []}


def test_scores_follow_the_formula_with_controlled_correctness():
    rec = _record()
    # the computation makes the answer reachable: 4/5 right after it; before it 1/5
    eng = ScriptedEngine(lambda prefix, j: ("9 + 10 = 19" in prefix and j < 4) or j == 0)
    cfg = ImportanceConfig(rollouts=5, delta=0.25, alpha=0.05)
    out = score_record(rec, eng, cfg)
    assert len(eng.calls) == 1 and len(eng.calls[0]) == 5  # one generate call, prefixes 0..4
    assert all(r.params.n == 5 for r in eng.calls[0])
    assert eng.calls[0][0].assistant_prefix == "<think>\n"
    assert eng.calls[0][2].assistant_prefix == "<think>\nOkay, so I need the total.\n\nFirst, 9 + 10 = 19.\n\n"
    assert len({r.params.seed for r in eng.calls[0]}) == 5
    th = out["thoughts"]
    assert [t["acc"] for t in th] == [0.2, 0.8, 0.8, 0.8] and out["importance"]["acc0"] == 0.2
    y = [len(t["text"].split()) for t in rec["thoughts"]]
    Y = len(rec["response"].split())
    cum = [sum(y[:k + 1]) for k in range(4)]
    for k, t in enumerate(th):
        d = 0.25 ** (cum[k] / Y)
        e = t["acc"] - (0.2 if k == 0 else th[k - 1]["acc"])
        assert t["y"] == cum[k]
        assert t["d"] == pytest.approx(d) and t["e"] == pytest.approx(e)
        assert t["score"] == pytest.approx(e * d)
        assert t["bound"] == pytest.approx(2 * d * math.sqrt(math.log(4 / 0.05) / 10))
    assert th[1]["e"] == pytest.approx(0.6) and th[1]["score"] > 0
    assert th[2]["e"] == pytest.approx(0.0) and th[3]["e"] == pytest.approx(0.0)
    assert out["importance"]["num_rollouts"] == 25 and out["importance"]["generated_tokens"] == 25 * 7


def test_only_the_continuation_is_graded_and_unfinished_is_wrong():
    rec = _record()
    rec["thoughts"][3]["text"] = "So the answer is \\boxed{19}."

    class Fixed(ScriptedEngine):
        """Completion j of every request is outputs[j] = (text, finish_reason)."""

        def __init__(self, outputs):
            super().__init__(None)
            self.outputs = outputs

        def generate(self, requests, *, progress=False):
            self.calls.append(list(requests))
            return [GenerationResult([Completion(t, 3, f) for t, f in self.outputs], 10, r) for r in requests]

    # a box only in the kept prefix never counts: the silent continuation did not answer
    out = score_record(rec, Fixed([("", "stop"), ("", "stop")]), ImportanceConfig(rollouts=2))
    assert [t["acc"] for t in out["thoughts"]] == [0.0, 0.0, 0.0, 0.0]
    assert [t["unfinished"] for t in out["thoughts"]] == [2, 2, 2, 2] and out["importance"]["unfinished"] == 10
    # right, a number that is not boxed (no last-number fallback), a box cut by the token limit
    outputs = [("done: \\boxed{19}", "stop"), ("so it is 19", "stop"), ("\\boxed{19} and then", "length"),
               ("\\boxed{20}", "stop")]
    out = score_record(rec, Fixed(outputs), ImportanceConfig(rollouts=4))
    t = out["thoughts"][0]
    assert t["acc"] == 0.25 and t["right"] == 1 and t["unfinished"] == 2
    imp = out["importance"]
    assert imp["estimator"] == "rollout" and imp["model"] == "scripted" and imp["unfinished0"] == 2
    assert imp["rollouts_cut_by_length"] == 5 and imp["unfinished"] == 10


def test_context_truncation_is_flagged_not_fatal():
    rec = _record()
    eng = ScriptedEngine(lambda p, j: True, max_context=None)
    # prompt words ≈ 50, prefix grows ~5 words per thought; leave room for about two thoughts
    base = ImportanceConfig(rollouts=2, max_new_tokens=4)
    full = plan([rec], eng, base)
    assert full["truncated_traces"] == 0 and full["rollouts"] == 10
    eng.max_context = 0
    tight = base.model_copy(update={"max_context": 80})
    p = plan([rec], eng, tight)
    k = p["requests"] - 1
    assert 0 <= k < 4 and p["truncated_traces"] == 1
    out = score_record(rec, eng, tight)
    assert "context_truncated" in out["flags"] and out["importance"]["scored_thoughts"] == k
    assert all(t["score"] is None for t in out["thoughts"][k:])
    assert all(t["score"] is not None for t in out["thoughts"][:k])
    # a context too small even for the question: nothing scored, still no crash
    out0 = score_record(rec, eng, base.model_copy(update={"max_context": 16}))
    assert out0["importance"]["scored_thoughts"] == 0 and all(t["score"] is None for t in out0["thoughts"])


def test_metric_registry_is_pluggable():
    @register_metric("test_only_acc")
    def only_acc(acc, y, Y, cfg):
        return [{"score": a, "bound": 0.0} for a in acc[1:]]

    try:
        out = score_record(_record(), ScriptedEngine(lambda p, j: "19" in p), ImportanceConfig(rollouts=1, metric="test_only_acc"))
        assert [t["score"] for t in out["thoughts"]] == [0.0, 1.0, 1.0, 1.0]
        gain = score_record(_record(), ScriptedEngine(lambda p, j: "19" in p), ImportanceConfig(rollouts=1, metric="gain"))
        assert [t["score"] for t in gain["thoughts"]] == [0.0, 1.0, 0.0, 0.0]
        with pytest.raises(InputError, match="unknown importance metric"):
            score_record(_record(), ScriptedEngine(lambda p, j: True), ImportanceConfig(metric="nope"))
    finally:
        METRICS.pop("test_only_acc")


def test_hoeffding_bound_shrinks_with_rollouts():
    assert hoeffding_bound(1.0, 5, 0.05) == pytest.approx(2 * math.sqrt(math.log(80) / 10))
    # the constant the docs and the config help state (issue 9: it was documented as 0.68)
    assert round(hoeffding_bound(1.0, 5, 0.05), 2) == 1.32
    assert "1.32" in ImportanceConfig.model_fields["rollouts"].description
    assert hoeffding_bound(0.5, 20, 0.05) < hoeffding_bound(0.5, 5, 0.05)


def test_bad_scoring_input():
    rec = _record()
    assert check_answer("19") is None
    for bad in ("", "\\frac{1}{2", "x" * 400, ["1"]):
        assert check_answer(bad)
    with pytest.raises(InputError, match="answer cannot be parsed"):
        validate_scoring_input([{**rec, "answer": "\\frac{1"}], path="f.jsonl")
    with pytest.raises(InputError, match=r"f.jsonl:2: field 'thoughts'"):
        validate_scoring_input([rec, {**rec, "thoughts": rec["thoughts"][:2]}], path="f.jsonl")
    with pytest.raises(InputError, match="run `longshort chunk` first"):
        validate_scoring_input([{k: v for k, v in rec.items() if k != "thoughts"}])


@pytest.fixture(scope="module")
def tiny_engine():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("tiny-random")
    yield eng
    eng.close()


def test_importance_on_real_tiny_model(tiny_engine):
    small = SynthConfig(num_ops=1, redundancy=1, vary_ops=False)
    rec = chunk_records(generate(1, seed=3, config=small, id_prefix="t-"), ChunkConfig(method="gold"))[0]
    cfg = ImportanceConfig(rollouts=3, max_new_tokens=4, seed=7)
    out = score_record(rec, tiny_engine, cfg)
    n = len(rec["thoughts"])
    imp = out["importance"]
    assert imp["num_rollouts"] == (n + 1) * 3 and 0 < imp["generated_tokens"] <= (n + 1) * 3 * 4
    for t in out["thoughts"]:
        assert t["acc"] * 3 == pytest.approx(round(t["acc"] * 3))
        assert -1.0 <= t["score"] <= 1.0 and 0 < t["d"] <= 1.0
    # 4 random tokens never reach a final answer: every rollout is unfinished and wrong, even from
    # the full trace whose last thought holds the boxed answer (the prefix's box does not count)
    assert all(t["acc"] == 0.0 and t["unfinished"] == 3 for t in out["thoughts"])
    assert imp["unfinished"] == (n + 1) * 3 and imp["estimator"] == "rollout"
    # y is measured in the model's tokens and grows to the whole trace
    ys = [t["y"] for t in out["thoughts"]]
    assert ys == sorted(ys) and ys[-1] <= imp["Y"] == tiny_engine.count_tokens(rec["response"])
    again = score_record(rec, tiny_engine, cfg)
    assert [t["acc"] for t in again["thoughts"]] == [t["acc"] for t in out["thoughts"]]
    assert again["importance"]["generated_tokens"] == imp["generated_tokens"]


@pytest.mark.slow
def test_importance_on_embedded_smollm2():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("smollm2-135m")
    small = SynthConfig(num_ops=1, redundancy=1, vary_ops=False)
    rec = chunk_records(generate(1, seed=9, config=small), ChunkConfig(method="gold"))[0]
    out = score_record(rec, eng, ImportanceConfig(rollouts=2, max_new_tokens=24))
    imp = out["importance"]
    assert imp["num_rollouts"] == 2 * (len(rec["thoughts"]) + 1) and imp["model"] == "smollm2-135m"
    assert all(t["score"] is not None and abs(t["score"]) <= 1 for t in out["thoughts"])
    # a rollout counts as right only when it finished with a box, so right <= finished
    assert all(t["right"] <= 2 - t["unfinished"] for t in out["thoughts"])
