"""The pipeline end to end (`configs/smoke.yaml` on tiny-random) and its config validation.

The smoke run is real: synthetic traces, heuristic chunking, Monte Carlo scoring with a model,
cold start, TRL SFT of three models, TRL GRPO with the alternating multi-turn rollout, the
evaluation harness for four systems, and the report. It runs once per module (about one to
three minutes on 2 cores) through the real CLI entry point; the other tests reuse its run
directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from longshort.cli import main as _main
from longshort.config import PipelineConfig, load_config
from longshort.errors import InputError, LongshortError
from longshort.io import read_jsonl
from longshort.pipeline import STAGES, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    """The `longshort` entry point in-process; its exit code (click exits via SystemExit)."""
    try:
        return _main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
STAGE_NAMES = [s.name for s in STAGES]


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    if "../shared/" in recipe.read_text() and not (ROOT.parent / "shared").is_dir():
        pytest.skip("the recipe reads ../shared, which is not present here")
    cfg = load_config(recipe)
    assert isinstance(cfg, PipelineConfig) and cfg.name


def test_recipes_present():
    names = {p.name for p in RECIPES}
    assert {"smoke.yaml", "quickstart.yaml", "paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"} <= names


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, field, words", [
    ("name: x\nscroe:\n  rollouts: 2\n", "scroe", "unknown key"),
    ("name: x\nscore:\n  rollouts: 2\n  rolouts: 3\n", "score.rolouts", "unknown key"),
    ("name: x\nscore:\n  rollouts: many\n", "score.rollouts", "integer"),
    ("name: x\nscore:\n  rollouts: 0\n", "score.rollouts", "greater than or equal to 1"),
    ("name: x\nsft:\n  lr: -1\n", "sft.lr", "greater than 0"),
    ("name: x\nrl:\n  num_generations: 1\n", "rl.num_generations", "greater than or equal to 2"),
    ("name: x\ndata:\n  eval:\n    - {name: synthetic, limit: 0}\n", "data.eval.0.limit", "greater than"),
    ("name: x\nmodels:\n  engine: tensorflow\n", "models.engine", "transformers"),
    ("name: x\neval:\n  collab:\n    max_turns: 0\n", "eval.collab.max_turns", "greater than"),
    ("name: x\ndata:\n  train: 10000000000\n", "data.train", "less than or equal to 1000000"),
])
def test_config_errors_name_file_and_field(tmp_path, text, field, words):
    p = _write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg and f"field '{field}'" in msg and words in msg, msg
    assert exc.value.line is not None  # the line of the offending key in the YAML


def test_config_errors_for_files_and_yaml(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = _write(tmp_path, "name: x\nscore: [1, 2\n")
    with pytest.raises(InputError, match="invalid YAML") as exc:
        load_config(bad)
    assert exc.value.path == str(bad) and exc.value.line is not None
    missing = _write(tmp_path, "name: x\ndata:\n  source: file\n  traces: /no/such/traces.jsonl\n")
    with pytest.raises(InputError, match="trace file not found") as exc:
        load_config(missing)
    assert exc.value.field == "data.traces" and exc.value.line == 4
    no_traces = _write(tmp_path, "name: x\ndata:\n  source: file\n")
    with pytest.raises(InputError, match="needs data.traces"):
        load_config(no_traces)
    model = _write(tmp_path, "name: x\nmodels:\n  base: ./no/such/model\n")
    with pytest.raises(InputError, match="model path not found") as exc:
        load_config(model)
    assert exc.value.field == "models.base"
    openai = _write(tmp_path, "name: x\nmodels:\n  engine: openai\n")
    with pytest.raises(InputError, match="base_url"):
        load_config(openai)
    top = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(top)


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path, capsys):
    p = _write(tmp_path, "name: x\nscore:\n  rollouts: many\n")
    assert main(["pipeline", str(p), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "score.rollouts" in err[0]
    assert not (tmp_path / "run").exists()  # nothing written before the config is valid


# ----------------------------------------------------------------------------- smoke end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    assert main(["pipeline", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]) == 0
    return out


def test_smoke_every_stage_output(smoke_run):
    out = smoke_run
    for name in STAGE_NAMES:
        done = json.loads((out / name / "DONE").read_text())
        assert done["stage"] == name and done["seconds"] >= 0
    assert load_config(out / "config.yaml") == load_config(ROOT / "configs" / "smoke.yaml")  # resolved, same
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and "torch" in manifest["packages"] and set(manifest["stages"]) == set(STAGE_NAMES)
    peaks = {k: v["peak_rss_mb"] for k, v in manifest["stages"].items()}
    # each stage's own high-water mark: none above the run's, and the training stages above the chunker's
    assert all(v is None or v <= manifest["peak_rss_mb"] for v in peaks.values())
    if peaks["chunk"] is not None:
        assert peaks["sft"] > peaks["chunk"]

    traces = read_jsonl(out / "data" / "traces.jsonl")
    assert len(traces) == 4 and all(t["gold_thoughts"] for t in traces)
    test = read_jsonl(out / "data" / "eval" / "synthetic.jsonl")
    assert len(test) == 2 and not {t["problem"] for t in test} & {t["problem"] for t in traces}

    chunks = read_jsonl(out / "chunk" / "chunks.jsonl")
    assert [c["id"] for c in chunks] == [t["id"] for t in traces]
    for c in chunks:  # contiguous, full coverage
        assert c["thoughts"][0]["start"] == 1 and c["thoughts"][-1]["end"] == len(c["steps"])
        assert all(a["end"] + 1 == b["start"] for a, b in zip(c["thoughts"], c["thoughts"][1:], strict=False))

    scored = read_jsonl(out / "score" / "scored.jsonl")
    assert len(scored) == 4
    for r in scored:
        assert r["importance"]["rollouts"] == 2
        for t in r["thoughts"]:
            assert t["score"] is None or -1 <= t["score"] <= 1

    long_ex = read_jsonl(out / "coldstart" / "long.jsonl")
    short_ex = read_jsonl(out / "coldstart" / "short.jsonl")
    assert long_ex and short_ex
    assert all(e["role"] == "long" and e["completion"].startswith("<think>") for e in long_ex)
    assert all(e["role"] == "short" and e["completion"].startswith("<answer>") for e in short_ex)

    for name in ("long", "short"):
        assert (out / "sft" / name / "config.json").exists()
    assert (out / "baseline" / "model" / "config.json").exists()
    rl = json.loads((out / "rl" / "DONE").read_text())["summary"]
    assert rl["schedule"] == ["long", "short"]
    assert Path(rl["long"]).name == "iter0_long" and Path(rl["short"]).name == "iter1_short"
    assert (Path(rl["long"]) / "config.json").exists() and (Path(rl["short"]) / "config.json").exists()

    for system, mode in (("baseline", "long"), ("pair", "collab"), ("short", "short"), ("pair_sft", "collab")):
        preds = read_jsonl(out / "eval" / "synthetic" / system / "predictions.jsonl")
        assert len(preds) == 2 and all(p["mode"] == mode and "correct" in p for p in preds)
        m = json.loads((out / "eval" / "synthetic" / system / "metrics.json").read_text())
        assert m["mode"] == mode
    pair_cfg = json.loads((out / "eval" / "synthetic" / "pair" / "config.json").read_text())
    assert pair_cfg["long_model"] == rl["long"] and pair_cfg["short_model"] == rl["short"]
    base_cfg = json.loads((out / "eval" / "synthetic" / "baseline" / "config.json").read_text())
    assert base_cfg["long_model"].endswith("baseline/model")


def test_smoke_report_and_metrics(smoke_run):
    out = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    res = metrics["eval"]["synthetic"]
    assert set(res) == {"pair", "baseline", "short", "pair_sft"}
    # numbers in metrics.json are the harness's, not recomputed differently
    for system, r in res.items():
        m = json.loads((out / "eval" / "synthetic" / system / "metrics.json").read_text())
        assert r["accuracy"] == m["accuracy"] and r["tokens"] == m["tokens"]
    head = metrics["headline"]["synthetic"]
    bt, pt = res["baseline"]["tokens"]["total"], res["pair"]["tokens"]["total"]
    assert head["tokens_pair"] == pt and head["tokens_baseline"] == bt
    assert head["token_reduction"] == pytest.approx(1 - pt / bt, abs=1e-4)
    assert metrics["chunking"]["boundary"]["f1"] is not None
    assert metrics["importance"]["auroc"]["auroc"] is None or 0 <= metrics["importance"]["auroc"]["auroc"] <= 1
    for rel in metrics["plots"].values():
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for section in ("## Headline", "## Results", "Pass@1", "AES", "accuracy_vs_tokens_synthetic.png",
                    "## Thoughts: chunking and importance", "boundary precision", "importance AUROC",
                    "importance_by_category.png", "## Example dialogue", "<think>"):
        assert section in report, section
    # the table row of the pair shows its real token count
    assert f"| {pt:,.1f} |" in report


def test_resume_skips_finished_stages(smoke_run, capsys):
    out = smoke_run
    before = {n: (out / n / "DONE").stat().st_mtime_ns for n in STAGE_NAMES}
    report_before = (out / "report.md").read_text()
    # without --resume a finished run directory is refused and left as it was
    assert main(["pipeline", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err
    # drop the last stage's marker: --resume reruns only that stage
    (out / "report" / "DONE").unlink()
    (out / "report.md").unlink()
    assert main(["pipeline", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    for name in STAGE_NAMES[:-1]:
        assert f"{name}: done earlier, skipped" in err
        assert (out / name / "DONE").stat().st_mtime_ns == before[name]
    assert (out / "report" / "DONE").exists()
    assert (out / "report.md").read_text().split("## Results")[1] == report_before.split("## Results")[1]


def test_resume_refuses_a_changed_config(smoke_run, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    raw["eval"]["samples"] = 3
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy)
    config_before = (copy / "config.yaml").read_text()
    with pytest.raises(LongshortError, match="eval was finished with a different config"):
        run_pipeline(changed, copy, resume=True)
    assert json.loads((copy / "eval" / "DONE").read_text())["stage"] == "eval"  # untouched
    assert (copy / "config.yaml").read_text() == config_before
    # a finished stage after an unfinished one would be stale: refused, nothing run
    (copy / "chunk" / "DONE").unlink()
    with pytest.raises(LongshortError, match="earlier stage chunk is not"):
        run_pipeline(ROOT / "configs" / "smoke.yaml", copy, resume=True)
    assert not (copy / "chunk" / "DONE").exists()


@pytest.mark.slow  # a second process under accelerate: ~20 s idle, more on a busy machine
def test_training_under_accelerate_launch(smoke_run, tmp_path):
    """The multi-GPU path (`launch.accelerate_config`): SFT runs as `accelerate launch -m
    longshort.cli sft --config RUN.json ...`; here with a one-process CPU accelerate config."""
    from longshort.config import sft_run_config
    from longshort.pipeline.context import Console, RunContext
    from longshort.pipeline.training import launch

    acc = tmp_path / "cpu.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\n"
                   "num_machines: 1\nnum_processes: 1\nuse_cpu: true\n")
    recipe = tmp_path / "recipe.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    raw["launch"] = {"accelerate_config": str(acc), "num_processes": 1}
    recipe.write_text(yaml.safe_dump(raw))
    cfg = load_config(recipe)
    run_cfg = sft_run_config(cfg, role="short", data=str(smoke_run / "coldstart" / "short.jsonl"),
                             model="tiny-random", out=str(tmp_path / "short"))
    out = launch(RunContext(cfg, tmp_path, False, Console()), "sft", run_cfg, tmp_path / "short.run.json",
                  ["--role", "short", "--data", run_cfg.data, "--model", run_cfg.model, "--out", run_cfg.out])
    assert json.loads((tmp_path / "short.run.json").read_text())["max_steps"] == 1
    assert (Path(out) / "config.json").exists() and (Path(out) / "longshort_run.json").exists()


def test_baseline_trains_only_when_a_stage_that_runs_uses_it(tmp_path, capsys):
    """A run that stops before anything uses the fine-tuned baseline (here at `score`, scored by
    the base model) skips the baseline's SFT; a resumed run that goes further trains it then."""
    from longshort.pipeline.stages import needs_baseline_sft

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert needs_baseline_sft(cfg) and needs_baseline_sft(cfg, STAGE_NAMES)
    assert not needs_baseline_sft(cfg, STAGE_NAMES[:STAGE_NAMES.index("score") + 1])
    assert needs_baseline_sft(cfg, STAGE_NAMES[:STAGE_NAMES.index("baseline") + 1])  # asked for it
    scorer = cfg.model_copy(update={"models": cfg.models.model_copy(update={"scorer": "baseline"})})
    assert needs_baseline_sft(scorer, STAGE_NAMES[:STAGE_NAMES.index("score") + 1])

    out = tmp_path / "run"
    recipe = str(ROOT / "configs" / "smoke.yaml")
    assert main(["pipeline", recipe, "--out", str(out), "--stop-after", "score"]) == 0
    assert not (out / "baseline" / "model").exists() and (out / "score" / "DONE").exists()
    # the score stage prints its cost plan before it starts, and the actual cost when done
    err = capsys.readouterr().err
    assert "plan: 4 trace(s)" in err and "rollouts, ~" in err and "generated tokens (estimated" in err
    assert main(["pipeline", recipe, "--out", str(out), "--resume", "--stop-after", "baseline"]) == 0
    err = capsys.readouterr().err
    assert "baseline: SFT of the long-CoT baseline" in err and "chunk: done earlier, skipped" in err
    assert (out / "baseline" / "model" / "longshort_run.json").exists()


