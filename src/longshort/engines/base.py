"""The one generation interface every backend implements (DESIGN §3).

A request is chat messages (optionally with the beginning of the assistant's reply to
continue, used by Monte Carlo rollouts), a raw, already-templated prompt, or the prompt's token
ids (vLLM's `prompt_token_ids`: RL samples the policy on exactly the ids its loss sees), plus
sampling parameters. A result holds `n` completions, each with its text, generated-token count, finish
reason and, when asked, per-token logprobs. Engines batch internally; callers hand over as many
requests as they have.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

#: Opening tags a chat template may write at the end of its generation prompt (DeepSeek-R1 and its
#: distills since 2025-02: ``<｜Assistant｜><think>\n``; QwQ-32B: ``<|im_start|>assistant\n<think>\n``).
#: A fact about templates, not our protocol (engines sit below dialogue/): the long role's opening
#: tag is the same `<think>`, and `tests/test_chat_templates.py` checks that they stay equal.
TEMPLATE_OPEN_TAGS: tuple[str, ...] = ("<think>",)


def chat_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The chat template's rendering of `messages` with the generation prompt, less an opening tag
    (``<think>``, ``<answer>``) and the whitespace after it that the template puts at the very end
    of the generation prompt.

    Every longshort reply carries its own opening tag: the model writes it, or the assistant
    prefix holds it (``force_open_tag``, the transcript, scoring's ``<think>\\n``). Kept, the
    template's tag would be doubled (``<think>\\n<think>``) or, with an empty prefix, the turn's
    tag would live in the prompt while its text and its SFT example start with it. Cut, the model
    sees exactly one opening tag, the one of the text we record and train on. A tag inside a
    message (not written by the generation prompt) is left alone.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    cut = _trailing_open_tag(text)
    if cut is None:
        return text
    base = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    if text.startswith(base) and cut < len(base):
        return text  # the tag ends the last message, not the generation prompt
    return text[:cut]


def _trailing_open_tag(text: str) -> int | None:
    """Where a trailing opening tag (then only whitespace) starts in `text`, or None."""
    stripped = text.rstrip()
    for tag in TEMPLATE_OPEN_TAGS:
        if stripped.endswith(tag):
            return len(stripped) - len(tag)
    return None


def render_chat(tokenizer: Any, messages: list[Message], assistant_prefix: str = "") -> str:
    """The exact text a model is given for chat `messages` continued by `assistant_prefix`:
    `chat_prompt` (the generation prompt without a template-written opening tag) + the prefix.

    The one rendering of every engine (`Engine.render`: transformers, vLLM) and of the SFT
    examples and their exports, so training text and inference text are the same string. The
    transcript stays in the prefix, never in earlier assistant messages, so templates that strip
    earlier reasoning from assistant messages (R1-distill's ``content.split('</think>')[-1]``,
    Qwen3's, QwQ's) never see it.

    >>> class Tok:
    ...     def apply_chat_template(self, messages, add_generation_prompt, tokenize):
    ...         return "<U>" + messages[-1]["content"] + ("<A><think>\\n" if add_generation_prompt else "")
    >>> render_chat(Tok(), [{"role": "user", "content": "1+1?"}], "<think>")
    '<U>1+1?<A><think>'
    """
    return chat_prompt(tokenizer, messages) + assistant_prefix


@dataclass
class SamplingParams:
    """How to sample one request.

    temperature: 0 means greedy decoding.
    top_p: nucleus sampling mass.
    max_new_tokens: hard limit on generated tokens per completion (finish_reason "length").
    stop: strings that end a completion; the matched string is cut from `text` and reported in
        `Completion.stop`. Tokens up to and including the stop are counted as generated.
    n: completions per request. Engines encode the shared prompt once for all n (KV reuse).
    seed: makes sampling reproducible for a request (same seed, same request → same outputs).
    logprobs: return the log-probability of every generated token.
    json_schema: constrain the completion to JSON matching this JSON Schema on engines that can
        (`Engine.structured_output`: the openai engine sends `response_format` type `json_schema`,
        vLLM decodes with guided/structured decoding); other engines sample freely, so callers
        still validate what comes back.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    json_schema: dict[str, Any] | None = None


