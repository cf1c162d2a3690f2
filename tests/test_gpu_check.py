"""benchmarks/gpu_check.py: the recipe it scales, the summary when a section fails or runs out of
time, one real section in a child process, and (slow) the whole `--tiny` run on CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ROWS = ("setup (model cache)", "engine vs generate()", "SFT step", "multi-turn RL step", "quickstart")


@pytest.fixture()
def gc(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows by section title: [result, time, memory, status]."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] in ROWS:
            rows[cells[0]] = cells[1:]
    return rows


def test_quickstart_recipe_at_4x_and_its_miniature_are_valid_recipes(gc, tmp_path):
    from longshort.config import load_config

    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    big = gc.quickstart_recipe(base, gc.Sizes())
    assert big["data"]["train"] == 4 * base["data"]["train"]
    assert [e["limit"] for e in big["data"]["eval"]] == [4 * e["limit"] for e in base["data"]["eval"]]
    assert big["quality"]["gold_traces"] == 4 * base["quality"]["gold_traces"]
    assert big["quality"]["compare_traces"] == 4 * base["quality"]["compare_traces"]
    for section in ("models", "sft", "rl", "eval", "score", "baseline_sft"):  # only the counts change
        assert big[section] == base[section]
    assert base["data"]["train"] == yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["data"]["train"]
    tiny = gc.quickstart_recipe(base, gc.tiny_sizes())
    assert tiny["models"]["base"] == tiny["models"]["scorer"] == "tiny-random"
    assert tiny["eval"]["systems"] == base["eval"]["systems"] and tiny["score"]["estimator"] == "ablation"
    for name, raw in (("big", big), ("tiny", tiny)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        load_config(path)  # raises on any unknown key or bad value


def test_a_failing_or_slow_section_is_reported_and_the_others_still_run(gc, monkeypatch, tmp_path):
    import torch

    def ok(s, work):
        return {"result": "fine"}

    def boom(s, work):
        raise RuntimeError("CUDA error: an illegal memory access")

    def slow(s, work):
        time.sleep(30)

    monkeypatch.setattr(gc, "RUNNERS", {"setup": ok, "engine": boom, "sft": ok, "rl": slow, "quickstart": ok})
    out = tmp_path / "summary.md"
    started = time.time()
    code = gc.main(["--tiny", "--sections", "engine,sft,rl", "--budget", "5", "--threads",
                    str(torch.get_num_threads()), "--out", str(out)])
    assert time.time() - started < 20
    assert code == 1
    text = out.read_text()
    rows = _rows(text)
    assert rows["setup (model cache)"][3] == "ok" and rows["SFT step"][3] == "ok"
    assert rows["engine vs generate()"][3] == "FAILED" and "illegal memory access" in rows["engine vs generate()"][0]
    assert rows["multi-turn RL step"][3] == "timeout"
    assert "quickstart" not in rows  # not asked for
    assert "2 of 4 failed" in text and "machine:" in text and "torch " in text


def _run(args: list[str], tmp_path: Path, timeout: int) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "summary.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out.read_text()


def test_the_engine_section_runs_in_its_own_process(tmp_path):
    """The GPU default (--isolate): the section runs in a child and its result comes back."""
    proc, text = _run(["--tiny", "--isolate", "--sections", "engine"], tmp_path, timeout=300)
    assert proc.returncode == 0, text
    rows = _rows(text)
    assert rows["engine vs generate()"][3] == "ok"
    assert "tok/s" in rows["engine vs generate()"][0] and "x**" in rows["engine vs generate()"][0]
    assert rows["engine vs generate()"][2].endswith("GiB RSS")  # the child's own peak
    assert "0 of 2 failed" in text


@pytest.mark.slow  # every section on the tiny model, the quickstart's miniature included: ~1-2 min on 2 cores
def test_tiny_run_on_cpu_has_every_section_and_no_failure(tmp_path):
    proc, text = _run(["--tiny"], tmp_path, timeout=900)
    assert proc.returncode == 0, text + proc.stderr[-3000:]
    rows = _rows(text)
    assert set(rows) == set(ROWS), text
    assert all(r[3] == "ok" for r in rows.values()), text
    assert "1 GRPO step" in rows["multi-turn RL step"][0] and "turns/dialogue" in rows["multi-turn RL step"][0]
    assert "pair" in rows["quickstart"][0] and "baseline" in rows["quickstart"][0]
    assert "0 of 5 failed" in text
