"""CLI: synth → chunk → score → coldstart on tiny-random, resume, dry run, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main as _main


def main(argv: list[str]) -> int:
    """The console entry point's exit code (click exits the process on success)."""
    try:
        return _main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_pipeline_end_to_end(tmp_path, capsys):
    synth, chunks, scored, cs = (tmp_path / n for n in ("s.jsonl", "c.jsonl", "sc.jsonl", "cs"))
    assert main(["synth", "--n", "2", "--seed", "4", "--num-ops", "1", "--fixed-ops", "--redundancy", "1",
                 "--out", str(synth)]) == 0
    assert len(_rows(synth)) == 2
    assert main(["chunk", "--input", str(synth), "--out", str(chunks)]) == 0
    rows = _rows(chunks)
    assert len(rows) == 2 and all(r["chunk_method"] == "segment" and r["thoughts"] for r in rows)
    capsys.readouterr()
    args = ["score", "--input", str(chunks), "--out", str(scored), "--model", "tiny-random",
            "--rollouts", "2", "--max-new-tokens", "4"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    n_req = sum(len(r["thoughts"]) + 1 for r in rows)
    assert f"{n_req} requests (prefixes) x 2 = {2 * n_req} rollouts" in out and not scored.exists()
    assert main(args + ["--limit", "1"]) == 0
    assert len(_rows(scored)) == 1
    assert main(args) == 0  # resumes: scores the remaining one only
    capsys.readouterr()
    sc = _rows(scored)
    assert sorted(r["id"] for r in sc) == sorted(r["id"] for r in rows)
    assert all(r["importance"]["rollouts"] == 2 and "score" in r["thoughts"][0] for r in sc)
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["coldstart", "--input", str(scored), "--out", str(cs), "--tokenizer", "tiny-random"]) == 0
    stats = json.loads((cs / "stats.json").read_text())
    assert stats["dialogues"] == 2 and stats["token_counter"] == "tokenizer"
    assert len(_rows(cs / "sft_long.jsonl")) == stats["examples"]["long"] >= 2
    assert len(_rows(cs / "sft_short.jsonl")) == stats["examples"]["short"] >= 2


def test_chunk_real_file_and_resume(shared_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    src = shared_dir / "longcot" / "sat_deepseek_r1.jsonl"
    assert main(["chunk", "--input", str(src), "--out", str(out)]) == 0
    first = out.read_text()
    assert len(first.splitlines()) == 38
    assert main(["chunk", "--input", str(src), "--out", str(out)]) == 0
    assert out.read_text() == first
    assert "resuming: 38" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    ('{"problem": "p", "answer": "1", "response": ""}\n', "t.jsonl:1: field 'response': empty"),
    ('{"problem": "p", "answer": "1", "response": "ok"}\n{"problem": "q"\n', "t.jsonl:2: malformed JSON"),
    ('\n{"problem": "p", "response": "ok"}\n', "t.jsonl:2: field 'answer': missing"),
])
def test_chunk_bad_input_one_line_error(tmp_path, capsys, content, needle):
    src = tmp_path / "t.jsonl"
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    kept = '{"id": "keep", "thoughts": [], "chunk_method": "heuristic"}\n'  # an earlier chunk record
    out.write_text(kept)
    assert main(["chunk", "--input", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert needle in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert out.read_text() == kept  # nothing written is damaged


def test_chunk_skip_bad_and_no_blank_lines(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    one_para = " ".join(f"Then {i} + 1 = {i + 1}." for i in range(40))
    src.write_text(json.dumps({"id": "a", "problem": "p", "answer": "41", "response": one_para}) + "\n"
                   + json.dumps({"id": "b", "problem": "p", "answer": "1", "response": "  "}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["chunk", "--input", str(src), "--out", str(out), "--skip-bad"]) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["a"] and "no_blank_lines" in rows[0]["flags"]
    assert rows[0]["split"] == "sentence" and len(rows[0]["steps"]) == 40
    assert "skipped 1 bad record" in capsys.readouterr().err


def test_score_bad_input_and_over_long_trace(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"id": "a", "problem": "p", "answer": "\\frac{1}{2", "response": "x\n\ny"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["score", "--input", str(src), "--out", str(out), "--model", "tiny-random"]) == 1
    assert "t.jsonl:1: field 'answer': answer cannot be parsed" in capsys.readouterr().err
    assert not out.exists()
    long_steps = [f"Step {i}: we add {i} and {i} to get {2 * i}, which is what we wanted here." for i in range(60)]
    src.write_text(json.dumps({"id": "long", "problem": "What is 2+2?", "answer": "4",
                               "response": "<think>\n" + "\n\n".join(long_steps) + "\n</think>"}) + "\n")
    assert main(["score", "--input", str(src), "--out", str(out), "--model", "tiny-random", "--rollouts", "1",
                 "--max-new-tokens", "2", "--max-context", "300"]) == 0
    rec = _rows(out)[0]
    assert "auto_chunked" in rec["flags"] and "context_truncated" in rec["flags"]
    assert rec["thoughts"][-1]["score"] is None
    assert main(["coldstart", "--input", str(src), "--out", str(tmp_path / "cs")]) == 1
    assert "longshort score` first" in capsys.readouterr().err


def test_synth_and_coldstart_option_errors(tmp_path, capsys):
    assert main(["synth", "--n", "2", "--num-ops", "0", "--out", str(tmp_path / "s.jsonl")]) == 1
    assert "--num-ops" in capsys.readouterr().err
    assert main(["coldstart", "--input", "x", "--out", str(tmp_path), "--threshold", "0.1", "--ratio", "0.5"]) == 1
    assert "not both" in capsys.readouterr().err


def test_score_shards_split_the_traces_exactly(tmp_path, capsys):
    """`--shard K/N` (one process per GPU): every trace is scored in exactly one shard, the same
    as an unsharded run; a malformed shard is one line before any model loads."""
    synth, chunks = tmp_path / "s.jsonl", tmp_path / "c.jsonl"
    assert main(["synth", "--n", "5", "--seed", "2", "--num-ops", "1", "--fixed-ops", "--redundancy", "1",
                 "--out", str(synth)]) == 0
    assert main(["chunk", "--input", str(synth), "--out", str(chunks), "--method", "gold"]) == 0
    args = ["score", "--input", str(chunks), "--model", "tiny-random", "--estimator", "forced"]
    assert main(args + ["--out", str(tmp_path / "all.jsonl")]) == 0
    whole = {r["id"]: r["thoughts"] for r in _rows(tmp_path / "all.jsonl")}
    parts = []
    for k in range(2):
        assert main(args + ["--out", str(tmp_path / f"p{k}.jsonl"), "--shard", f"{k}/2"]) == 0
        parts.append({r["id"]: r["thoughts"] for r in _rows(tmp_path / f"p{k}.jsonl")})
    assert [len(p) for p in parts] == [3, 2] and not set(parts[0]) & set(parts[1])
    merged = {**parts[0], **parts[1]}
    assert merged.keys() == whole.keys()
    for rid, thoughts in whole.items():  # the same scores as one process (batches differ: up to float order)
        assert [t["acc"] for t in merged[rid]] == pytest.approx([t["acc"] for t in thoughts], rel=1e-4)
    capsys.readouterr()
    for bad in ("2/2", "1", "a/b", "-1/3"):
        assert main(args + ["--out", str(tmp_path / "x.jsonl"), "--shard", bad]) == 1
        assert "--shard" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
