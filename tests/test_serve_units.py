"""`longshort.serve` pieces tested alone, without HTTP: what `max_tokens` means per turn, token
budgets, the JSON reader, the Host/media-type rules, and the batcher's failure isolation with a
real tiny model."""

from __future__ import annotations

import asyncio
import json

import pytest

from longshort.dialogue.collab import CollabConfig
from longshort.dialogue.protocol import Turn, format_turn
from longshort.engines.base import GenerationRequest, SamplingParams
from longshort.serve.batcher import Batcher
from longshort.serve.config import ServeConfig
from longshort.serve.protocol import APIError, ChatCompletionRequest, json_depth, parse_body
from longshort.serve.sampling import answer_text, dialogue_budget, pair_config, single_budget, single_params
from longshort.serve.security import host_name, is_loopback, json_media_type

BASE = CollabConfig(max_turns=3, max_new_tokens_long=300, max_new_tokens_short=100, temperature=0.7, seed=5)


@pytest.mark.parametrize("max_tokens, long, short", [
    (None, 300, 100),      # unset: the server's per-role limits
    (50, 50, 50),          # below both: caps every turn of both roles
    (200, 200, 100),       # between: caps the long turns, the short limit stays the ceiling
    (10_000, 300, 100),    # above both: never above the server's limits
    (1, 1, 1),
])
def test_pair_config_max_tokens_is_a_per_turn_cap(max_tokens, long, short):
    cfg = pair_config(BASE, max_tokens=max_tokens)
    assert (cfg.max_new_tokens_long, cfg.max_new_tokens_short) == (long, short)
    assert cfg.max_turns == BASE.max_turns and cfg.samples == 1
    assert dialogue_budget(cfg) == 3 * (long + short)


def test_pair_config_sampling_fields_replace_the_servers_only_when_given():
    assert (pair_config(BASE).temperature, pair_config(BASE).seed) == (0.7, 5)
    cfg = pair_config(BASE, temperature=0.0, top_p=0.5, seed=0)  # 0 is a value, not "unset"
    assert (cfg.temperature, cfg.top_p, cfg.seed) == (0.0, 0.5, 0)
    assert BASE.temperature == 0.7  # the server's config is not mutated


@pytest.mark.parametrize("role, max_tokens, ceiling, expected", [
    ("long", None, 4096, 300), ("short", None, 4096, 100), ("short", None, 64, 64),
    ("long", 20, 4096, 20), ("long", 5000, 4096, 4096)])
def test_single_params_limit(role, max_tokens, ceiling, expected):
    p = single_params(BASE, role, max_tokens=max_tokens, ceiling=ceiling, n=3)
    assert p.max_new_tokens == expected and single_budget(p) == 3 * expected
    assert (p.temperature, p.top_p) == (1.0, 1.0)


def test_request_token_cap_defaults_and_validation():
    assert ServeConfig().request_token_cap() == 8192
    big = CollabConfig(max_turns=4, max_new_tokens_long=2048, max_new_tokens_short=2048)
    assert ServeConfig(collab=big).request_token_cap() == 16384  # the server's own defaults always fit
    with pytest.raises(ValueError, match="below the solver's own dialogue budget"):
        ServeConfig(collab=big, max_request_tokens=8192)


def test_answer_text_uses_the_protocol_grammar():
    for body, final in ((" so \\boxed{4} ", True), ("open question", False)):
        text = format_turn("short", body, final=final)
        assert answer_text({"turns": [Turn("short", text).to_dict()]}) == body.strip()
    assert answer_text({"turns": [{"role": "long", "text": "<think>x</think>"}]}) == "x"
    assert answer_text({"turns": []}) == ""


@pytest.mark.parametrize("body, code", [
    (b"[" * 200_000 + b"]" * 200_000, "invalid_json"),                       # C decoder's recursion guard
    (b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}", "invalid_json"),     # under it, over max_depth
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream_options": ' + b'{"a": ' * 70 + b"1"
     + b"}" * 70 + b"}", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[]", "invalid_json"),
    (b'{"messages": "hi"}', "invalid_field"),
])
def test_parse_body_refuses_bad_json_with_400(body, code):
    with pytest.raises(APIError) as info:
        parse_body(body, ChatCompletionRequest, max_bytes=10_000_000, max_depth=64)
    assert info.value.status == 400 and info.value.code == code


def test_parse_body_accepts_ordinary_requests_and_counts_depth():
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}).encode()
    assert parse_body(body, ChatCompletionRequest, max_bytes=1000).messages[0].text() == "hi"
    assert json_depth({"messages": [{"content": [{"type": "text"}]}]}, 64) == 5
    with pytest.raises(APIError) as info:
        parse_body(body, ChatCompletionRequest, max_bytes=10)
    assert info.value.status == 413


