"""The `ablation` importance estimator: the branched fast path equals two full passes per
thought, the share formula, records that say how they were scored, and clear errors."""

from __future__ import annotations

import pytest

from longshort.engines.base import Engine
from longshort.engines.probe import ablation_logprobs, naive_ablation_logprobs
from longshort.errors import LongshortError
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.importance import MATH_TOKENS, ImportanceConfig, plan
from longshort.thoughts.scoring import score_record
from longshort.thoughts.synthetic import SynthConfig, generate


@pytest.fixture(scope="module")
def tiny():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("tiny-random")
    yield eng
    eng.close()


SEGMENTS = ["Okay, Mia starts with 3 apples.", "\n\nFirst, 3 + 4 = 7.", "\n\nWait, let me check: 3 + 4 = 7. Yes.",
            "\n\nThen 7 * 2 = 14.", "\n\nSo the answer is 14."]
TAIL = "\n</think>\n\nThe final answer is \\boxed{14}."


def _request():
    from longshort.engines.base import GenerationRequest

    msgs = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "Mia has 3 apples and finds 4."}]
    return GenerationRequest(messages=msgs, assistant_prefix="<think>\n")


@pytest.mark.parametrize("window", [None, 5, 1])
def test_branches_equal_two_full_passes_per_segment(tiny, window):
    prompt = tiny.render(_request())
    # small chunks and groups: the text is encoded in several passes, the branches in several groups
    fast = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=window, chunk_tokens=7,
                             branch_tokens=9)
    slow = naive_ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=window)
    assert len(fast) == len(slow) == len(SEGMENTS)
    for f, s in zip(fast, slow, strict=True):
        assert f is not None and s is not None
        assert f[2] == s[2] and (window is None or f[2] <= window)
        assert f[0] == pytest.approx(s[0], abs=1e-3) and f[1] == pytest.approx(s[1], abs=1e-3)
        assert f[0] < 0 and f[1] < 0
    # removing a segment changes what follows (a random model still conditions on its input)
    assert any(abs(f[0] - f[1]) > 1e-4 for f in fast)
    # one pass for all branches gives the same numbers (the cache is cropped back between groups)
    once = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=window)
    assert [o[1] for o in once] == pytest.approx([f[1] for f in fast], abs=1e-3)
    via = tiny.ablation_logprobs(_request(), SEGMENTS, TAIL, window=window)
    assert via[2][1] == pytest.approx(fast[2][1], abs=1e-3)


def test_counting_only_the_math_tokens(tiny):
    prompt = tiny.render(_request())
    mask = tiny.vocab_mask(MATH_TOKENS)
    assert mask is tiny.vocab_mask(MATH_TOKENS)  # computed once per pattern
    ids = tiny.tokenizer(" 3 + 4 = 14 apples **Final", add_special_tokens=False).input_ids
    marked = {tiny.tokenizer.decode([i]) for i in ids if mask[i]}
    assert {"apples", " apples", "**", "Final"}.isdisjoint(marked) and any("4" in m for m in marked)
    fast = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=12, chunk_tokens=7,
                             branch_tokens=9, counted=mask)
    slow = naive_ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=12, counted=mask)
    every = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, window=12)
    for f, s, a in zip(fast, slow, every, strict=True):
        assert f[2] == s[2] and 0 < f[2] < a[2]  # fewer tokens count, the same ones in both paths
        assert f[0] == pytest.approx(s[0], abs=1e-3) and f[1] == pytest.approx(s[1], abs=1e-3)
        assert f[0] > a[0]  # a sum over fewer (negative) log-probabilities
    via = tiny.ablation_logprobs(_request(), SEGMENTS, TAIL, window=12, count_pattern=MATH_TOKENS)
    assert [v[2] for v in via] == [f[2] for f in fast]


def test_no_rest_is_zero_and_past_the_context_is_none(tiny):
    prompt = tiny.render(_request())
    out = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, "", window=None)
    assert out[-1] == (0.0, 0.0, 0) and all(o[2] > 0 for o in out[:-1])  # the last segment has no rest
    assert naive_ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, "", window=None)[-1] == (0.0, 0.0, 0)
    n_prompt = tiny.count_tokens(prompt)
    first_two = tiny.count_tokens(SEGMENTS[0] + SEGMENTS[1])
    cut = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, max_context=n_prompt + first_two + 2)
    assert cut[0] is not None and cut[2:] == [None] * 3
    # the context ends exactly after the last segment: its rest (the tail) is cut, not absent
    whole = tiny.count_tokens(prompt + "".join(SEGMENTS))
    end = ablation_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, TAIL, max_context=whole)
    assert end[-1] is None and end[-2] is not None
    with pytest.raises(ValueError, match="prompt"):
        ablation_logprobs(tiny.model, tiny.tokenizer, "", SEGMENTS)


class TableEngine(Engine):
    """Answers ablation probes from a table of dependences D_i (nats)."""

    name = "table"
    model_name = "table"

    def __init__(self, dep):
        self.dep, self.calls = dep, []

    def generate(self, requests, *, progress=False):
        raise AssertionError("ablation scoring must not sample")

    def count_tokens(self, text):
        return len(text.split())

    def ablation_logprobs(self, request, segments, tail="", *, window=None, max_context=None, count_pattern=None):
        self.calls.append((request, list(segments), tail, window, count_pattern))
        return [(-10.0, -10.0 - d, 7) for d in self.dep] + [(0.0, 0.0, 0)]


