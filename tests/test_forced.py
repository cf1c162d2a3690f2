"""The `forced` importance estimator: branch probes off one KV cache equal full re-encoding,
the formula over openings and answer forms, records that say how they were scored, and a clear
error for engines that cannot give probabilities."""

from __future__ import annotations

import math

import pytest

from longshort.engines.base import Engine
from longshort.engines.probe import branch_logprobs, naive_logprobs
from longshort.errors import LongshortError
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.importance import ImportanceConfig
from longshort.thoughts.scoring import answer_targets, score_record
from longshort.thoughts.synthetic import SynthConfig, generate


@pytest.fixture(scope="module")
def tiny():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("tiny-random")
    yield eng
    eng.close()


SEGMENTS = ["Okay, Mia starts with 3 apples.", "\n\nFirst, 3 + 4 = 7.", "\n\nWait, let me check: 3 + 4 = 7. Yes.",
            "\n\nSo the answer is 7."]
STEMS = ["\n</think>\n\nThe final answer is \\boxed{", "\n</think>\n\n\\boxed{"]
TARGETS = ["7}", " 7}", "12}"]


def test_branches_off_one_cache_equal_full_reencoding(tiny):
    prompt = tiny.render(_request())
    # small chunks and groups: the text is encoded in several passes, the probes in several groups
    fast = branch_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, STEMS, TARGETS, chunk_tokens=7,
                           branch_tokens=9)
    slow = naive_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, STEMS, TARGETS)
    assert len(fast) == len(SEGMENTS) + 1
    for i in range(len(fast)):
        for s in range(len(STEMS)):
            for t in range(len(TARGETS)):
                assert fast[i][s][t] == pytest.approx(slow[i][s][t], abs=1e-4)
                assert fast[i][s][t] < 0
    # a different grouping gives the same numbers (the cache is cropped back between groups)
    once = branch_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, STEMS, TARGETS, branch_tokens=4096)
    assert once[3][1][2] == pytest.approx(fast[3][1][2], abs=1e-4)
    # the engine method renders the request itself
    via = tiny.branch_logprobs(_request(), SEGMENTS, STEMS, TARGETS)
    assert via[2][0][0] == pytest.approx(fast[2][0][0], abs=1e-4)


def test_prefixes_past_the_context_are_none(tiny):
    prompt = tiny.render(_request())
    n_prompt = tiny.count_tokens(prompt)
    first = tiny.count_tokens(SEGMENTS[0])
    probe = max(tiny.count_tokens(s) for s in STEMS) + max(tiny.count_tokens(t) for t in TARGETS)
    out = branch_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, STEMS, TARGETS,
                          max_context=n_prompt + first + probe)
    assert out[0] is not None and out[1] is not None and out[2:] == [None] * 3
    assert branch_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, STEMS, TARGETS, max_context=n_prompt) \
        == [None] * 5
    with pytest.raises(ValueError, match="stem"):
        branch_logprobs(tiny.model, tiny.tokenizer, prompt, SEGMENTS, [], TARGETS)


def _request():
    from longshort.engines.base import GenerationRequest

    msgs = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "Mia has 3 apples and finds 4."}]
    return GenerationRequest(messages=msgs, assistant_prefix="<think>\n")


class ProbeEngine(Engine):
    """Answers probes from a table: P(target) = table(prefix thoughts, stem, target)."""

    name = "probe-table"
    model_name = "table"

    def __init__(self, prob):
        self.prob, self.calls = prob, []

    def generate(self, requests, *, progress=False):
        raise AssertionError("forced scoring must not sample")

    def count_tokens(self, text):
        return len(text.split())

    def branch_logprobs(self, request, segments, stems, targets, *, max_context=None):
        self.calls.append((request, list(segments), list(stems), list(targets)))
        return [[[math.log(self.prob("".join(segments[:i]), s, t)) for t in targets] for s in stems]
                for i in range(len(segments) + 1)]


def _record():
    steps = ["Okay, I need the total.", "First, 9 + 10 = 19.", "Hmm, did it say 10? Yes.", "So the answer is 19."]
    th = [{"start": i + 1, "end": i + 1, "type": "x", "category": "other", "text": s} for i, s in enumerate(steps)]
    return {"id": "r1", "problem": "Omar has 9 cards and gets 10. How many?", "answer": "19",
            "response": "<think>\n" + "\n\n".join(steps) + "\n</think>", "steps": steps, "thoughts": th,
            "flags": []}


def test_forced_formula_openings_and_forms():
    def prob(prefix, stem, target):
        base = 0.6 if "= 19" in prefix else 0.1
        base *= 0.5 if "**Final" in stem else 1.0  # the second opening believes it half as much
        return base if target == "19}" else base / 4  # the spaced form carries a quarter more

    eng = ProbeEngine(prob)
    cfg = ImportanceConfig(estimator="forced", delta=0.25)
    out = score_record(_record(), eng, cfg)
    (request, segments, stems, targets), = eng.calls  # one call for the whole trace
    assert request.assistant_prefix == "<think>\n" and request.messages[1]["content"].startswith("Omar")
    assert segments[0] == "Okay, I need the total." and segments[1] == "\n\nFirst, 9 + 10 = 19."
    assert all(s.startswith("\n</think>\n\n") and s.endswith("\\boxed{") for s in stems) and len(stems) == 2
    assert targets == answer_targets("19") == ["19}", " 19}"]
    lo, hi = 0.1 * 1.25 * 0.75, 0.6 * 1.25 * 0.75  # mean over openings (1 and 0.5) of P(form 1) + P(form 2)
    acc = [t["acc"] for t in out["thoughts"]]
    assert out["importance"]["acc0"] == pytest.approx(lo)
    assert acc == pytest.approx([lo, hi, hi, hi])
    assert out["thoughts"][1]["e"] == pytest.approx(hi - lo) and out["thoughts"][2]["e"] == pytest.approx(0.0)
    assert all(t["bound"] is None for t in out["thoughts"])  # an exact probability: no sampling bound
    assert out["thoughts"][1]["score"] == pytest.approx((hi - lo) * out["thoughts"][1]["d"])
    imp = out["importance"]
    assert imp["estimator"] == "forced" and imp["model"] == "table" and imp["num_rollouts"] == 0
    assert imp["probes"] == 5 * 2 * 2 and imp["answer_openings"] == cfg.answer_openings
    assert "right" not in out["thoughts"][0] and "unfinished" not in out["thoughts"][0]


