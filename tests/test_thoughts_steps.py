"""Step splitting and long-CoT ingestion (DESIGN §5, §8), on hand-made and real traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.errors import InputError
from longshort.io import ReadStats
from longshort.thoughts.ingest import load_traces
from longshort.thoughts.steps import split_steps

TRACE_FILES = ["longshort_example", "limo_r1_distill_qwen32b", "aime24_gemini2_flash_thinking",
               "thought_anchors_math", "sat_deepseek_r1", "deltabench_examples", "skyt1_32b_aime24"]


def _write(tmp_path: Path, rows: list, name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_split_on_blank_lines_drops_empty_and_remembers_think():
    s = split_steps("<think>\nA one.\n\n \n\nB two.\n\n\n</think>\n\nSo \\boxed{3}.")
    assert s.steps == ["A one.", "B two."]
    assert (s.open_tag, s.close_tag, s.after, s.split) == ("<think>", "</think>", "So \\boxed{3}.", "blank_line")
    assert s.thinking == "A one.\n\nB two."


def test_close_tag_only_and_no_tags():
    s = split_steps("first\n\nsecond\n</think>\nfinal")
    assert s.steps == ["first", "second"] and s.open_tag is None and s.close_tag == "</think>"
    assert s.after == "final"
    s2 = split_steps("x\n\ny")
    assert s2.steps == ["x", "y"] and s2.after == "" and s2.open_tag is None


def test_unclosed_think_is_flagged():
    s = split_steps("<think>\nstep one\n\nstep two cut off mid")
    assert s.steps == ["step one", "step two cut off mid"]
    assert "unclosed_think" in s.flags


def test_skyt1_wrappers():
    r = "<|begin_of_thought|>\n\nA\n\nB\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nAns \\boxed{1}\n\n<|end_of_solution|>"
    s = split_steps(r)
    assert s.steps == ["A", "B"] and s.open_tag == "<|begin_of_thought|>"
    assert s.final_text == "Ans \\boxed{1}"


def test_no_blank_lines_falls_back_to_lines_then_sentences():
    lines = "\n".join(f"Line {i} computes {i} + 1 = {i + 1} and keeps going for a while." for i in range(12))
    s = split_steps("<think>\n" + lines + "\n</think>")
    assert s.split == "line" and len(s.steps) == 12 and "no_blank_lines" in s.flags
    one = " ".join(f"Sentence {i} says {i} + 1 = {i + 1}." for i in range(30))
    s2 = split_steps(one)
    assert s2.split == "sentence" and len(s2.steps) == 30 and "no_blank_lines" in s2.flags
    # a short single paragraph is a legitimate one-step trace, not a fallback case
    assert split_steps("2 + 2 = 4.").split == "blank_line"


def test_empty_response_raises():
    with pytest.raises(ValueError):
        split_steps("<think>\n\n</think>")
    with pytest.raises(ValueError):
        split_steps("   ")


@pytest.mark.parametrize("name", TRACE_FILES)
def test_every_real_trace_file_loads(shared_dir, name):
    recs = load_traces(shared_dir / "longcot" / f"{name}.jsonl")
    assert recs and len({r["id"] for r in recs}) == len(recs)
    for r in recs[:20]:
        s = split_steps(r["response"])
        assert len(s.steps) > 1
        assert all(p.strip() == p and p for p in s.steps)


def test_annotation_files_get_a_clear_error(shared_dir):
    for name in ("thought_anchors_chunks", "sat_deepseek_r1_sentences"):
        with pytest.raises(InputError, match=r"\.jsonl:1: .*annotation file"):
            load_traces(shared_dir / "longcot" / f"{name}.jsonl")


def test_field_aliases_and_numeric_answer(tmp_path):
    p = _write(tmp_path, [{"question": "1+1?", "gold_answer": 2, "long_cot": "<think>\nIt is 2.\n</think>"},
                          {"idx": 3, "question": "2+2?", "gt": "4", "code": ["four: \\boxed{4}"]}])
    recs = load_traces(p)
    assert recs[0]["problem"] == "1+1?" and recs[0]["answer"] == "2"
    assert recs[0]["source_fields"] == {"problem": "question", "answer": "gold_answer", "response": "long_cot"}
    assert recs[1]["response"] == "four: \\boxed{4}" and recs[0]["id"] != recs[1]["id"]


@pytest.mark.parametrize("bad,field", [
    ({"problem": "p", "answer": "1", "response": ""}, "response"),
    ({"problem": "p", "answer": "1", "response": "<think>\n\n</think>"}, "response"),
    ({"problem": "p", "response": "r"}, "answer"),
    ({"problem": "p", "answer": ["1"], "response": "r"}, "answer"),
    ({"problem": "", "answer": "1", "response": "r"}, "problem"),
    ({"problem": "p", "answer": True, "response": "r"}, "answer"),
])
def test_bad_records_name_file_line_field(tmp_path, bad, field):
    good = {"id": "g", "problem": "p", "answer": "1", "response": "ok"}
    p = _write(tmp_path, [good, "", bad])
    with pytest.raises(InputError) as ei:
        load_traces(p)
    assert ei.value.line == 3 and ei.value.field == field and str(p) in str(ei.value)


def test_skip_bad_counts_and_duplicate_ids(tmp_path):
    good = {"id": "a", "problem": "p", "answer": "1", "response": "ok"}
    p = _write(tmp_path, [good, "{not json", {"id": "b", "problem": "p", "answer": "1", "response": ""},
                          {**good}])
    stats = ReadStats()
    recs = load_traces(p, skip_bad=True, stats=stats)
    assert [r["id"] for r in recs] == ["a"] and stats.skipped == 3
    with pytest.raises(InputError, match="duplicate id"):
        load_traces(_write(tmp_path, [good, good], "dup.jsonl"))
