"""The vLLM engine is optional: without the extra (or without a GPU) it fails with a clear,
one-line error that says what to do, and importing longshort never needs vllm."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from longshort.engines import make_engine
from longshort.engines.vllm import VLLMEngineConfig, require_gpu
from longshort.errors import LongshortError

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
def test_missing_vllm_is_a_clear_error():
    with pytest.raises(LongshortError) as err:
        make_engine("tiny-random", "vllm")
    msg = str(err.value)
    assert "pip install 'longshort[vllm]'" in msg and "--engine transformers" in msg and "\n" not in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_no_gpu_is_a_clear_error():
    with pytest.raises(LongshortError, match="needs a CUDA GPU"):
        require_gpu()


def test_engines_import_without_vllm():
    code = ("import sys, longshort.engines, longshort.engines.vllm, longshort.engines.hf, "
            "longshort.engines.openai; assert 'vllm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_defaults_keep_prefix_caching_on():
    assert VLLMEngineConfig().enable_prefix_caching is True
    with pytest.raises(ValueError):
        VLLMEngineConfig(gpu_memory_utilization=1.5)


def test_json_schema_becomes_vllm_structured_decoding(monkeypatch):
    """Without vLLM installed: a stand-in `vllm` module records what `_params` builds."""
    import types

    from longshort.engines.base import GenerationRequest, SamplingParams
    from longshort.engines.vllm import VLLMEngine

    class Recorder:
        def __init__(self, **kw):
            self.kw = kw

    class Structured:
        def __init__(self, json):
            self.json = json

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = Recorder
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = Structured
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    eng = VLLMEngine.__new__(VLLMEngine)  # no model: only the parameter mapping is tested
    schema = {"type": "object"}
    got = eng._params(GenerationRequest(prompt="x", params=SamplingParams(json_schema=schema, max_new_tokens=5)))
    assert got.kw["structured_outputs"].json == schema and got.kw["max_tokens"] == 5
    plain = eng._params(GenerationRequest(prompt="x", params=SamplingParams()))
    assert "structured_outputs" not in plain.kw and "guided_decoding" not in plain.kw
    assert VLLMEngine.structured_output is True


# ----------------------------------------------------------------------------- two models on one GPU


def test_pair_splits_the_gpu_by_default_and_per_role():
    from longshort.engines.vllm import PAIR_MEMORY_CEILING, pair_options

    long_kw, short_kw = pair_options({"tensor_parallel_size": 1}, two=True)  # the default 0.85, split 10:7
    assert (long_kw["gpu_memory_utilization"], short_kw["gpu_memory_utilization"]) == (0.5, 0.35)
    assert long_kw["tensor_parallel_size"] == short_kw["tensor_parallel_size"] == 1
    long_kw, short_kw = pair_options({"gpu_memory_utilization": 0.68}, two=True)  # a lower budget, same split
    assert (long_kw["gpu_memory_utilization"], short_kw["gpu_memory_utilization"]) == (0.4, 0.28)
    long_kw, short_kw = pair_options({"long_gpu_memory_utilization": 0.6, "short_gpu_memory_utilization": 0.3},
                                     two=True)
    assert (long_kw, short_kw) == ({"gpu_memory_utilization": 0.6}, {"gpu_memory_utilization": 0.3})
    long_kw, short_kw = pair_options({"long_gpu_memory_utilization": 0.45}, two=True)  # short keeps its share
    assert (long_kw["gpu_memory_utilization"], short_kw["gpu_memory_utilization"]) == (0.45, 0.35)
    cfg = VLLMEngineConfig(gpu_memory_utilization=0.85, seed=3)  # a config object is split too
    long_kw, short_kw = pair_options({"config": cfg}, two=True)
    assert long_kw["config"].gpu_memory_utilization == 0.5 and long_kw["config"].seed == 3
    assert short_kw["config"].gpu_memory_utilization == 0.35 and cfg.gpu_memory_utilization == 0.85
    # one engine (one model for both roles, or one role alone): the pair's keys are dropped
    opts = {"gpu_memory_utilization": 0.9, "long_gpu_memory_utilization": 0.6}
    assert pair_options(opts, two=False) == ({"gpu_memory_utilization": 0.9}, {"gpu_memory_utilization": 0.9})
    assert PAIR_MEMORY_CEILING <= 1.0


@pytest.mark.parametrize("opts", [
    {"gpu_memory_utilization": 1.0},  # split 10:7 it is 1.0 in all, above the ceiling
    {"long_gpu_memory_utilization": 0.85, "short_gpu_memory_utilization": 0.85},  # the old 0.85 each
    {"long_gpu_memory_utilization": 0.7},  # + the short model's default 0.35
])
def test_pair_refuses_a_split_that_cannot_fit(opts):
    from longshort.engines.vllm import pair_options

    with pytest.raises(LongshortError) as err:
        pair_options(opts, two=True)
    msg = str(err.value)
    assert "above the 0.95" in msg and "long_gpu_memory_utilization" in msg and "\n" not in msg
    with pytest.raises(LongshortError, match="short_gpu_memory_utilization: Input should be less than or equal"):
        pair_options({"short_gpu_memory_utilization": 1.5}, two=True)


class _Recorder:
    """Stands in for VLLMEngine: records what each engine would be built with (no vllm, no GPU)."""

    built: list[tuple[str, dict]] = []

    def __init__(self, model, **kw):
        self.model_name, self.kw = model, kw
        _Recorder.built.append((model, kw))

    def close(self):
        pass


def test_make_pair_gives_each_vllm_role_its_share(monkeypatch):
    import longshort.engines.vllm as vmod
    from longshort.engines import make_pair

    monkeypatch.setattr(vmod, "VLLMEngine", _Recorder)
    monkeypatch.setattr(_Recorder, "built", [])
    long_e, short_e = make_pair("long-ckpt", "short-ckpt", "vllm", seed=1)
    assert _Recorder.built == [("long-ckpt", {"seed": 1, "gpu_memory_utilization": 0.5}),
                               ("short-ckpt", {"seed": 1, "gpu_memory_utilization": 0.35})]
    assert long_e is not short_e
    _Recorder.built.clear()  # one model plays both roles: one engine, the single-engine share
    long_e, short_e = make_pair("same", "same", "vllm", short_gpu_memory_utilization=0.3)
    assert long_e is short_e and _Recorder.built == [("same", {})]
    _Recorder.built.clear()  # one role alone
    assert make_pair(None, "short-ckpt", "vllm", long_gpu_memory_utilization=0.5)[0] is None
    assert _Recorder.built == [("short-ckpt", {})]


def test_make_pair_refuses_before_any_model_loads(monkeypatch):
    import longshort.engines.vllm as vmod
    from longshort.engines import make_pair

    monkeypatch.setattr(vmod, "VLLMEngine", _Recorder)
    monkeypatch.setattr(_Recorder, "built", [])
    with pytest.raises(LongshortError, match="would take 1.20 of one GPU"):
        make_pair("a", "b", "vllm", long_gpu_memory_utilization=0.85)
    assert _Recorder.built == []


# ----------------------------------------------------------------------------- logprobs and context (fake vllm)


def _fake_vllm(monkeypatch, *, has_logprobs_mode: bool, max_model_len: int | None = 4096):
    """A stand-in `vllm` module whose LLM records its arguments, and an engine built on it."""
    import dataclasses
    import types

    import longshort.engines.vllm as vmod
    import longshort.models as models

    fields = [("model", str, "")] + ([("logprobs_mode", str, "raw_logprobs")] if has_logprobs_mode else [])
    engine_args = dataclasses.make_dataclass("EngineArgs", [(n, t, dataclasses.field(default=d))
                                                            for n, t, d in fields])

    class LLM:
        def __init__(self, **kw):
            self.kw = kw
            if max_model_len is not None:
                self.llm_engine = types.SimpleNamespace(
                    model_config=types.SimpleNamespace(max_model_len=max_model_len))

    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.10.1" if has_logprobs_mode else "0.9.2"
    vllm.LLM, vllm.EngineArgs = LLM, engine_args
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(vmod, "require_gpu", lambda: None)
    monkeypatch.setattr(vmod, "_WARNED", set())
    monkeypatch.setattr(models, "resolve_model_path", lambda spec: f"/models/{spec}")
    monkeypatch.setattr(models, "load_tokenizer", lambda spec: object())
    return vmod


def test_vllm_asks_for_processed_logprobs_when_it_can(monkeypatch):
    import warnings

    vmod = _fake_vllm(monkeypatch, has_logprobs_mode=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where the mode exists
        eng = vmod.VLLMEngine("m", gpu_memory_utilization=0.5)
    assert eng.llm.kw["logprobs_mode"] == "processed_logprobs" and eng.llm.kw["gpu_memory_utilization"] == 0.5
    assert vmod.VLLMEngine("m", logprobs_mode="raw_logprobs").llm.kw["logprobs_mode"] == "raw_logprobs"


def test_older_vllm_warns_once_that_logprobs_are_raw(monkeypatch):
    import warnings

    vmod = _fake_vllm(monkeypatch, has_logprobs_mode=False)
    with pytest.warns(RuntimeWarning, match="vLLM 0.9.2 has no logprobs_mode.*raw"):
        eng = vmod.VLLMEngine("m")
    assert "logprobs_mode" not in eng.llm.kw  # an older vLLM would refuse the argument
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vmod.VLLMEngine("m")  # once per process
        vmod.VLLMEngine("m", logprobs_mode="raw_logprobs")  # asked for raw: nothing to warn about


def test_vllm_context_length_reaches_the_scorers_guard(monkeypatch):
    from longshort.thoughts.importance import ImportanceConfig, engine_context

    vmod = _fake_vllm(monkeypatch, has_logprobs_mode=True, max_model_len=4096)
    eng = vmod.VLLMEngine("m")
    assert eng.max_context == 4096 and engine_context(eng, ImportanceConfig()) == 4096
    assert engine_context(eng, ImportanceConfig(max_context=1024)) == 1024  # the config's wins
    assert vmod.VLLMEngine("m", max_model_len=2048).max_context == 2048  # configured limit
    eng.close()
    assert eng.max_context is None  # closed: nothing to read, callers skip their check
    vmod = _fake_vllm(monkeypatch, has_logprobs_mode=True, max_model_len=None)
    assert vmod.VLLMEngine("m").max_context is None  # a vLLM without llm_engine.model_config
