"""Tests for `longshort solve` (in-process through `longshort.cli.main`, on tiny-random models)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from longshort.cli import main

TINY = ["--long", "tiny-random", "--short", "tiny-random", "--max-new-tokens", "6"]


def run(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # click's standalone mode exits itself on success / usage errors
        return int(exc.code or 0)


def write_problems(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                            + "\n" for i in range(n)))
    return path


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if the command tries to load a model (bad input must stop before)."""
    import longshort.engines as engines

    def boom(*a, **k):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(engines, "make_engine", boom)


def test_single_problem_prints_dialogue_and_tokens(capsys):
    assert run(["solve", "What is 2 + 3?", *TINY]) == 0
    out = capsys.readouterr().out
    assert "What is 2 + 3?" in out and "turn 1 · long" in out and "<think>" in out
    assert "generated" in out and "prompt" in out and "final answer:" in out


def test_file_to_out_then_resume(tmp_path, capsys):
    problems = write_problems(tmp_path / "problems.jsonl")
    out = tmp_path / "transcripts.jsonl"
    assert run(["solve", "--file", str(problems), "--out", str(out), *TINY]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["p0", "p1", "p2"]
    for r in recs:
        assert r["tokens"]["total"] == sum(t["tokens"] for t in r["turns"]) > 0
        assert r["correct"] is False  # a random model: graded, and wrong
    assert "solved 3 dialogue(s)" in capsys.readouterr().out

    # Rerun: nothing to do, file untouched.
    before = out.read_bytes()
    assert run(["solve", "--file", str(problems), "--out", str(out), *TINY]) == 0
    assert out.read_bytes() == before and "nothing to do" in capsys.readouterr().out

    # Interrupted run: one record missing and a torn line in flight → resumed, earlier lines kept.
    lines = before.decode().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1] + '{"id": "p', encoding="utf-8")
    assert run(["solve", "--file", str(problems), "--out", str(out), *TINY]) == 0
    after = out.read_text().splitlines(keepends=True)
    assert after[:2] == lines[:2] and len(after) == 3
    assert {json.loads(x)["id"] for x in after} == {"p0", "p1", "p2"}


def test_samples_and_solo_mode(tmp_path):
    problems = write_problems(tmp_path / "p.jsonl", n=1)
    out = tmp_path / "o.jsonl"
    assert run(["solve", "-f", str(problems), "-o", str(out), "--mode", "short", "--samples", "2", *TINY]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["p0#0", "p0#1"]
    assert all(r["mode"] == "short" and r["num_turns"] == 1 for r in recs)
    # --max-new-tokens caps a solo answer as it caps a turn (the meaning `eval` and `serve` share)
    assert all(0 < r["tokens"]["total"] <= 6 for r in recs)


@pytest.mark.parametrize("args,needle", [
    (["solve", "   "], "empty problem"),
    (["solve"], "either a PROBLEM or --file"),
    (["solve", "x", "--mode", "medium"], "--mode"),
    (["solve", "x", "--temperature", "-1"], "--temperature"),
    (["solve", "x", "--max-turns", "0"], "--max-turns"),
])
def test_bad_options_one_line_error(args, needle, capsys, no_models):
    assert run(args) in (1, 2)  # 2: a usage error caught by the option parser
    assert needle in one_line_error(capsys.readouterr().err)


def test_malformed_jsonl_rejected_before_loading_models(tmp_path, capsys, no_models):
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"id": "a", "problem": "1+1?"}\n{"id": "b", "problem": \n')
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "old", "x": 1}\n')
    assert run(["solve", "--file", str(problems), "--out", str(out)]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert f"{problems}:2" in err and "malformed JSON" in err
    assert out.read_text() == '{"id": "old", "x": 1}\n'

    problems.write_text('{"id": "a", "problem": ""}\n')
    assert run(["solve", "--file", str(problems), "--out", str(out)]) == 1
    assert "field 'problem'" in one_line_error(capsys.readouterr().err)

    problems.write_text('{"id": "a", "problem": "x"}\n{"id": "a", "problem": "y"}\n')
    assert run(["solve", "--file", str(problems)]) == 1
    assert "duplicate id" in one_line_error(capsys.readouterr().err)

    assert run(["solve", "--file", str(tmp_path / "missing.jsonl")]) == 1
    assert "file not found" in one_line_error(capsys.readouterr().err)


def test_damaged_out_file_is_refused_not_truncated(tmp_path, capsys, no_models):
    problems = write_problems(tmp_path / "p.jsonl", n=1)
    out = tmp_path / "out.jsonl"
    rec = ', "turns": [], "final_answer": null}'
    content = '{"id": "a"' + rec + '\nnot json\n{"id": "b"' + rec + '\n'
    out.write_text(content)
    assert run(["solve", "--file", str(problems), "--out", str(out)]) == 1
    assert f"{out}:2" in one_line_error(capsys.readouterr().err)
    assert out.read_text() == content
    assert run(["solve", "--file", str(problems), "--out", str(problems)]) == 1
    assert "input file" in one_line_error(capsys.readouterr().err)


def test_unknown_model_one_line_error_nothing_written(tmp_path, capsys):
    problems = write_problems(tmp_path / "p.jsonl", n=1)
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "old", "turns": [], "final_answer": null}\n')
    assert run(["solve", "--file", str(problems), "--out", str(out), "--long", "no-such-model"]) == 1
    assert "no-such-model" in one_line_error(capsys.readouterr().err)
    assert out.read_text() == '{"id": "old", "turns": [], "final_answer": null}\n'


def test_unreachable_base_url_one_line_error(tmp_path, capsys):
    pytest.importorskip("longshort.engines.openai")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    problems = write_problems(tmp_path / "p.jsonl", n=1)
    out = tmp_path / "out.jsonl"
    rc = run(["solve", "--file", str(problems), "--out", str(out), "--engine", "openai",
              "--base-url", f"http://127.0.0.1:{port}/v1", "--long", "m", "--short", "m"])
    assert rc == 1
    assert "127.0.0.1" in one_line_error(capsys.readouterr().err)
    assert not out.exists() or out.read_text() == ""


def test_version_prints_longshort_and_with_packages_the_stack(capsys):
    import importlib.metadata as md

    from longshort import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out.split() == [__version__]
    assert main(["version", "--packages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == __version__
    assert f"trl {md.version('trl')}" in lines and f"torch {md.version('torch')}" in lines
