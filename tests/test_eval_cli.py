"""`longshort eval / compare / grade` end to end on the tiny random model, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.harness import EvalConfig, grade_record, run_eval

TINY = ["--long", "tiny-random", "--short", "tiny-random", "--max-new-tokens", "8", "--no-progress"]
FEW_TURNS = ["--max-turns", "2"]


def cli(*args: str) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # typer's standalone mode exits on success / usage errors
        return int(exc.code or 0)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, shared_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "collab"
    rc = cli("eval", "--benchmark", "gsm8k", "--mode", "collab", "--samples", "2", "--limit", "3",
             "--out", out, "--data-dir", shared_dir / "benchmarks", *FEW_TURNS, *TINY)
    assert rc == 0
    return out


def test_eval_writes_run_directory(base_run, capsys):
    preds = _lines(base_run / "predictions.jsonl")
    assert len(preds) == 6
    assert {p["id"] for p in preds} == {f"gsm8k-test-{i}#{k}" for i in range(3) for k in range(2)}
    for p in preds:
        assert isinstance(p["correct"], bool) and "method" in p["grade"] and p["answer"]
        assert p["mode"] == "collab" and p["tokens"]["total"] == p["tokens"]["long"] + p["tokens"]["short"]
    m = json.loads((base_run / "metrics.json").read_text())
    assert m["benchmark"] == "gsm8k" and m["problems"] == 3 and m["samples_per_problem"] == 2
    assert m["accuracy"] == sum(p["correct"] for p in preds) / 6
    assert m["tokens"]["total"] == pytest.approx(sum(p["tokens"]["total"] for p in preds) / 6)
    assert m["config"]["samples"] == 2 and m["config"]["collab"]["max_new_tokens_long"] == 8
    assert "transformers" in m["environment"]["packages"] and m["environment"]["seed"] == 0
    assert m["complete"] is True
    assert "# Evaluation: gsm8k" in (base_run / "report.md").read_text()


def test_resume_skips_done_ids_and_keeps_them(base_run, tmp_path, shared_dir):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("config.json",):
        (out / name).write_bytes((base_run / name).read_bytes())
    lines = (base_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = "".join(lines[:4])
    (out / "predictions.jsonl").write_text(kept + lines[4][:25], encoding="utf-8")  # torn last line
    rc = cli("eval", "--benchmark", "gsm8k", "--samples", "2", "--limit", "3", "--out", out,
             "--data-dir", shared_dir / "benchmarks", *FEW_TURNS, *TINY)
    assert rc == 0
    text = (out / "predictions.jsonl").read_text(encoding="utf-8")
    assert text.startswith(kept)
    preds = _lines(out / "predictions.jsonl")
    assert len(preds) == 6 and len({p["id"] for p in preds}) == 6
    # seeded per record: the resumed records equal the ones of the uninterrupted run
    base = {p["id"]: p for p in _lines(base_run / "predictions.jsonl")}
    for p in preds:
        assert p["turns"] == base[p["id"]]["turns"]
    # a finished run reruns without generating anything
    before = (out / "predictions.jsonl").read_bytes()
    assert cli("eval", "--benchmark", "gsm8k", "--samples", "2", "--limit", "3", "--out", out,
               "--data-dir", shared_dir / "benchmarks", *FEW_TURNS, *TINY) == 0
    assert (out / "predictions.jsonl").read_bytes() == before


def test_resume_into_a_different_run_is_refused(base_run, shared_dir, capsys):
    before = _snapshot(base_run)
    rc = cli("eval", "--benchmark", "aime24", "--samples", "2", "--limit", "3", "--out", base_run,
             "--data-dir", shared_dir / "benchmarks", *FEW_TURNS, *TINY)
    assert rc == 1
    assert "different run" in capsys.readouterr().err
    assert _snapshot(base_run) == before


def test_baseline_gives_aes_and_compare_plots(base_run, tmp_path, shared_dir, capsys):
    out = tmp_path / "long"
    rc = cli("eval", "--benchmark", "gsm8k", "--mode", "long", "--samples", "2", "--limit", "3",
             "--out", out, "--data-dir", shared_dir / "benchmarks", "--baseline", base_run, "--max-turns", "1",
             *TINY)
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "long" and m["tokens"]["short"] == 0
    # --max-new-tokens means one thing in every command: the most one generation writes (solo too)
    assert m["config"]["collab"]["solo_max_new_tokens"] == 8
    assert all(0 < p["tokens"]["total"] <= 8 for p in _lines(out / "predictions.jsonl"))
    assert m["aes"]["baseline_dir"] == str(base_run) and m["aes"]["same_problems"] is True
    assert m["aes"]["baseline_tokens"] == json.loads((base_run / "metrics.json").read_text())["tokens"]["total"]
    assert "AES" in (out / "report.md").read_text()
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert cli("compare", base_run, out, "--plot", png) == 0
    printed = capsys.readouterr().out
    assert "collab" in printed and "long" in printed and "Pass@1" in printed
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| collab |" in png.with_suffix(".md").read_text()


def test_short_mode_on_own_jsonl_with_skip_bad(tmp_path, capsys):
    bench = tmp_path / "mine.jsonl"
    bench.write_text('{"id": "a", "problem": "2+2?", "answer": "4"}\n{"id": "b", "problem": "no answer"}\n'
                     '{"id": "c", "problem": "Pick one.", "choices": ["x", "y"], "answer": "y"}\n', encoding="utf-8")
    out = tmp_path / "short"
    assert cli("eval", "--benchmark", bench, "--mode", "short", "--out", out, "--max-turns", "1", *TINY) == 1
    assert ":2: field 'answer'" in capsys.readouterr().err and not out.exists()
    assert cli("eval", "--benchmark", bench, "--mode", "short", "--out", out, "--max-turns", "1",
               "--skip-bad", *TINY) == 0
    assert "skipped 1 bad" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "short" and m["tokens"]["long"] == 0 and m["tokens"]["short"] > 0
    assert m["benchmark"] == "mine" and m["problems"] == 2 and m["skipped_bad_records"] == 1
    preds = {p["id"]: p for p in _lines(out / "predictions.jsonl")}
    assert preds["c"]["answer"] == "B" and preds["c"]["choices"] == ["x", "y"] and "B) y" in preds["c"]["problem"]


def test_baseline_from_another_benchmark_is_refused(tmp_path, shared_dir, capsys, base_run):
    out = tmp_path / "aime"
    rc = cli("eval", "--benchmark", "aime24", "--limit", "2", "--out", out,
             "--data-dir", shared_dir / "benchmarks", "--baseline", base_run, *TINY)
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "baseline ran benchmark 'gsm8k'" in err and err.count("\n") == 1
    assert not out.exists()
    assert cli("eval", "--benchmark", "aime24", "--limit", "2", "--out", out,
               "--baseline", tmp_path / "nowhere", *TINY) == 1
    assert "run directory not found" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "expected"), [
    (None, "unknown benchmark 'gsm9k'; known: aime24, aime25, amc23, gpqa_diamond, gsm8k, math500"),
    ("", "no records"),
    ('{"problem": "2+2?", "answer": "4"}\n{"problem": "3+3?"}\n', ":2: field 'answer': missing"),
])
def test_bad_benchmark_input(tmp_path, capsys, content, expected):
    if content is None:
        bench = "gsm9k"
    else:
        bench = tmp_path / "bench.jsonl"
        bench.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    assert cli("eval", "--benchmark", bench, "--out", out, *TINY) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_mode_and_values(tmp_path, capsys):
    assert cli("eval", "--benchmark", "gsm8k", "--mode", "both", "--out", tmp_path / "r") == 1
    assert "unknown mode 'both'" in capsys.readouterr().err
    assert cli("eval", "--benchmark", "gsm8k", "--samples", "0", "--out", tmp_path / "r") == 2  # usage error


def test_grade_command(capsys):
    assert cli("grade", r"so \boxed{\frac{1}{2}}", "0.5") == 0
    assert capsys.readouterr().out == "correct\n"
    assert cli("grade", "#### 17", "18") == 0
    assert capsys.readouterr().out == "wrong\n"
    assert cli("grade", r"\boxed{B}", "B", "--choices", "red", "--choices", "blue", "-v") == 0
    out = capsys.readouterr().out
    assert out.startswith("correct\n") and "rule: choice" in out


def test_grade_record_uses_final_answer():
    rec = grade_record({"final_answer": r"\frac{36}{2}", "answer": "18"})
    assert rec["correct"] and rec["grade"]["extracted"] == r"\frac{36}{2}"
    rec = grade_record({"final_answer": None, "answer": "18"})
    assert not rec["correct"] and rec["grade"]["method"] == "no-answer"
    rec = grade_record({"final_answer": "C", "answer": "C", "choices": ["a", "b", "c", "d"]})
    assert rec["correct"]


def test_run_eval_library_call_with_prebuilt_engine(tmp_path, shared_dir):
    from longshort.engines import make_engine

    engine = make_engine("tiny-random")
    cfg = EvalConfig(benchmark="amc23", limit=2, data_dir=str(shared_dir / "benchmarks"),
                     long_model="tiny-random", short_model="tiny-random",
                     collab={"max_new_tokens_long": 4, "max_new_tokens_short": 4, "max_turns": 1})
    m = run_eval(cfg, tmp_path / "lib", engines=(engine, engine), progress=False, command="test")
    assert m["records"] == 2 and m["benchmark"] == "amc23" and m["command"] == "test"
    assert cfg.collab.samples == 1 and cfg.collab.max_turns == 1  # the caller's config is not mutated
    (tmp_path / "lib" / "predictions.jsonl").write_text("", encoding="utf-8")
    m2 = run_eval(cfg.model_copy(update={"limit": 1}), tmp_path / "lib", engines=(engine, engine),
                  progress=False, resume=False)
    assert m2["records"] == 1 and len(_lines(tmp_path / "lib" / "predictions.jsonl")) == 1


def test_failed_model_load_with_no_resume_damages_nothing(base_run, shared_dir, capsys):
    before = _snapshot(base_run)
    rc = cli("eval", "--benchmark", "gsm8k", "--samples", "2", "--limit", "3", "--out", base_run, "--no-resume",
             "--data-dir", shared_dir / "benchmarks", "--long", str(base_run / "no-such-model"),
             "--short", "tiny-random", "--no-progress")
    assert rc == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert _snapshot(base_run) == before


@pytest.mark.slow
def test_eval_with_embedded_pair_on_gsm8k(tmp_path, shared_dir):
    out = tmp_path / "smollm"
    rc = cli("eval", "--benchmark", "gsm8k", "--mode", "collab", "--limit", "2", "--out", out,
             "--data-dir", shared_dir / "benchmarks", "--max-new-tokens", "48", "--max-turns", "1",
             "--temperature", "0", "--no-progress")
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    preds = _lines(out / "predictions.jsonl")
    assert m["models"] == {"long": "smollm2-135m", "short": "smollm2-135m"} and len(preds) == 2
    assert all(p["turns"] and p["turns"][0]["role"] == "long" for p in preds)
    assert 0 < m["tokens"]["total"] <= 48 + 48


@pytest.mark.parametrize("command", ["eval", "compare", "grade"])
def test_help_renders(command, capsys):
    assert cli(command, "--help") == 0
    assert "Usage" in capsys.readouterr().out
