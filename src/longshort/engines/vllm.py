"""In-process vLLM engine (optional extra `longshort[vllm]`, CUDA GPUs only).

vLLM is imported only when this engine is built, so the rest of longshort never needs it.
Prefix caching is on: the Monte Carlo rollouts and the dialogue turns share long prompt prefixes,
which vLLM then encodes once. Prompts are rendered with the same chat template + assistant prefix
as the transformers engine and handed over as token ids, so both engines see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from longshort.engines.base import Completion, Engine, GenerationRequest, GenerationResult
from longshort.errors import LongshortError


class VLLMEngineConfig(BaseModel):
    """Settings of the in-process vLLM engine."""

    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache); 0.85 leaves "
                                      "room for a second engine's weights or a trainer on the same GPU.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + completion; None = the model's "
                                                               "own limit.")
    dtype: str = Field("auto", description="Weights dtype; auto = the checkpoint's (bfloat16 for most).")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes "
                                                          "(rollouts and dialogue turns share long prefixes).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model; 1 fits every model we train.")
    seed: int = Field(0, description="Engine seed for requests without their own seed (reproducible runs).")


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
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=c.dtype, seed=c.seed,
                            gpu_memory_utilization=c.gpu_memory_utilization, max_model_len=c.max_model_len,
                            enable_prefix_caching=c.enable_prefix_caching,
                            tensor_parallel_size=c.tensor_parallel_size)

    def render(self, request: GenerationRequest) -> str:
        if request.prompt_token_ids is not None:
            return self.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
        if request.prompt is not None:
            return request.prompt + request.assistant_prefix
        return self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False) \
            + request.assistant_prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def max_context(self) -> int | None:
        """vLLM's `max_model_len` (the configured one, else what vLLM derived from the model)."""
        if self.config.max_model_len:
            return self.config.max_model_len
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:
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