@pytest.mark.parametrize("host, name, loop", [
    ("127.0.0.1:8000", "127.0.0.1", True), ("LOCALHOST", "localhost", True), ("[::1]:9", "::1", True),
    ("::1", "::1", True), ("127.0.0.2", "127.0.0.2", True), ("evil.example:8000", "evil.example", False),
    ("0.0.0.0", "0.0.0.0", False), ("10.0.0.5:80", "10.0.0.5", False)])
def test_host_names(host, name, loop):
    assert host_name(host) == name and is_loopback(host) is loop


@pytest.mark.parametrize("ctype, ok", [
    ("application/json", True), ("Application/JSON; charset=utf-8", True), ("application/merge+json", True),
    ("text/plain", False), ("text/plain; charset=utf-8", False), ("", False),
    ("application/x-www-form-urlencoded", False), ("multipart/form-data; boundary=x", False)])
def test_json_media_types(ctype, ok):
    assert json_media_type(ctype) is ok


@pytest.fixture(scope="module")
def engine():
    from longshort.engines.hf import HFEngine

    return HFEngine("tiny-random")


def test_a_failing_batch_is_retried_one_by_one(engine):
    """A request the engine rejects (an empty raw prompt, past the handlers' checks) fails alone;
    the requests that shared its batch get the same answers as when run by themselves."""
    params = SamplingParams(temperature=0, max_new_tokens=4)
    good = [GenerationRequest(prompt=p, params=params) for p in ("1 + 1 =", "The sky is")]
    bad = GenerationRequest(prompt="", params=params)
    with pytest.raises(Exception, match="empty prompt"):
        engine.generate([good[0], bad, good[1]])  # today's engine fails the whole call
    alone = [engine.generate([g])[0].completions[0].text for g in good]

    async def run():
        batcher = Batcher(engine, engine, ServeConfig(max_wait_ms=200, express_max_tokens=0))
        batcher.start()
        try:
            outs = await asyncio.gather(*(batcher.submit("long", ("long", False), g, 4)
                                          for g in (good[0], bad, good[1])), return_exceptions=True)
        finally:
            await batcher.stop()
        return outs, batcher.stats.as_dict()

    outs, stats = asyncio.run(run())
    assert isinstance(outs[1], APIError) and outs[1].status == 500 and "empty prompt" in outs[1].message
    for out, text in zip((outs[0], outs[2]), alone, strict=True):
        result, batch_size = out
        assert batch_size == 3 and result.completions[0].text == text
    assert stats["retried_alone"] == 3 and stats["errors"] == 1 and stats["batches"] == 1


def test_context_checks_before_queueing(engine):
    """With a context the engine declares (here 96 tokens, over the same real weights), prompts
    that cannot fit are refused with 400 before they reach a batch; a default limit is cut."""
    from longshort.engines.hf import HFEngine
    from longshort.serve.handlers import Handlers, model_context, prompt_tokens

    class Small(HFEngine):
        max_context = 96

    small = Small.from_model(engine.model, engine.tokenizer)
    handlers = Handlers(small, small, ServeConfig(express_max_tokens=0, collab=CollabConfig(
        max_turns=2, max_new_tokens_long=8, max_new_tokens_short=8)))
    assert model_context(small) == 96
    gen = GenerationRequest(prompt="one two three " * 40, params=SamplingParams(max_new_tokens=4))
    assert prompt_tokens(small, gen) > 96

    async def check(g, new, explicit):
        return await handlers.check_context("long", g, new, explicit=explicit, what="the prompt")

    with pytest.raises(APIError) as info:
        asyncio.run(check(gen, 4, True))
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    fits = GenerationRequest(prompt="one two three", params=SamplingParams(max_new_tokens=200))
    n = prompt_tokens(small, fits)
    assert asyncio.run(check(fits, 200, False)) == 96 - n    # the server's default: cut to fit
    with pytest.raises(APIError):
        asyncio.run(check(fits, 200, True))                  # asked for by the client: refused
    assert asyncio.run(check(fits, 96 - n, True)) is None
    # the pair: the question with each role's prompt must leave room for the first exchange
    from longshort.dialogue.protocol import render_input

    cfg = handlers.config.collab
    need = max(prompt_tokens(engine, GenerationRequest(messages=m, assistant_prefix=p))
               for m, p in (render_input(r, "What is 1 + 1?", open_tag=True) for r in ("long", "short"))) + 16
    fitted = type("Fitted", (HFEngine,), {"max_context": need}).from_model(engine.model, engine.tokenizer)
    pair = Handlers(fitted, fitted, handlers.config)
    asyncio.run(pair.check_pair_fits("What is 1 + 1?", cfg))  # fits exactly: no error
    with pytest.raises(APIError) as info:
        asyncio.run(pair.check_pair_fits("What is 1 + 1? Explain each step, then check the result twice "
                                         "and once more in other words.", cfg))
    assert info.value.code == "context_length_exceeded"
