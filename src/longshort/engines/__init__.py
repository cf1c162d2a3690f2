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
           "ENGINE_NAMES", "make_engine", "make_pair"]


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

        _check_options(kind, kwargs, _init_options(HFEngine))
        return HFEngine(model, **kwargs)
    if kind == "openai":
        if not base_url:
            raise LongshortError("engine 'openai' needs a base URL (e.g. --base-url http://127.0.0.1:8000/v1)")
        from longshort.engines.openai import OpenAIEngine, OpenAIEngineConfig

        _check_options(kind, kwargs, set(OpenAIEngineConfig.model_fields) - {"base_url"} | {"config"})
        return OpenAIEngine(model, base_url=base_url, **kwargs)
    from longshort.engines.vllm import VLLMEngine, VLLMEngineConfig

    _check_options(kind, kwargs, set(VLLMEngineConfig.model_fields) | {"config"})
    return VLLMEngine(model, **kwargs)


def make_pair(long: str | None, short: str | None, engine: str = "transformers", *, base_url: str | None = None,
              long_base_url: str | None = None, short_base_url: str | None = None,
              **kwargs: Any) -> tuple[Engine | None, Engine | None]:
    """The engines of the two roles (`make_engine` each), one engine when both roles name the same
    model at the same address; a role given as None gets None (a solo run needs only one). With
    ``engine="openai"`` each role may have its own server (`long_base_url` / `short_base_url`,
    each falling back to `base_url`): two `vllm serve` processes, one per model. With
    ``engine="vllm"`` two different models share the GPU: each gets its own memory share
    (options `long_gpu_memory_utilization` / `short_gpu_memory_utilization`, `vllm.pair_options`),
    and a split that cannot fit is refused before either model loads."""
    long_url, short_url = long_base_url or base_url, short_base_url or base_url
    shared = bool(long) and short == long and short_url == long_url
    long_kw = short_kw = kwargs
    if _ALIASES.get((engine or "").strip().lower()) == "vllm":
        from longshort.engines.vllm import pair_options

        long_kw, short_kw = pair_options(kwargs, two=bool(long and short and not shared))
    long_engine = make_engine(long, engine, base_url=long_url, **long_kw) if long else None
    if shared:
        return long_engine, long_engine
    try:
        return long_engine, (make_engine(short, engine, base_url=short_url, **short_kw) if short else None)
    except BaseException:  # the short model failed to load: release the long one's memory
        if long_engine is not None:
            long_engine.close()
        raise


def _init_options(cls: type) -> set[str]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


def _check_options(kind: str, kwargs: dict[str, Any], accepted: set[str]) -> None:
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise LongshortError(f"engine {kind!r} does not take option(s) {', '.join(unknown)}; "
                             f"it takes: {', '.join(sorted(accepted))}")
