"""Per-role servers and the vLLM pair in a recipe: `models.long_base_url` / `short_base_url` are
validated by `longshort pipeline --check` and reach the engines of each role; no server is started
and no model is loaded (the engine constructors are replaced by recorders)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from longshort.cli import main as _main
from longshort.config import PipelineConfig, load_config
from longshort.errors import InputError

LONG_URL, SHORT_URL, BASE_URL = "http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1", "http://127.0.0.1:8000/v1"
RECIPE = f"""name: servers
models:
  base: tiny-random
  engine: openai
  long_base_url: {LONG_URL}
  short_base_url: {SHORT_URL}
data:
  eval:
    - {{name: synthetic, limit: 2}}
"""


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- --check


def test_check_accepts_a_server_per_role(tmp_path, capsys):
    p = _write(tmp_path, RECIPE)
    assert main(["pipeline", str(p), "--check"]) == 0
    out, err = capsys.readouterr()
    assert f"long_base_url: {LONG_URL}" in out and f"short_base_url: {SHORT_URL}" in out and "valid" in err
    cfg = load_config(p)
    assert cfg.models.base_url is None and cfg.models.long_base_url == LONG_URL


def test_check_refuses_an_unknown_key_in_models(tmp_path, capsys):
    p = _write(tmp_path, RECIPE.replace("short_base_url", "short_base_ulr"))
    assert main(["pipeline", str(p), "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'models.short_base_ulr'" in err[0] and "unknown key" in err[0], err


def test_check_refuses_a_role_url_that_is_not_a_server_url(tmp_path, capsys):
    p = _write(tmp_path, RECIPE.replace(SHORT_URL, "localhost:8001"))
    assert main(["pipeline", str(p), "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models.short_base_url" in err[0] and "not a server URL" in err[0], err


@pytest.mark.parametrize("edit, words", [
    # openai: a role without its own URL falls back to base_url; without either it has no server
    (lambda t: t.replace(f"  short_base_url: {SHORT_URL}\n", ""), "models.short_base_url missing"),
    (lambda t: t.replace(f"  long_base_url: {LONG_URL}\n", ""), "models.long_base_url missing"),
    # a URL with an in-process engine would be silently unused
    (lambda t: t.replace("engine: openai", "engine: transformers"), "only used with engine 'openai'"),
    # vllm: the pair's two models cannot take more than the ceiling of one GPU
    (lambda t: t.replace("  engine: openai\n", "  engine: vllm\n  engine_options: {long_gpu_memory_utilization: 0.7, "
                         "short_gpu_memory_utilization: 0.4}\n").replace(f"  long_base_url: {LONG_URL}\n", "")
     .replace(f"  short_base_url: {SHORT_URL}\n", ""), "would take 1.10 of one GPU"),
])
def test_check_refuses_a_role_without_a_server_or_a_split_that_cannot_fit(tmp_path, edit, words):
    p = _write(tmp_path, edit(RECIPE))
    with pytest.raises(InputError) as exc:
        load_config(p)
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_base_url_alone_still_serves_both_roles(tmp_path):
    text = RECIPE.replace(f"  long_base_url: {LONG_URL}\n  short_base_url: {SHORT_URL}\n", f"  base_url: {BASE_URL}\n")
    assert load_config(_write(tmp_path, text)).models.base_url == BASE_URL


# ----------------------------------------------------------------------------- the eval stage's engines


class FakeEngine:
    def __init__(self, model: str, engine: str, base_url: str | None, kw: dict):
        self.model_name, self.engine, self.base_url, self.kw = model, engine, base_url, kw
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _run_eval_stage(tmp_path, monkeypatch, models: dict) -> tuple[list[FakeEngine], list[tuple]]:
    """`stage_eval` with recorders for `make_engine` (no server, no model) and `run_eval` (no solving)."""
    import longshort.engines
    import longshort.harness
    from longshort.pipeline.context import Console, RunContext
    from longshort.pipeline.evaluate import stage_eval

    built: list[FakeEngine] = []
    evals: list[tuple] = []

    def make_engine(model, engine="transformers", *, base_url=None, **kw):
        built.append(FakeEngine(model, engine, base_url, kw))
        return built[-1]

    def run_eval(ecfg, out, *, engines=None, **_):
        evals.append((ecfg, engines))
        return {"problems": 2, "samples_per_problem": 1, "accuracy": 0.0, "pass_at_1": 0.0, "tokens": {},
                "turns": 1.0, "finish_by_length_rate": 0.0, "format_violation_rate": 0.0}

    monkeypatch.setattr(longshort.engines, "make_engine", make_engine)
    monkeypatch.setattr(longshort.harness, "run_eval", run_eval)
    cfg = PipelineConfig.model_validate({"models": {"base": "tiny-random", **models},
                                         "eval": {"systems": ["pair", "baseline", "short", "pair_sft"]}})
    ctx = RunContext(cfg, tmp_path / "run", False, Console(io.StringIO()))
    ctx.summaries = {"data": {"eval_sets": {"synthetic": 2}}, "baseline": {"model": "baseline-ckpt"},
                     "sft": {"long": {"model": "sft-long"}, "short": {"model": "sft-short"}},
                     "rl": {"long": "rl-long", "short": "rl-short"}}
    stage_eval(ctx)
    return built, evals


def test_eval_stage_hands_each_role_its_own_server(tmp_path, monkeypatch):
    built, evals = _run_eval_stage(tmp_path, monkeypatch, {"engine": "openai", "long_base_url": LONG_URL,
                                                           "short_base_url": SHORT_URL})
    # baseline (long alone), pair, short alone, pair after SFT: each role at its own server
    assert [(e.model_name, e.base_url) for e in built] == [
        ("baseline-ckpt", LONG_URL), ("rl-long", LONG_URL), ("rl-short", SHORT_URL), ("rl-short", SHORT_URL),
        ("sft-long", LONG_URL), ("sft-short", SHORT_URL)]
    assert all(e.engine == "openai" and e.closed for e in built)  # released at the end of each system
    by_mode = {(ecfg.mode, ecfg.long_model, ecfg.short_model): (ecfg, engines) for ecfg, engines in evals}
    ecfg, (le, se) = by_mode[("collab", "rl-long", "rl-short")]
    assert (le.base_url, se.base_url) == (LONG_URL, SHORT_URL)
    assert (ecfg.base_url, ecfg.long_base_url, ecfg.short_base_url) == (None, LONG_URL, SHORT_URL)
    _, (le, se) = by_mode[("short", "rl-short", "rl-short")]
    assert le is None and se.base_url == SHORT_URL


def test_eval_stage_with_one_server_and_the_stages_own_engine(tmp_path, monkeypatch):
    from longshort.pipeline.context import Engines

    built, _ = _run_eval_stage(tmp_path, monkeypatch, {"engine": "openai", "base_url": BASE_URL,
                                                       "short_base_url": SHORT_URL})
    assert {e.model_name: e.base_url for e in built} == {"baseline-ckpt": BASE_URL, "rl-long": BASE_URL,
                                                         "rl-short": SHORT_URL, "sft-long": BASE_URL,
                                                         "sft-short": SHORT_URL}
    # a stage's own engine (scoring, llm chunking): base_url, else the long role's server
    for models, url in (({"base_url": BASE_URL, "long_base_url": LONG_URL, "short_base_url": SHORT_URL}, BASE_URL),
                        ({"long_base_url": LONG_URL, "short_base_url": SHORT_URL}, LONG_URL)):
        cfg = PipelineConfig.model_validate({"models": {"base": "tiny-random", "engine": "openai", **models}})
        with Engines(cfg) as engines:
            assert engines.get("scorer").base_url == url
            assert engines.get("scorer") is engines.get("scorer")  # built once per stage


def test_eval_stage_on_vllm_splits_the_gpu_between_the_pair(tmp_path, monkeypatch):
    built, _ = _run_eval_stage(tmp_path, monkeypatch, {"engine": "vllm",
                                                       "engine_options": {"gpu_memory_utilization": 0.85}})
    # two models at once split the share; a model alone (baseline, short) takes the whole of it
    assert [(e.model_name, e.kw.get("gpu_memory_utilization")) for e in built] == [
        ("baseline-ckpt", 0.85), ("rl-long", 0.5), ("rl-short", 0.35), ("rl-short", 0.85),
        ("sft-long", 0.5), ("sft-short", 0.35)]
    assert all(e.base_url is None for e in built)
