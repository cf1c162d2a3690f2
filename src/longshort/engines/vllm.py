"""In-process vLLM engine (optional extra `longshort[vllm]`, CUDA GPUs only).

vLLM is imported only when this engine is built, so the rest of longshort never needs it.
Prefix caching is on: the Monte Carlo rollouts and the dialogue turns share long prompt prefixes,
which vLLM then encodes once. Prompts are rendered with the same chat template + assistant prefix
as the transformers engine and handed over as token ids, so both engines see identical inputs.

Two models on one GPU (a pair whose roles are different models): `pair_options` gives each its
own share of GPU memory and refuses, before any model loads, a split that cannot fit
(docs/engines.md, "vLLM: two models on one GPU"). Logprobs are requested in vLLM's
`processed_logprobs` mode (temperature and top-p applied) where the installed vLLM has it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from longshort.engines.base import Completion, Engine, GenerationRequest, GenerationResult, render_request
from longshort.errors import LongshortError


class VLLMEngineConfig(BaseModel):
    """Settings of the in-process vLLM engine."""

    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache); 0.85 leaves "
                                      "room for the CUDA context and a small trainer on the same GPU. A pair of "
                                      "two models splits this share (`VLLMPairConfig`).")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + completion; None = the model's "
                                                               "own limit.")
    dtype: str = Field("auto", description="Weights dtype; auto = the checkpoint's (bfloat16 for most).")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes "
                                                          "(rollouts and dialogue turns share long prefixes).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model; 1 fits every model we train.")
    seed: int = Field(0, description="Engine seed for requests without their own seed (reproducible runs).")
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs", description="What returned logprobs mean: processed = under the distribution "
        "sampled from (temperature and top-p applied), the nearest to the transformers engine's "
        "temperature-scaled logprobs; raw = the model's plain softmax (vLLM's own default). Needs vLLM >= 0.10; "
        "older versions return their default and the engine warns once.")


#: The most two in-process engines may take of one GPU together: each engine's CUDA context and
#: allocator overhead (about 0.5-1 GiB) lie outside its `gpu_memory_utilization`, and vLLM refuses
#: to start an engine whose share is more than the memory still free.
PAIR_MEMORY_CEILING = 0.95
#: The long model's part of the pair's budget by default (0.5 of 0.85; the short model gets 0.35):
#: it writes the long thoughts, so it needs the larger KV cache.
LONG_SHARE = 10 / 17
PAIR_KEYS = ("long_gpu_memory_utilization", "short_gpu_memory_utilization")


class VLLMPairConfig(BaseModel):
    """How two in-process vLLM engines (the long and the short model, when they differ) share one GPU.
    These are `engine_options` of `make_pair` only; one engine alone uses `gpu_memory_utilization`."""

    model_config = ConfigDict(extra="forbid")

    long_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="The long model's share of GPU memory; None = 10/17 of "
        "`gpu_memory_utilization` (0.5 of the default 0.85): its long thoughts need the larger KV cache.")
    short_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="The short model's share; None = 7/17 of `gpu_memory_utilization` "
        "(0.35 of the default 0.85), so that by default the pair takes what one engine would.")


def pair_options(options: Mapping[str, Any], *, two: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The constructor options of the long and the short engine from one set of `engine_options`.

    `two`: both roles get their own engine on this GPU (two different models). Then each gets its
    own `gpu_memory_utilization` (`VLLMPairConfig`), and a split above `PAIR_MEMORY_CEILING` is
    refused here, before any model loads. Otherwise (one model for both roles, or one role alone)
    the options are the same for both, without the pair's keys. Pure arithmetic: no vLLM, no GPU.
    """
    rest = {k: v for k, v in options.items() if k not in PAIR_KEYS}
    if not two:
        return rest, dict(rest)
    try:
        pair = VLLMPairConfig(**{k: options[k] for k in PAIR_KEYS if k in options})
        base = rest.get("config")
        if not isinstance(base, VLLMEngineConfig):
            base = VLLMEngineConfig(**({"gpu_memory_utilization": rest["gpu_memory_utilization"]}
                                       if "gpu_memory_utilization" in rest else {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()))
        raise LongshortError(f"engine 'vllm' option {field}: {err.get('msg', 'invalid')}") from None
    total = base.gpu_memory_utilization
    long_f = pair.long_gpu_memory_utilization or round(total * LONG_SHARE, 4)
    short_f = pair.short_gpu_memory_utilization or round(total - total * LONG_SHARE, 4)
    if long_f + short_f > PAIR_MEMORY_CEILING + 1e-9:
        raise LongshortError(
            f"engine 'vllm': the long and short models would take {long_f + short_f:.2f} of one GPU's memory "
            f"(long {long_f:g} + short {short_f:g}), above the {PAIR_MEMORY_CEILING:g} two in-process engines can "
            "share; set the engine options long_gpu_memory_utilization and short_gpu_memory_utilization (or a "
            "lower gpu_memory_utilization, which they split 10:7), or run one `vllm serve` per model and use "
            "engine openai with long_base_url / short_base_url")

    def with_share(share: float) -> dict[str, Any]:
        if isinstance(rest.get("config"), VLLMEngineConfig):
            return {**rest, "config": rest["config"].model_copy(update={"gpu_memory_utilization": share})}
        return {**rest, "gpu_memory_utilization": share}

    return with_share(long_f), with_share(short_f)


def require_vllm() -> Any:
    """Import vllm or raise a clear error saying how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise LongshortError("engine 'vllm' needs the optional extra: pip install 'longshort[vllm]' "
                             "(CUDA GPU only); or use --engine transformers") from exc
    return vllm


def require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise LongshortError("engine 'vllm' needs a CUDA GPU and none is visible; use --engine transformers "
                             "(or --engine openai with a vLLM server elsewhere)")


def accepts_logprobs_mode(vllm: Any) -> bool:
    """Whether this vLLM's engine arguments have `logprobs_mode` (vLLM >= 0.10)."""
    import dataclasses
    import inspect

    args = getattr(vllm, "EngineArgs", None)
    if args is not None and dataclasses.is_dataclass(args):
        return any(f.name == "logprobs_mode" for f in dataclasses.fields(args))
    try:
        return "logprobs_mode" in inspect.signature(vllm.LLM.__init__).parameters
    except (AttributeError, TypeError, ValueError):
        return False


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class VLLMEngine(Engine):
    """Generation with vLLM's offline `LLM` class."""

    name = "vllm"
    structured_output = True  # guided (structured-output) decoding

    def __init__(self, model: str, *, config: VLLMEngineConfig | None = None, **kwargs: Any):
        vllm = require_vllm()
        require_gpu()
        from longshort.models import load_tokenizer, resolve_model_path

        self.config = config or VLLMEngineConfig(**kwargs)
        self.model_name = model
        path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(model)
        c = self.config
        extra: dict[str, Any] = {}
        if accepts_logprobs_mode(vllm):
            extra["logprobs_mode"] = c.logprobs_mode
        elif c.logprobs_mode != "raw_logprobs":
            _warn_once("raw_logprobs", f"vLLM {getattr(vllm, '__version__', '?')} has no logprobs_mode (it came "
                       "in vLLM 0.10): its logprobs are raw (the model's softmax, before temperature and top-p), "
                       "not the temperature-scaled ones of the transformers engine")
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=c.dtype, seed=c.seed,
                            gpu_memory_utilization=c.gpu_memory_utilization, max_model_len=c.max_model_len,
                            enable_prefix_caching=c.enable_prefix_caching,
                            tensor_parallel_size=c.tensor_parallel_size, **extra)

    def render(self, request: GenerationRequest) -> str:
        """The text vLLM is given (as token ids): `base.render_chat`, the raw prompt (+ prefix), or
        the token ids decoded."""
        return render_request(self.tokenizer, request)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def max_context(self) -> int | None:
        """vLLM's `max_model_len` (the configured one, else what vLLM derived from the model)."""
        if self.config.max_model_len:
            return self.config.max_model_len
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        for config in (getattr(engine, "model_config", None),  # vLLM's LLMEngine, V0 and V1
                       getattr(getattr(engine, "vllm_config", None), "model_config", None)):
            try:
                return int(config.max_model_len)
            except (AttributeError, TypeError, ValueError):
                continue
        return None

    def _params(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams as VSP

        p = req.params
        extra: dict[str, Any] = {}
        if p.json_schema is not None:
            try:  # vLLM >= 0.11
                from vllm.sampling_params import StructuredOutputsParams

                extra["structured_outputs"] = StructuredOutputsParams(json=p.json_schema)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                extra["guided_decoding"] = GuidedDecodingParams(json=p.json_schema)
        return VSP(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens,
                   stop=list(p.stop or []) or None, seed=p.seed, logprobs=1 if p.logprobs else None,
                   include_stop_str_in_output=False, skip_special_tokens=True, **extra)

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False
                 ) -> list[GenerationResult]:
        requests = list(requests)
        if not requests:
            return []
        prompts = [{"prompt_token_ids": list(r.prompt_token_ids) if r.prompt_token_ids is not None
                    else self.tokenizer(self.render(r), add_special_tokens=False)["input_ids"]}
                   for r in requests]
        outputs = self.llm.generate(prompts, sampling_params=[self._params(r) for r in requests], use_tqdm=progress)
        results = []
        for req, out in zip(requests, outputs, strict=True):
            comps = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                stop = o.stop_reason if isinstance(o.stop_reason, str) else None
                lps = None
                if req.params.logprobs and o.logprobs is not None:
                    lps = [float(step[t].logprob) for t, step in zip(ids, o.logprobs, strict=False)]
                comps.append(Completion(text=o.text, num_tokens=len(ids),
                                        finish_reason="length" if o.finish_reason == "length" else "stop",
                                        stop=stop, token_ids=ids, logprobs=lps))
            results.append(GenerationResult(completions=comps, prompt_tokens=len(out.prompt_token_ids),
                                            request=req))
        return results

    def close(self) -> None:
        import gc

        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
