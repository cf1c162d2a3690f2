"""The OpenAI-compatible engine against real HTTP servers on 127.0.0.1 started here: a small
FastAPI app with canned, protocol-shaped answers (to see exactly what the client sends, and to
inject 503s and slow answers), our own `longshort serve` app over a real tiny model, and a port
nobody listens on."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from longshort.engines import GenerationRequest, SamplingParams, make_engine
from longshort.engines.openai import OpenAIEngine, normalize_base_url
from longshort.errors import LongshortError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Canned:
    """Server state: what was received, failures to inject, delay per answer."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 0
        self.fail_status = 503
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reply: str | None = None  # when set, the chat answer's content


def canned_app(state: Canned) -> FastAPI:
    app = FastAPI()

    async def handle(kind: str, request: Request):
        body = await request.json()
        state.bodies.append((kind, body))
        if state.fail_next:
            state.fail_next -= 1
            return JSONResponse({"error": {"message": "overloaded, try later"}}, status_code=state.fail_status)
        if body.get("max_tokens", 1) > 10_000:
            return JSONResponse({"error": {"message": "max_tokens too large", "type": "invalid_request_error"}},
                                status_code=400)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(state.delay)
        finally:
            state.in_flight -= 1
        if kind == "chat":
            last = body["messages"][-1]["content"]
            source = f"continue[{last}]" if body.get("continue_final_message") else f"echo[{last}]"
        else:
            source = f"raw[{body['prompt']}]"
        choices, total = [], 0
        for i in range(body.get("n", 1)):
            ntok = 3 + i
            total += ntok
            ch: dict[str, Any] = {"index": i, "finish_reason": "length" if body["max_tokens"] <= ntok else "stop",
                                  "stop_reason": (body.get("stop") or [None])[0]}
            if body.get("logprobs"):
                if kind == "chat":
                    ch["logprobs"] = {"content": [{"token": "t", "logprob": -0.5 * (k + 1), "bytes": None,
                                                   "top_logprobs": []} for k in range(ntok)]}
                else:
                    ch["logprobs"] = {"tokens": ["t"] * ntok, "token_logprobs": [-0.25] * ntok,
                                      "top_logprobs": None, "text_offset": list(range(ntok))}
            text = state.reply if state.reply is not None and kind == "chat" else f"{source}#{i}"
            if kind == "chat":
                ch["message"] = {"role": "assistant", "content": text}
            else:
                ch["text"] = text
            choices.append(ch)
        choices.reverse()  # servers may answer out of order; the index field decides
        return {"id": "x", "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": 0, "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 11, "completion_tokens": total, "total_tokens": 11 + total}}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle("completions", request)

    return app


@pytest.fixture(scope="module")
def canned() -> Iterator[tuple[Canned, str]]:
    state = Canned()
    with serve(canned_app(state)) as url:
        yield state, url


@pytest.fixture
def server(canned):
    state, url = canned
    state.bodies.clear()
    state.fail_next, state.fail_status, state.delay, state.max_in_flight = 0, 503, 0.0, 0
    state.reply = None
    return state, url


def msg(q: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "S"}, {"role": "user", "content": q}]


def test_chat_request_and_response_mapping(server):
    state, url = server
    eng = make_engine("served-model", "openai", base_url=url)
    req = GenerationRequest(messages=msg("2+2?"), params=SamplingParams(
        temperature=0.3, top_p=0.9, max_new_tokens=50, stop=["</think>"], seed=5))
    res = eng.generate([req])[0]
    kind, body = state.bodies[-1]
    assert kind == "chat"
    assert body == {"model": "served-model", "max_tokens": 50, "temperature": 0.3, "top_p": 0.9, "n": 1,
                    "stop": ["</think>"], "seed": 5, "messages": msg("2+2?")}
    c = res.completions[0]
    assert (c.text, c.num_tokens, c.finish_reason, c.stop, c.logprobs) == ("echo[2+2?]#0", 3, "stop", "</think>", None)
    assert res.prompt_tokens == 11 and res.request is req


def test_assistant_prefix_continues_the_final_message(server):
    state, url = server
    eng = OpenAIEngine("m", base_url=url)
    req = GenerationRequest(messages=msg("Q"), assistant_prefix="<think>\nfirst", params=SamplingParams(max_new_tokens=2))
    c = eng.generate([req])[0].completions[0]
    _, body = state.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\nfirst"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert c.text == "continue[<think>\nfirst]#0" and c.finish_reason == "length"