@dataclass
class GenerationRequest:
    """One prompt: `messages` (chat, rendered by the engine with the model's template),
    `prompt` (raw text, sent as is) or `prompt_token_ids` (token ids, used as they are: no
    template, no encoding; transformers and vLLM engines). `assistant_prefix` is appended after
    the generation prompt so the model continues a partial reply (Monte Carlo rollouts)."""

    messages: list[Message] | None = None
    prompt: str | None = None
    assistant_prefix: str = ""
    params: SamplingParams = field(default_factory=SamplingParams)
    meta: dict[str, Any] = field(default_factory=dict)  # caller's bookkeeping, passed through
    prompt_token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.messages, self.prompt, self.prompt_token_ids))
        if given != 1:
            raise ValueError("GenerationRequest needs exactly one of `messages`, `prompt` or `prompt_token_ids`")
        if self.prompt_token_ids is not None and self.assistant_prefix:
            raise ValueError("`assistant_prefix` goes with `messages` or `prompt`; append its ids to "
                             "`prompt_token_ids` instead")


FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    text: str                      # generated text, stop string (if any) removed
    num_tokens: int                # generated tokens, including the stop string's tokens
    finish_reason: FinishReason    # "stop": EOS or a stop string; "length": max_new_tokens hit
    stop: str | None = None        # the stop string that ended it, if any
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


@dataclass
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int             # reported apart, never counted as generated tokens
    request: GenerationRequest | None = None


class Engine(ABC):
    """A generation backend. Subclasses: transformers (`hf`), `openai`, `vllm`."""

    name: str = "base"
    model_name: str = ""
    #: Whether `SamplingParams.json_schema` constrains the output (openai, vllm) or is ignored.
    structured_output: bool = False

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False
                 ) -> list[GenerationResult]:
        """Generate for all requests (batched internally); results in request order."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` has under this engine's tokenizer."""

    #: The longest sequence (prompt + generated tokens) the engine's model takes; None when the
    #: engine cannot tell (callers then skip their context checks). Engines override it with a
    #: property reading their model (hf: max_position_embeddings, vllm: max_model_len, openai: option).
    max_context: int | None = None

    def open_session(self) -> GenerationSession:
        """A session for callers that keep feeding requests as results come back (the solver's
        dialogues: each turn's result makes the next turn's request). Engines that can join new
        requests into a running decode (continuous batching: `hf` off its static fast path)
        override it; this default runs each step's requests in one `generate` call."""
        return GenerationSession(self)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, HTTP sessions)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_request(tokenizer: Any, request: GenerationRequest) -> str:
    """The exact text a model is given for `request`: its token ids decoded, its raw prompt (+ the
    assistant prefix), or `render_chat` of its messages. The `render` of every engine that holds
    the model's tokenizer (transformers, vLLM, openai with ``tokenizer=``) and of `score --dry-run`."""
    if request.prompt_token_ids is not None:
        return tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
    if request.prompt is not None:
        return request.prompt + request.assistant_prefix
    return render_chat(tokenizer, request.messages, request.assistant_prefix)


class GenerationSession:
    """Requests in, results out as they finish (`Engine.open_session`).

    `add(requests)` queues requests; `step()` advances the engine and returns the (request,
    result) pairs that finished since the last step, in no promised order; `len(session)` counts
    the requests added and not yet returned. This base class is the fallback of every engine:
    a step is one `generate` call on all requests added since the previous step (a whole batch
    at a time). `engines.session.ContinuousSession` makes a step one decode step instead.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._waiting: list[GenerationRequest] = []

    def add(self, requests: Sequence[GenerationRequest]) -> None:
        self._waiting.extend(requests)

    def __len__(self) -> int:
        return len(self._waiting)

    def step(self) -> list[tuple[GenerationRequest, GenerationResult]]:
        batch, self._waiting = self._waiting, []
        if not batch:
            return []
        results = self.engine.generate(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        return list(zip(batch, results, strict=True))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Drop what is still queued or decoding."""