def _record():
    steps = ["Okay, I need the total.", "First, 9 + 10 = 19.", "Hmm, did it say 10? Yes.", "So the answer is 19."]
    th = [{"start": i + 1, "end": i + 1, "type": "x", "category": "other", "text": s} for i, s in enumerate(steps)]
    return {"id": "r1", "problem": "Omar has 9 cards and gets 10. How many?", "answer": "19",
            "response": "<think>\n" + "\n\n".join(steps) + "\n</think>\n\nThe answer is \\boxed{19}.",
            "steps": steps, "thoughts": th, "flags": []}


def test_shares_of_the_dependence():
    eng = TableEngine([1.0, 6.0, -2.0])  # the last thought has no rest: D = 0
    out = score_record(_record(), eng, ImportanceConfig(estimator="ablation", delta=0.25, ablation_window=64))
    (request, segments, tail, window, pattern), = eng.calls  # one call for the whole trace
    assert pattern == MATH_TOKENS  # the default counts the rest's math tokens
    assert request.assistant_prefix == "<think>\n" and request.messages[1]["content"].startswith("Omar")
    assert segments[0] == "Okay, I need the total." and segments[1] == "\n\nFirst, 9 + 10 = 19."
    assert tail == "\n</think>\n\nThe answer is \\boxed{19}." and window == 64
    th = out["thoughts"]
    assert [t["dependence"] for t in th] == pytest.approx([1.0, 6.0, -2.0, 0.0])
    assert [t["e"] for t in th] == pytest.approx([1 / 7, 6 / 7, -2 / 7, 0.0])  # shares of the positive mass
    assert th[1]["score"] == pytest.approx(6 / 7 * th[1]["d"]) and th[2]["score"] < 0 < th[0]["score"]
    assert [t["rest_tokens"] for t in th] == [7, 7, 7, 0] and all(t["bound"] is None for t in th)
    imp = out["importance"]
    assert imp["estimator"] == "ablation" and imp["num_rollouts"] == 0 and imp["generated_tokens"] == 0
    assert imp["dependence_mass"] == pytest.approx(7.0) and imp["acc0"] == 0.0
    # without the written answer in the rest
    score_record(_record(), eng, ImportanceConfig(estimator="ablation", ablation_tail=False, ablation_tokens="all"))
    assert eng.calls[-1][2] == "" and eng.calls[-1][4] is None
    # the plan samples nothing
    p = plan([_record()], eng, ImportanceConfig(estimator="ablation"))
    assert p["est_generated_tokens"] == 0 and p["rollouts"] == 0


def test_ablation_needs_an_engine_with_probabilities():
    class NoProbs(Engine):
        name = "openai"

        def generate(self, requests, *, progress=False):
            return []

        def count_tokens(self, text):
            return 1

    with pytest.raises(LongshortError, match="estimator 'ablation'.*'openai' engine.*--estimator rollout"):
        score_record(_record(), NoProbs(), ImportanceConfig(estimator="ablation"))


def test_ablation_on_real_tiny_model(tiny):
    rec = chunk_records(generate(1, seed=4, config=SynthConfig(num_ops=2, redundancy=1, vary_ops=False)),
                        ChunkConfig(method="gold"))[0]
    out = score_record(rec, tiny, ImportanceConfig(estimator="ablation"))
    imp = out["importance"]
    assert imp["model"] == "tiny-random" and imp["scored_thoughts"] == len(rec["thoughts"])
    dep = [t["dependence"] for t in out["thoughts"]]
    assert all(isinstance(d, float) for d in dep)  # the last one too: the written answer follows it
    no_tail = score_record(rec, tiny, ImportanceConfig(estimator="ablation", ablation_tail=False))
    assert no_tail["thoughts"][-1]["dependence"] == 0.0 and no_tail["thoughts"][-1]["rest_tokens"] == 0
    assert out["thoughts"][-1]["acc"] == pytest.approx(sum(t["e"] for t in out["thoughts"]))
    assert score_record(rec, tiny, ImportanceConfig(estimator="ablation"))["thoughts"] == out["thoughts"]


@pytest.mark.slow
def test_ablation_on_embedded_smollm2_ranks_computations_first():
    from longshort.engines.hf import HFEngine
    from longshort.thoughts.quality import importance_auroc

    eng = HFEngine("smollm2-135m")
    recs = chunk_records(generate(4, seed=11, config=SynthConfig(num_ops=3, redundancy=3)), ChunkConfig(method="gold"))
    scored = [score_record(r, eng, ImportanceConfig(estimator="ablation")) for r in recs]
    eng.close()
    assert importance_auroc(scored)["auroc"] > 0.7


def test_cli_score_ablation_refuses_engines_without_probabilities(tmp_path, capsys):
    from longshort.cli import main as _main

    def main(argv):
        try:
            return _main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)

    synth, chunks, scored = (tmp_path / n for n in ("s.jsonl", "c.jsonl", "sc.jsonl"))
    assert main(["synth", "--n", "2", "--seed", "4", "--num-ops", "1", "--fixed-ops", "--redundancy", "1",
                 "--out", str(synth)]) == 0
    assert main(["chunk", "--input", str(synth), "--out", str(chunks), "--method", "gold"]) == 0
    assert main(["score", "--input", str(chunks), "--out", str(scored), "--estimator", "ablation",
                 "--engine", "openai", "--base-url", "http://127.0.0.1:9"]) != 0
    assert "--estimator ablation" in capsys.readouterr().err and not scored.exists()
    assert main(["score", "--input", str(chunks), "--out", str(scored), "--estimator", "ablation",
                 "--ablation-window", "32", "--dry-run"]) == 0
    assert "no rollouts (ablation estimator)" in capsys.readouterr().out