def test_raw_prompt_uses_completions_and_n_samples_count_tokens_per_choice(server):
    state, url = server
    eng = OpenAIEngine("m", base_url=url)
    res = eng.generate([GenerationRequest(prompt="P:", assistant_prefix="go", params=SamplingParams(
        n=3, max_new_tokens=20, logprobs=True))])[0]
    kind, body = state.bodies[-1]
    assert kind == "completions" and body["prompt"] == "P:go" and body["logprobs"] == 1
    assert [c.text for c in res.completions] == ["raw[P:go]#0", "raw[P:go]#1", "raw[P:go]#2"]
    assert [c.num_tokens for c in res.completions] == [3, 4, 5]
    assert res.completions[2].logprobs == [-0.25] * 5
    # n > 1 without logprobs: the engine still asks for them (exact counts) but does not return them
    res = eng.generate([GenerationRequest(messages=msg("q"), params=SamplingParams(n=2, max_new_tokens=20))])[0]
    assert state.bodies[-1][1]["logprobs"] is True
    assert [c.num_tokens for c in res.completions] == [3, 4]
    assert all(c.logprobs is None for c in res.completions)


def test_token_id_prompt_goes_as_the_token_array_prompt(server):
    state, url = server
    eng = OpenAIEngine("m", base_url=url)
    res = eng.generate([GenerationRequest(prompt_token_ids=[5, 6, 7], params=SamplingParams(max_new_tokens=4))])[0]
    kind, body = state.bodies[-1]
    assert kind == "completions" and body["prompt"] == [5, 6, 7]
    assert res.completions[0].text == "raw[[5, 6, 7]]#0"


def test_llm_chunker_asks_an_openai_server_for_its_json_schema(server):
    """The structured-output path over real HTTP: the chunk request carries `response_format`
    with CHUNK_SCHEMA, and the (schema-shaped) answer becomes the thoughts."""
    import json

    from longshort.thoughts.chunking import CHUNK_SCHEMA, llm_chunk_many

    state, url = server
    blocks = [{"start": 1, "end": 2, "type": "problem understanding"}, {"start": 3, "end": 4, "type": "computation"}]
    state.reply = json.dumps({"blocks": blocks})
    eng = OpenAIEngine("m", base_url=url)
    (thoughts, flags), = llm_chunk_many([("What is 2 + 3?", ["Read it.", "Add.", "2 + 3 = 5.", "So 5."])], eng)
    kind, body = state.bodies[-1]
    assert kind == "chat" and body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": CHUNK_SCHEMA, "strict": True}}
    assert [(t["start"], t["end"]) for t in thoughts] == [(1, 2), (3, 4)] and flags == []
    # a plain request carries no response_format
    eng.generate([GenerationRequest(messages=msg("q"), params=SamplingParams(max_new_tokens=4))])
    assert "response_format" not in state.bodies[-1][1]


def test_retries_with_backoff_then_succeeds(server):
    state, url = server
    state.fail_next = 2
    eng = OpenAIEngine("m", base_url=url, backoff=0.05)
    t0 = time.perf_counter()
    c = eng.generate([GenerationRequest(messages=msg("r"), params=SamplingParams(max_new_tokens=9))])[0].completions[0]
    assert c.text == "echo[r]#0" and len(state.bodies) == 3
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # two backoffs: 0.05 then 0.1 s


def test_gives_up_after_retries_with_the_url_and_reason(server):
    state, url = server
    state.fail_next, state.fail_status = 5, 429
    eng = OpenAIEngine("m", base_url=url, backoff=0.01, max_retries=2)
    with pytest.raises(LongshortError) as err:
        eng.generate([GenerationRequest(messages=msg("r"))])
    assert f"{url}/chat/completions" in str(err.value) and "HTTP 429" in str(err.value)
    assert "overloaded" in str(err.value) and len(state.bodies) == 3


def test_client_error_is_not_retried_and_carries_the_server_message(server):
    state, url = server
    eng = OpenAIEngine("m", base_url=url, backoff=0.01)
    with pytest.raises(LongshortError, match="HTTP 400: max_tokens too large"):
        eng.generate([GenerationRequest(messages=msg("x"), params=SamplingParams(max_new_tokens=20_000))])
    assert len(state.bodies) == 1


def test_timeout_is_reported(server):
    state, url = server
    state.delay = 1.0
    eng = OpenAIEngine("m", base_url=url, timeout=0.2, max_retries=1, backoff=0.01)
    with pytest.raises(LongshortError, match="timed out"):
        eng.generate([GenerationRequest(messages=msg("slow"))])


def test_requests_run_concurrently_and_keep_their_order(server):
    state, url = server
    state.delay = 0.3
    eng = OpenAIEngine("m", base_url=url, concurrency=8)
    reqs = [GenerationRequest(messages=msg(f"q{i}"), params=SamplingParams(max_new_tokens=9)) for i in range(8)]
    t0 = time.perf_counter()
    res = eng.generate(reqs, progress=True)
    elapsed = time.perf_counter() - t0
    assert [r.completions[0].text for r in res] == [f"echo[q{i}]#0" for i in range(8)]
    assert state.max_in_flight >= 4 and elapsed < 8 * 0.3 / 2