def test_forced_needs_an_engine_with_probabilities():
    class NoProbs(Engine):
        name = "openai"

        def generate(self, requests, *, progress=False):
            return []

        def count_tokens(self, text):
            return 1

    with pytest.raises(LongshortError, match="estimator 'forced'.*'openai' engine.*--estimator rollout"):
        score_record(_record(), NoProbs(), ImportanceConfig(estimator="forced"))
    with pytest.raises(ValueError, match="boxed"):
        ImportanceConfig(estimator="forced", answer_openings=["The answer is "])


def test_forced_on_real_tiny_model(tiny):
    rec = chunk_records(generate(1, seed=4, config=SynthConfig(num_ops=2, redundancy=1, vary_ops=False)),
                        ChunkConfig(method="gold"))[0]
    out = score_record(rec, tiny, ImportanceConfig(estimator="forced"))
    imp = out["importance"]
    assert imp["estimator"] == "forced" and imp["model"] == "tiny-random" and imp["scored_thoughts"] == len(rec["thoughts"])
    accs = [imp["acc0"]] + [t["acc"] for t in out["thoughts"]]
    assert all(0.0 < a < 1.0 for a in accs)
    # the same numbers as full re-encoding of every prefix
    texts = [t["text"] for t in rec["thoughts"]]
    from longshort.engines.base import GenerationRequest
    from longshort.thoughts.importance import solo_messages

    prompt = tiny.render(GenerationRequest(messages=solo_messages(rec["problem"]), assistant_prefix="<think>\n"))
    segs = [("\n\n" if k else "") + t for k, t in enumerate(texts)]
    stems = ["\n</think>\n\n" + o for o in ImportanceConfig().answer_openings]
    ref = naive_logprobs(tiny.model, tiny.tokenizer, prompt, segs[:2], stems, answer_targets(rec["answer"]))
    want = [sum(sum(math.exp(x) for x in r) for r in row) / len(row) for row in ref]
    assert accs[:3] == pytest.approx(want, rel=1e-3)
    assert score_record(rec, tiny, ImportanceConfig(estimator="forced"))["thoughts"] == out["thoughts"]


@pytest.mark.slow
def test_forced_on_embedded_smollm2_sees_the_answer():
    from longshort.engines.hf import HFEngine

    eng = HFEngine("smollm2-135m")
    rec = chunk_records(generate(1, seed=9, config=SynthConfig(num_ops=2, redundancy=1, vary_ops=False)),
                        ChunkConfig(method="gold"))[0]
    out = score_record(rec, eng, ImportanceConfig(estimator="forced"))
    comps = [t for t, g in zip(out["thoughts"], rec["gold_thoughts"], strict=True) if g["essential"]]
    # the question alone barely predicts the answer; after the last computation the model copies it
    assert out["importance"]["acc0"] < 0.2 and comps[-1]["acc"] > 2 * out["importance"]["acc0"]
    assert comps[-1]["e"] > 0


def test_cli_score_forced(tmp_path, capsys):
    from longshort.cli import main as _main

    def main(argv):
        try:
            return _main(argv)
        except SystemExit as exc:  # click exits the process on success
            return int(exc.code or 0)

    synth, chunks, scored = (tmp_path / n for n in ("s.jsonl", "c.jsonl", "sc.jsonl"))
    assert main(["synth", "--n", "2", "--seed", "4", "--num-ops", "1", "--fixed-ops", "--redundancy", "1",
                 "--out", str(synth)]) == 0
    assert main(["chunk", "--input", str(synth), "--out", str(chunks), "--method", "gold"]) == 0
    # an engine that cannot give probabilities is refused before any model loads
    assert main(["score", "--input", str(chunks), "--out", str(scored), "--estimator", "forced",
                 "--engine", "openai", "--base-url", "http://127.0.0.1:9"]) != 0
    assert "--estimator forced" in capsys.readouterr().err and not scored.exists()
    assert main(["score", "--input", str(chunks), "--out", str(scored), "--estimator", "nope"]) != 0
    assert main(["score", "--input", str(chunks), "--out", str(scored), "--model", "tiny-random",
                 "--estimator", "forced"]) == 0
    assert "(forced, tiny-random): 0 rollouts" in capsys.readouterr().out
    import json

    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(rows) == 2 and all(r["importance"]["estimator"] == "forced" for r in rows)
    assert all(r["importance"]["model"] == "tiny-random" and r["thoughts"][0]["bound"] is None for r in rows)