def test_stage_peak_is_the_stages_own():
    """`StagePeak` resets the high-water mark: a block freed before the stage starts is not its peak."""
    import numpy as np

    from longshort.pipeline.context import StagePeak

    block = np.ones(40_000_000)  # 320 MB touched
    del block
    peak = StagePeak()
    if peak.mb is None:
        pytest.skip("no /proc/self/clear_refs here")
    before = peak.mb
    held = np.ones(40_000_000)
    assert peak.mb >= before + 250
    top = peak.mb
    del held
    assert StagePeak().mb < top - 250  # the next stage starts from what is resident now


def test_a_new_optional_field_keeps_finished_stages(monkeypatch):
    """A release that adds a config field defaulting to None must not invalidate earlier runs' stages;
    a field with a value changes the fingerprint."""
    import copy

    from longshort.pipeline.run import stage_fingerprint

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    score = next(s for s in STAGES if s.name == "score")
    before = stage_fingerprint(cfg, score)
    dumped = cfg.model_dump(mode="json")
    for value, same in ((None, True), (3, False)):
        patched = copy.deepcopy(dumped)
        patched["score"]["a_new_option"] = value
        monkeypatch.setattr(type(cfg), "model_dump", lambda self, _p=patched, **kw: _p)
        assert (stage_fingerprint(cfg, score) == before) is same
