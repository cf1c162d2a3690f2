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
