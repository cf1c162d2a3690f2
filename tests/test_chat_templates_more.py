"""`render_chat` where it was still bypassed (issue 12, part 1): the RL rollout's policy prompt,
the openai engine (against a canned server and a real `longshort serve` round trip) and the
`score --dry-run` token counts, with the real DeepSeek-R1-Distill template, whose generation
prompt opens ``<think>`` itself (``<｜Assistant｜><think>\\n``).

The helpers and the tokenizer set-up are those of tests/test_chat_templates.py; the HTTP test
servers are those of tests/test_engine_openai.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from test_chat_templates import QUESTION, reply_part, with_template
from test_engine_openai import Canned, canned_app, serve

from longshort.dialogue.collab import CollabConfig
from longshort.dialogue.protocol import THINK_OPEN, Turn, render_input
from longshort.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    render_chat,
)

R1 = "deepseek-r1-distill-qwen"
LONG_TURN = "<think>\nSix sevens: 6*7 = 42.\n</think>"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def r1_tok():
    from longshort.models import load_tokenizer

    return with_template(load_tokenizer("tiny-random"), R1)


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory, r1_tok):
    """A model directory: the tiny model (embeddings grown for the template's markers) with the
    R1-distill tokenizer, as a served model and its tokenizer spec would be."""
    from longshort.models import load_model

    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    model.resize_token_embeddings(len(r1_tok))
    out = tmp_path_factory.mktemp("r1") / "model"
    model.save_pretrained(out)
    r1_tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def r1_engine(r1_dir):
    from longshort.engines.hf import HFEngine

    return HFEngine(r1_dir, device="cpu")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _reply_thinks(tok, ids: list[int]) -> int:
    """<think> tokens after the last ``<｜Assistant｜>`` token: the model's side of the prompt (the
    system prompt names the tags too)."""
    marker = tok.convert_tokens_to_ids("<｜Assistant｜>")
    last = len(ids) - 1 - ids[::-1].index(marker)
    return ids[last:].count(tok.convert_tokens_to_ids(THINK_OPEN))


# --------------------------------------------------------------------------- RL rollouts


class CannedPartner(Engine):
    """The partner as an engine that writes one fixed turn (the policy's prompt is what is tested)."""

    name = "canned"

    def __init__(self, text: str, stop: str | None, finish_reason: str = "stop"):
        self.text, self.stop, self.finish_reason = text, stop, finish_reason
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[GenerationResult]:
        self.requests += list(requests)
        return [GenerationResult([Completion(self.text, 5, self.finish_reason, self.stop)], prompt_tokens=0,
                                 request=r) for r in requests]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _sft_prompt_ids(tok, messages, prefix: str, completion: str) -> list[int]:
    """The prompt part of the SFT example of a turn (`training.sft.tokenize_example`)."""
    from longshort.training.sft import tokenize_example

    ex = tokenize_example(tok, {"prompt": messages, "assistant_prefix": prefix, "completion": completion},
                          add_eos=False)
    return ex["input_ids"][:ex["completion_mask"].index(1)]


@pytest.fixture(scope="module")
def policy(r1_dir):
    from longshort.models import load_model

    return load_model(r1_dir, dtype="float32", device="cpu")


def _play(role, partner, policy):
    """One short dialogue of QUESTION with `role` trained (the policy) and the canned `partner`."""
    from longshort.training.rollout import DialogueRollout

    model, tok = policy
    rollout = DialogueRollout(role, partner, CollabConfig(max_turns=1, max_new_tokens_long=4, max_new_tokens_short=4))
    torch.manual_seed(0)
    return rollout.play([QUESTION], model, tok)


def test_rollout_policy_prompt_sees_one_think_and_is_the_sft_prompt(policy):
    """The trained long role's first turn: its prompt ids are `render_chat` with the forced
    <think> (the template's own cut: one <think> in text and ids), and with the turn it wrote they
    are the SFT example of that turn (completion = <think> + the generated text)."""
    model, tok = policy
    out = _play("long", CannedPartner("\nok \\boxed{42}\n", "</answer>"), policy)
    prompt_ids = out["prompt_ids"][0]
    messages, forced = render_input("long", QUESTION, open_tag=True)
    text = tok.decode(prompt_ids, skip_special_tokens=False)
    assert text == render_chat(tok, messages, forced)
    assert reply_part(R1, text) == THINK_OPEN  # not the template's "<think>\n<think>"
    assert _reply_thinks(tok, prompt_ids) == 1
    # SFT records carry no forced tag: the turn (which starts with it) is the completion
    turn = out["turns"][0][0]["text"]
    messages, prefix = render_input("long", QUESTION)
    assert prefix == "" and turn.startswith(THINK_OPEN)
    assert prompt_ids == _ids(tok, render_chat(tok, messages, prefix) + THINK_OPEN)
    assert prompt_ids[:-1] == _sft_prompt_ids(tok, messages, prefix, turn)
    policy_ids = [t for t, m in zip(out["completion_ids"][0], out["env_mask"][0], strict=True) if m]
    sft_text = render_chat(tok, messages, prefix) + turn
    assert sft_text.startswith(tok.decode(prompt_ids + policy_ids, skip_special_tokens=False))


def test_rollout_later_turn_prompt_is_the_sft_prompt(policy):
    """The trained short role after the partner's long turn: the transcript's one <think> and
    nothing from the template; the ids are those of the SFT example of that turn + the forced tag."""
    model, tok = policy
    out = _play("short", CannedPartner("\nSix sevens: 6*7 = 42.\n", "</think>"), policy)
    assert out["turns"][0][0]["text"] == LONG_TURN
    messages, prefix = render_input("short", QUESTION, [LONG_TURN])
    _, forced = render_input("short", QUESTION, [LONG_TURN], open_tag=True)
    prompt_ids = out["prompt_ids"][0]
    text = tok.decode(prompt_ids, skip_special_tokens=False)
    assert text == render_chat(tok, messages, forced)
    assert reply_part(R1, text) == forced and reply_part(R1, text).count(THINK_OPEN) == 1
    assert _reply_thinks(tok, prompt_ids) == 1
    turn = out["turns"][0][1]["text"]
    assert _ids(tok, render_chat(tok, messages, prefix)) == _sft_prompt_ids(tok, messages, prefix, turn)
    assert prompt_ids == _ids(tok, render_chat(tok, messages, prefix)) + _ids(tok, forced[len(prefix):])


def test_rollout_prompt_when_the_dialogue_ends_before_the_trained_role(policy):
    """The other place the rollout renders: a long turn cut at its limit ends the dialogue
    (`long_limit: stop`) before the short role speaks; its prompt is still `render_chat`."""
    from longshort.training.rollout import DialogueRollout

    model, tok = policy
    partner = CannedPartner("\nSix sevens", None, finish_reason="length")
    rollout = DialogueRollout("short", partner, CollabConfig(max_turns=1, max_new_tokens_long=4,
                                                             max_new_tokens_short=4, long_limit="stop"))
    out = rollout.play([QUESTION], model, tok)
    assert out["end_reason"] == ["token_limit"] and [t["role"] for t in out["turns"][0]] == ["long"]
    turns = [Turn.from_dict(t) for t in out["turns"][0]]
    messages, prefix = render_input("short", QUESTION, turns)
    text = tok.decode(out["prompt_ids"][0], skip_special_tokens=False)
    assert text == render_chat(tok, messages, prefix) and reply_part(R1, text).count(THINK_OPEN) == 1
    assert _reply_thinks(tok, out["prompt_ids"][0]) == 1
    assert out["prompt_ids"][0] == _sft_prompt_ids(tok, messages, prefix, "<answer>")


def test_render_prompt_is_gone():
    """One home per concept: training code renders with `engines.base.render_chat`."""
    import longshort.training.common as common

    assert not hasattr(common, "render_prompt")


# --------------------------------------------------------------------------- openai engine


@pytest.fixture(scope="module")
def canned():
    state = Canned()
    with serve(canned_app(state)) as url:
        yield state, url


def test_openai_engine_with_a_tokenizer_sends_the_rendered_prompt(canned, r1_dir, r1_tok):
    """With `tokenizer=` a chat request (with a prefix or not) goes to /completions as the
    `render_chat` text, BOS included and not added again; `render()` is that text. Without one it
    stays on /chat/completions with `continue_final_message`, which transformers (and so `vllm
    serve`) refuse for this template."""
    from longshort.engines.openai import OpenAIEngine

    state, url = canned
    eng = OpenAIEngine("m", base_url=url, tokenizer=r1_dir)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    reqs = []
    for earlier in ([], [LONG_TURN]):
        msgs, prefix = render_input("short" if earlier else "long", QUESTION, earlier, open_tag=True)
        reqs.append(GenerationRequest(messages=msgs, assistant_prefix=prefix, params=SamplingParams(
            max_new_tokens=4, n=2, json_schema=schema if earlier else None)))
    reqs.append(GenerationRequest(messages=render_input("long", QUESTION)[0], params=SamplingParams(max_new_tokens=4)))
    state.bodies.clear()
    results = eng.generate(reqs)
    assert len(state.bodies) == len(reqs)
    for req, res in zip(reqs, results, strict=True):
        prompt = render_chat(r1_tok, req.messages, req.assistant_prefix)
        kind, body = next(b for b in state.bodies if b[1].get("prompt") == prompt)
        assert kind == "completions" and body["add_special_tokens"] is False and "messages" not in body
        assert prompt.startswith(r1_tok.bos_token) and reply_part(R1, prompt) == req.assistant_prefix
        assert body.get("response_format", {}).get("type") == ("json_schema" if req.params.json_schema else None)
        assert eng.render(req) == prompt
        assert [c.text for c in res.completions] == [f"raw[{prompt}]#{i}" for i in range(req.params.n)]
        if req.params.n > 1:
            assert body["logprobs"] == 1 and [c.num_tokens for c in res.completions] == [3, 4]

    for chat in (OpenAIEngine("m", base_url=url), OpenAIEngine("m", base_url=url, tokenizer=r1_dir,
                                                                local_render=False)):
        state.bodies.clear()
        chat.generate(reqs[1:2])
        kind, body = state.bodies[-1]
        assert kind == "chat" and body["continue_final_message"] is True and "add_special_tokens" not in body
        with pytest.raises(ValueError, match="final message does not appear"):
            r1_tok.apply_chat_template(body["messages"], continue_final_message=True, tokenize=False)
    # with local_render off, render() is what the server's template makes of it: its <think> kept
    served = chat.render(reqs[0])
    assert reply_part(R1, served) == "<think>\n" + THINK_OPEN != reply_part(R1, eng.render(reqs[0]))


def test_openai_engine_against_longshort_serve_is_the_local_engine(r1_dir, r1_engine, r1_tok):
    """A real round trip: `longshort serve` over the R1-templated tiny model. The openai engine
    with the model's tokenizer posts /v1/completions, the server takes it, and every dialogue turn
    comes back as the in-process engine generates it (same prompt tokens: one BOS, one <think>);
    the chat route (`local_render=False`, our server continues the final message itself) agrees."""
    import longshort.serve as serve_mod
    from longshort.engines.openai import OpenAIEngine

    app = serve_mod.create_app(r1_engine, r1_engine, serve_mod.ServeConfig())
    paths: list[str] = []

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            paths.append(scope["path"])
        await app(scope, receive, send)

    reqs = []
    for role, earlier in (("long", []), ("short", [LONG_TURN])):
        msgs, prefix = render_input(role, QUESTION, earlier, open_tag=True)
        reqs.append(GenerationRequest(messages=msgs, assistant_prefix=prefix,
                                      params=SamplingParams(temperature=0, max_new_tokens=5)))
    msgs, prefix = render_input("long", QUESTION)
    reqs.append(GenerationRequest(messages=msgs, params=SamplingParams(temperature=1.0, max_new_tokens=5, seed=3,
                                                                       n=2, logprobs=True)))
    expected = r1_engine.generate(reqs)
    with serve(recording) as url:
        remote = OpenAIEngine("long", base_url=url, tokenizer=r1_dir).generate(reqs)
        assert paths and set(paths) == {"/v1/completions"}
        via_chat = OpenAIEngine("long", base_url=url, tokenizer=r1_dir, local_render=False).generate(reqs)
        assert "/v1/chat/completions" in paths
    for req, exp, got, chat in zip(reqs, expected, remote, via_chat, strict=True):
        text = render_chat(r1_tok, req.messages, req.assistant_prefix)
        assert got.prompt_tokens == exp.prompt_tokens == chat.prompt_tokens == len(_ids(r1_tok, text))
        for e, g, c in zip(exp.completions, got.completions, chat.completions, strict=True):
            assert (g.text, g.num_tokens, g.finish_reason) == (e.text, e.num_tokens, e.finish_reason)
            assert (c.text, c.num_tokens, c.finish_reason) == (e.text, e.num_tokens, e.finish_reason)
    assert remote[2].completions[0].logprobs == pytest.approx(expected[2].completions[0].logprobs, abs=1e-5)


# --------------------------------------------------------------------------- score --dry-run


def test_dry_run_counts_the_engines_prompt(r1_dir, r1_engine):
    """`score --dry-run` counts with the tokenizer alone (`_TokenizerOnly`): its rendering and
    prompt-token count are the transformers engine's, not the raw template's (one <think> fewer)."""
    from longshort.cli.thoughts import _TokenizerOnly
    from longshort.thoughts.importance import ImportanceConfig, plan_trace, solo_messages

    counter = _TokenizerOnly(r1_dir)
    tok = counter.tokenizer
    assert counter.max_context == json.loads((Path(r1_dir) / "config.json").read_text())["max_position_embeddings"]
    prefix = THINK_OPEN + "\nFirst thought."
    for req in (GenerationRequest(messages=solo_messages(QUESTION)),
                GenerationRequest(messages=solo_messages(QUESTION), assistant_prefix=prefix),
                GenerationRequest(prompt="raw", assistant_prefix="+p"),
                GenerationRequest(prompt_token_ids=_ids(tok, "a b"))):
        assert counter.render(req) == r1_engine.render(req)
    assert reply_part(R1, counter.render(GenerationRequest(messages=solo_messages(QUESTION)))) == ""
    raw = tok.apply_chat_template(solo_messages(QUESTION), add_generation_prompt=True, tokenize=False)
    record = {"id": "a", "problem": QUESTION, "answer": "42", "response": "<think>\nx\n</think>",
              "thoughts": [{"text": "6*7 = 42."}]}
    cfg = ImportanceConfig(rollouts=1, max_new_tokens=4)
    base = plan_trace(counter, record, cfg)["prompt_tokens"]
    assert base == plan_trace(r1_engine, record, cfg)["prompt_tokens"]
    assert base == r1_engine.count_tokens(r1_engine.render(GenerationRequest(messages=solo_messages(QUESTION))))
    assert base < counter.count_tokens(raw)