def test_a_failing_request_does_not_wait_for_the_rest(server):
    state, url = server
    state.delay = 1.0
    eng = OpenAIEngine("m", base_url=url, concurrency=2)
    bad = GenerationRequest(messages=msg("bad"), params=SamplingParams(max_new_tokens=20_000))
    slow = [GenerationRequest(messages=msg(f"s{i}"), params=SamplingParams(max_new_tokens=9)) for i in range(10)]
    t0 = time.perf_counter()
    with pytest.raises(LongshortError, match="HTTP 400"):
        eng.generate([bad, *slow])
    assert time.perf_counter() - t0 < 3.0  # not the ~5 s the queued slow requests would take
    time.sleep(1.2)  # let the one in-flight slow request finish before the next test resets state


def test_unreachable_server_is_a_clear_error_naming_the_url():
    port = free_port()  # nothing listens there
    eng = make_engine("m", "openai", base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(LongshortError) as err:
        eng.generate([GenerationRequest(messages=msg("x"))])
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(err.value)
    assert "ConnectError" in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 5


def test_count_tokens_without_tokenizer_or_tokenize_endpoint_is_a_clear_error(server):
    _, url = server
    with pytest.raises(LongshortError, match="tokenizer=<model spec>"):
        OpenAIEngine("m", base_url=url).count_tokens("abc")
    local = OpenAIEngine("m", base_url=url, tokenizer="tiny-random-bytes")
    assert local.count_tokens("abc") == 3
    assert local.render(GenerationRequest(messages=[{"role": "user", "content": "q"}], assistant_prefix="a")) == \
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na"


def test_base_url_normalisation_and_bad_urls():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    for bad in ("localhost:8000", "ftp://h/v1", ""):
        with pytest.raises(LongshortError, match="invalid base URL"):
            normalize_base_url(bad)


def test_against_our_own_server_matches_the_local_engine():
    """Same seeded requests through `longshort serve` (real tiny model) and the local engine."""
    serve_mod = pytest.importorskip("longshort.serve")
    from longshort.engines.hf import HFEngine

    local = HFEngine("tiny-random", device="cpu")
    app = serve_mod.create_app(local, local, serve_mod.ServeConfig())
    base = GenerationRequest(messages=msg("What is 3*4?"), params=SamplingParams(
        temperature=1.0, max_new_tokens=12, seed=11, n=2))
    sampled = local.generate([base])[0].completions[0].text
    stop = sampled[4:8]
    reqs = [base,
            GenerationRequest(messages=msg("What is 3*4?"), params=SamplingParams(
                temperature=1.0, max_new_tokens=12, seed=11, stop=[stop])),
            GenerationRequest(messages=msg("Q"), assistant_prefix="<think>\nLet me", params=SamplingParams(
                temperature=0, max_new_tokens=5)),
            GenerationRequest(prompt="Once upon", params=SamplingParams(temperature=0, max_new_tokens=4,
                                                                           logprobs=True))]
    expected = local.generate(reqs)
    with serve(app) as url:
        remote = OpenAIEngine("long", base_url=url, tokenizer="tiny-random").generate(reqs)
        text = "Let me count: 1, 2, 3 </think>"
        assert OpenAIEngine("long", base_url=url).count_tokens(text) == local.count_tokens(text)  # via /tokenize
    for exp, got in zip(expected, remote, strict=True):
        assert got.prompt_tokens == exp.prompt_tokens
        for e, g in zip(exp.completions, got.completions, strict=True):
            assert (g.text, g.num_tokens, g.finish_reason, g.stop) == (e.text, e.num_tokens, e.finish_reason, e.stop)
    assert remote[1].completions[0].stop == stop
    assert remote[3].completions[0].logprobs == pytest.approx(expected[3].completions[0].logprobs, abs=1e-5)


def test_each_role_on_its_own_server():
    """`--long-base-url` / `--short-base-url`: two servers (two `vllm serve` processes, one per
    model); the long turns go to one, the short turns to the other, through `solve` end to end."""
    from longshort.cli import main
    from longshort.dialogue.protocol import SYSTEM_PROMPTS
    from longshort.engines import make_pair

    long_state, short_state = Canned(), Canned()
    long_state.reply = "<think>\nadd them\n</think>"
    short_state.reply = "<answer>\n2 + 2 = 4, \\boxed{4}\n</answer>"
    with serve(canned_app(long_state)) as long_url, serve(canned_app(short_state)) as short_url:
        a, b = make_pair("m", "m", "openai", base_url=long_url, short_base_url=short_url)
        assert a is not b and a.base_url != b.base_url
        same, again = make_pair("m", "m", "openai", base_url=long_url)
        assert same is again
        code = main(["solve", "What is 2 + 2?", "--engine", "openai", "--long", "m", "--short", "m",
                     "--long-base-url", long_url, "--short-base-url", short_url, "--max-turns", "1"])
    assert code == 0
    assert long_state.bodies and short_state.bodies
    assert all(b["messages"][0]["content"] == SYSTEM_PROMPTS["long"] for _, b in long_state.bodies)
    assert all(b["messages"][0]["content"] == SYSTEM_PROMPTS["short"] for _, b in short_state.bodies)
