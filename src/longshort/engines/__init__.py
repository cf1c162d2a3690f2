"""Generation engines (DESIGN §3): one interface (`base.Engine`), three backends.

`make_engine(model, engine)` builds one by name: `transformers` (alias `hf`, the default,
in-process), `openai` (any OpenAI-compatible server at `base_url`), `vllm` (optional extra,
in-process on a GPU). Backends are imported lazily so that e.g. vllm is only needed when used.
"""

from __future__ import annotations

from typing import Any

from longshort.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from longshort.errors import LongshortError

ENGINE_NAMES = ("transformers", "openai", "vllm")
_ALIASES = {"transformers": "transformers", "hf": "transformers", "openai": "openai", "vllm": "vllm"}

__all__ = ["Completion", "Engine", "GenerationRequest", "GenerationResult", "SamplingParams",
           "ENGINE_NAMES", "make_engine"]


def make_engine(model: str, engine: str = "transformers", *, base_url: str | None = None,
                **kwargs: Any) -> Engine:
    """Build the engine called `engine` for `model` (a model spec, or the served model's name for
    `openai`). Extra keyword arguments go to the engine's constructor."""
    kind = _ALIASES.get((engine or "").strip().lower())
    if kind is None:
        raise LongshortError(f"unknown engine {engine!r}; accepted: transformers (alias hf), openai, vllm")
    if kind != "openai" and base_url:
        raise LongshortError(f"--base-url is only used with --engine openai (got engine {engine!r})")
    if kind == "transformers":
        from longshort.engines.hf import HFEngine

        return HFEngine(model, **kwargs)
    if kind == "openai":
        if not base_url:
            raise LongshortError("engine 'openai' needs a base URL (e.g. --base-url http://127.0.0.1:8000/v1)")
        from longshort.engines.openai import OpenAIEngine

        return OpenAIEngine(model, base_url=base_url, **kwargs)
    from longshort.engines.vllm import VLLMEngine

    return VLLMEngine(model, **kwargs)
