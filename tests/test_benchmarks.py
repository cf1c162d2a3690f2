"""Benchmark registry and loaders: real shared files, data-dir resolution, JSONL, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from longshort.errors import InputError, LongshortError
from longshort.evaluation.benchmarks import (
    BENCHMARKS,
    ENV_DATA_DIR,
    known_benchmarks,
    load_benchmark,
    resolve_data_dir,
)

COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "gpqa_diamond": 198, "gsm8k": 1319}


@pytest.fixture()
def bench_dir(shared_dir) -> Path:
    return shared_dir / "benchmarks"


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_registry_names():
    assert known_benchmarks() == sorted(COUNTS)
    assert BENCHMARKS["gpqa"] is BENCHMARKS["gpqa_diamond"]
    assert BENCHMARKS["gsm8k_test"] is BENCHMARKS["gsm8k"]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_registered_benchmark_loads(name, bench_dir):
    recs = load_benchmark(name, data_dir=bench_dir)
    assert len(recs) == COUNTS[name]
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        assert r["problem"].strip() and isinstance(r["answer"], str) and r["answer"]
        assert r["benchmark"] == name


def test_gsm8k_answers_are_the_hash_values(bench_dir):
    recs = load_benchmark("gsm8k", data_dir=bench_dir)
    for r in recs:
        assert r["answer"] == r["solution"].rsplit("####", 1)[1].strip().replace(",", "")
    assert recs[0]["answer"] == "18"


def test_gpqa_letters_in_problem_text_and_stored_seed0_order(bench_dir):
    recs = load_benchmark("gpqa_diamond", data_dir=bench_dir)
    # the distribution SOURCES.md documents for the seed-0 permutation
    assert Counter(r["answer"] for r in recs) == {"A": 51, "B": 46, "C": 57, "D": 44}
    with gzip.open(bench_dir / "gpqa_diamond.jsonl.gz", "rt", encoding="utf-8") as fh:
        raw = {r["id"]: r for r in map(json.loads, fh)}
    for r in recs:
        assert r["grading"] == "choice" and len(r["choices"]) == 4
        for letter, text in zip("ABCD", r["choices"], strict=True):
            assert f"\n{letter}) {text}" in r["problem"]
        assert r["choices"] == raw[r["id"]]["choices"]
        assert r["problem"].startswith(raw[r["id"]]["problem"])


def test_gpqa_other_seed_reorders_and_gold_follows_the_right_text(bench_dir):
    base = {r["id"]: r for r in load_benchmark("gpqa", data_dir=bench_dir)}
    s1 = load_benchmark("gpqa", data_dir=bench_dir, seed=1)
    again = load_benchmark("gpqa", data_dir=bench_dir, seed=1)
    assert [r["answer"] for r in s1] == [r["answer"] for r in again]  # deterministic
    moved = 0
    for r in s1:
        b = base[r["id"]]
        right = b["choices"]["ABCD".index(b["answer"])]
        assert r["choices"]["ABCD".index(r["answer"])] == right
        assert sorted(r["choices"]) == sorted(b["choices"])
        moved += r["choices"] != b["choices"]
    assert moved > 150


def test_limit_keeps_source_order(bench_dir):
    recs = load_benchmark("aime24", data_dir=bench_dir, limit=3)
    assert [r["id"] for r in recs] == ["2024-I-1", "2024-I-2", "2024-I-3"]
    with pytest.raises(InputError, match="limit"):
        load_benchmark("aime24", data_dir=bench_dir, limit=0)


def test_data_dir_from_env_and_argument(tmp_path, monkeypatch, bench_dir):
    shutil.copy(bench_dir / "amc23.jsonl", tmp_path / "amc23.jsonl")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert len(load_benchmark("amc23")) == 40
    # a file missing from the chosen directory: the error names where we looked (no hub copy offline)
    with pytest.raises(LongshortError, match=str(tmp_path / "aime24.jsonl")):
        load_benchmark("aime24")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "nope"))
    with pytest.raises(InputError, match="LONGSHORT_DATA"):
        resolve_data_dir()
    with pytest.raises(InputError, match="data directory not found"):
        load_benchmark("amc23", data_dir=tmp_path / "missing")


def test_default_data_dir_is_shared_benchmarks(monkeypatch, bench_dir):
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    assert resolve_data_dir() == bench_dir.resolve()


def test_generic_jsonl_with_choices(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [
        {"id": "q1", "problem": "1+1?", "answer": 2},
        {"problem": "Pick the colour of the sky.", "choices": ["green", "blue", "red"], "answer": "blue"},
        {"problem": "Pick B.", "choices": ["x", "y"], "answer": "(B)"},
    ])
    recs = load_benchmark(str(path))
    assert [r["id"] for r in recs] == ["q1", "mine-1", "mine-2"]
    assert recs[0]["answer"] == "2" and recs[0]["grading"] == "math" and recs[0]["benchmark"] == "mine"
    assert recs[1]["answer"] == "B" and "B) blue" in recs[1]["problem"] and recs[1]["grading"] == "choice"
    assert recs[2]["answer"] == "B"


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "z.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    assert load_benchmark(str(path))[0]["benchmark"] == "z"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError) as err:
        load_benchmark("math5000")
    msg = str(err.value)
    assert "unknown benchmark 'math5000'" in msg
    for name in COUNTS:
        assert name in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_benchmark(str(tmp_path / "absent.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty.jsonl.*no records"):
        load_benchmark(str(tmp_path / "empty.jsonl"))


def test_record_without_answer_names_file_line_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}])
    with pytest.raises(InputError) as err:
        load_benchmark(str(path))
    assert err.value.line == 2 and err.value.field == "answer" and "bad.jsonl" in str(err.value)
    path = _write(tmp_path / "bad2.jsonl", [{"answer": "1"}])
    with pytest.raises(InputError, match="field 'problem'"):
        load_benchmark(str(path))


def test_bad_choices_and_duplicate_ids(tmp_path):
    with pytest.raises(InputError, match="neither a choice letter"):
        load_benchmark(str(_write(tmp_path / "c.jsonl", [{"problem": "p", "choices": ["a", "b"], "answer": "zzz"}])))
    with pytest.raises(InputError, match="field 'choices'"):
        load_benchmark(str(_write(tmp_path / "d.jsonl", [{"problem": "p", "choices": "ab", "answer": "A"}])))
    with pytest.raises(InputError, match="duplicate id"):
        load_benchmark(str(_write(tmp_path / "e.jsonl", [{"id": 1, "problem": "p", "answer": "1"},
                                                         {"id": 1, "problem": "q", "answer": "2"}])))


def test_hub_dataset_error_is_clear_when_unavailable():
    # offline: a network error; online: the dataset does not exist. Either way one clear message.
    with pytest.raises(LongshortError, match="cannot load hub:longshort-tests/no-such-dataset"):
        load_benchmark("hub:longshort-tests/no-such-dataset@test")


def test_line_numbers_count_blank_lines_and_skip_bad_counts(tmp_path):
    from longshort.io import ReadStats

    path = tmp_path / "mixed.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\nnot json\n'
                    '{"problem": "c", "answer": "3"}\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_benchmark(str(path))
    assert err.value.line == 3 and err.value.field == "answer"
    stats = ReadStats()
    recs = load_benchmark(str(path), skip_bad=True, stats=stats)
    assert [r["problem"] for r in recs] == ["a", "c"]
    assert [r["id"] for r in recs] == ["mixed-0", "mixed-4"]   # ids follow lines: stable under skips
    assert stats.skipped == 2 and stats.read == 2
    assert any(":4: malformed JSON" in r for r in stats.reasons)
    bad_only = _write(tmp_path / "bad_only.jsonl", [{"problem": "x"}])
    with pytest.raises(InputError, match="no records left after skipping 1"):
        load_benchmark(str(bad_only), skip_bad=True)
