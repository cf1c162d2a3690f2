"""HTTP round trips against the OpenAI-compatible server (`longshort.serve`), over real sockets.

The server runs with uvicorn on 127.0.0.1 (a free port) in a background thread, with real
`tiny-random` engines and the real collaborative solver; the client is httpx. One test also
starts the real `longshort serve` command and runs `longshort solve --engine openai` against it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from longshort.dialogue.collab import CollabConfig
from longshort.engines.hf import HFEngine
from longshort.serve import ServeConfig, create_app

LIMITS = dict(max_batch_size=8, max_wait_ms=300.0, max_tokens_limit=64, max_messages=6, max_chars=3000,
              max_body_bytes=20_000)
COLLAB = CollabConfig(max_turns=2, max_new_tokens_long=12, max_new_tokens_short=12, temperature=0.0)


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def engine():
    return HFEngine("tiny-random")


@pytest.fixture(scope="module")
def base(engine):
    import uvicorn

    app = create_app(engine, engine, ServeConfig(collab=COLLAB, **LIMITS))
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()


def chat(base: str, question: str, headers: dict | None = None, **kw) -> httpx.Response:
    body = {"model": "longshort", "messages": [{"role": "user", "content": question}], **kw}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120, headers=headers)


def test_health_and_models(base):
    h = httpx.get(f"{base}/health", timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    ids = {m["id"]: m for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]}
    assert ids["longshort"]["root"] == "pair"
    assert ids["long"]["root"] == "long" and ids["short"]["root"] == "short"
    assert ids["tiny-random"]["root"] in ("long", "short")  # the engine's spec is an alias


def test_chat_round_trip(base):
    r = chat(base, "What is 2 + 3?")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "longshort"
    choice = data["choices"][0]
    ext = data["longshort"]
    turns = ext["turns"]
    assert turns and turns[0]["role"] == "long"
    assert all(t["role"] in ("long", "short") for t in turns)
    # the answer is the last turn without its tags
    last = turns[-1]["text"]
    assert choice["message"]["content"] in last and "<think>" not in choice["message"]["content"]
    assert choice["finish_reason"] == ("stop" if ext["finished"] else "length")
    # usage per role adds up to the transcript's generated tokens; prompt tokens are apart
    usage = data["usage"]
    assert usage["long_tokens"] == sum(t["tokens"] for t in turns if t["role"] == "long")
    assert usage["short_tokens"] == sum(t["tokens"] for t in turns if t["role"] == "short")
    assert usage["completion_tokens"] == usage["long_tokens"] + usage["short_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    # every turn respects the per-turn limit asked for and the server's solver settings
    r2 = chat(base, "What is 2 + 3?", max_tokens=4)
    assert r2.status_code == 200
    assert all(t["tokens"] <= 4 for t in r2.json()["longshort"]["turns"])


def _sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_streaming_matches_non_streaming(base):
    plain = chat(base, "Compute 6 * 7.").json()
    body = {"model": "longshort", "stream": True, "messages": [{"role": "user", "content": "Compute 6 * 7."}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == plain["choices"][0]["message"]["content"]  # greedy: same dialogue
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["usage"] == plain["usage"]
    streamed_turns = [c["longshort"]["turn"] for c in chunks if "turn" in c.get("longshort", {})]
    assert [t["text"] for t in streamed_turns] == [t["text"] for t in plain["longshort"]["turns"][:-1]]


def test_concurrent_requests_are_batched(base):
    # questions of very different lengths: each answer's prompt-token count identifies its question
    questions = ["What is 1 + 1?", "Add 2 and 2. " * 5 + "What is it?", "Compute 9 - 4, then double it.",
                 "How many legs do 3 cats have? " * 3, "What is 10 / 2?", "Sum 1 + 2 + 3 + 4 + 5 + 6 + 7."]
    alone = {q: chat(base, q).json()["usage"]["prompt_tokens"] for q in questions[:3]}
    before = httpx.get(f"{base}/health", timeout=10).json()["batching"]
    with ThreadPoolExecutor(len(questions)) as pool:
        responses = list(pool.map(lambda q: chat(base, q), questions))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    sizes = [r.json()["longshort"]["batch_size"] for r in responses]
    assert max(sizes) >= 2, sizes
    after = httpx.get(f"{base}/health", timeout=10).json()["batching"]
    assert after["requests"] - before["requests"] == len(questions)
    assert after["batches"] - before["batches"] < len(questions)
    for q, r in zip(questions[:3], responses[:3], strict=True):
        assert r.json()["usage"]["prompt_tokens"] == alone[q]  # each got its own dialogue back


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    ({"model": "longshort"}, 400, "invalid_field"),                                       # no messages
    ({"messages": []}, 400, "invalid_field"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "invalid_field"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_field"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, 400, "no_question"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "no_question"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens_too_large"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n_unsupported"),
    ({"messages": [{"role": "user", "content": "hi"}] * 7}, 413, "too_many_messages"),
    ({"messages": [{"role": "user", "content": "x" * 3001}]}, 413, "input_too_long"),
    ({"messages": [{"role": "user", "content": "x" * 30000}]}, 413, "body_too_large"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "unsupported_content"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "invalid_field"),  # not coerced
    ({"messages": [{"role": "user", "content": "hi"}], "continue_final_message": 1}, 400, "invalid_field"),
    (b'{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', 400, "invalid_json"),  # lone surrogate
])
def test_bad_requests_get_4xx_and_server_keeps_serving(base, body, status, code):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(f"{base}/v1/chat/completions", timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200


def test_server_still_answers_after_bad_requests(base):
    httpx.post(f"{base}/v1/chat/completions", content=b"{oops", timeout=10)
    assert httpx.get(f"{base}/nope", timeout=10).status_code == 404
    assert chat(base, "What is 4 + 4?").status_code == 200


def test_single_model_continue_final_message(base, engine):
    """The openai engine's way of asking one role for one turn: system + user + partial reply."""
    body = {"model": "short", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 3 + 3?"},
                                          {"role": "assistant", "content": "<think>3 + 3 = 6</think>\n<answer>"}],
            "continue_final_message": True, "add_generation_prompt": False,
            "max_tokens": 8, "temperature": 0, "stop": ["</answer>", "</rethink>"], "n": 2, "seed": 1}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["choices"]) == 2
    for c in data["choices"]:
        assert c["finish_reason"] in ("stop", "length")
        assert c["stop_reason"] in (None, "</answer>", "</rethink>")
        assert "</answer>" not in c["message"]["content"]
    assert 0 < data["usage"]["completion_tokens"] <= 16
    # same request straight to the engine: the server adds nothing of its own
    from longshort.engines.base import GenerationRequest, SamplingParams

    direct = engine.generate([GenerationRequest(
        messages=body["messages"][:2], assistant_prefix=body["messages"][2]["content"],
        params=SamplingParams(temperature=0, max_new_tokens=8, stop=body["stop"], n=2, seed=1))])[0]
    assert [c["message"]["content"] for c in data["choices"]] == [c.text for c in direct.completions]
    assert data["usage"]["prompt_tokens"] == direct.prompt_tokens
    # continuing needs an assistant message last
    bad = {**body, "messages": body["messages"][:2]}
    assert httpx.post(f"{base}/v1/chat/completions", json=bad, timeout=30).status_code == 400


def test_text_completions_and_streaming_single(base):
    r = httpx.post(f"{base}/v1/completions", json={"model": "long", "prompt": "1 + 1 =", "max_tokens": 5,
                                                    "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion" and isinstance(r.json()["choices"][0]["text"], str)
    body = {"model": "long", "stream": True, "max_tokens": 5, "temperature": 0,
            "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as s:
        events = _sse_events(s)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] <= 5
    assert httpx.post(f"{base}/v1/completions", json={"model": "longshort", "prompt": "x"},
                      timeout=10).status_code == 400
    lp = httpx.post(f"{base}/v1/completions", json={"model": "long", "prompt": "1 + 1 =", "max_tokens": 3,
                                                     "temperature": 0, "logprobs": 1}, timeout=60).json()
    choice = lp["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == lp["usage"]["completion_tokens"]
    assert all(x <= 0 for x in choice["logprobs"]["token_logprobs"])


def test_tokenize_counts_like_the_engine(base, engine):
    text = "Long and short models <think> take turns </think>"
    r = httpx.post(f"{base}/tokenize", json={"model": "short", "prompt": text, "add_special_tokens": False},
                   timeout=10)
    assert r.status_code == 200 and r.json()["count"] == engine.count_tokens(text)
    assert httpx.post(f"{base}/tokenize", json={"model": "longshort", "prompt": text},
                      timeout=10).status_code == 400


ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "longshort.cli", *args]


def test_cli_serve_and_solve_with_openai_engine(tmp_path):
    """`longshort serve` as a user starts it (API key from LONGSHORT_API_KEY); `longshort solve
    --engine openai` talks to it with the key (from OPENAI_API_KEY, as OpenAI clients read it)."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LONGSHORT_API_KEY": "k-123", "OPENAI_API_KEY": "k-123"}
    proc = subprocess.Popen(_cli("serve", "--long", "tiny-random", "--short", "tiny-random", "--port", str(port),
                                 "--max-new-tokens", "8", "--max-turns", "2", "--log-level", "warning"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600  # a deadline, not a speed target: a loaded machine imports torch slowly
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "longshort serve did not come up"
            time.sleep(0.3)
        assert chat(base, "What is 5 + 5?").status_code == 401
        r = chat(base, "What is 5 + 5?", headers={"Authorization": "Bearer k-123"})
        assert r.status_code == 200 and all(t["tokens"] <= 8 for t in r.json()["longshort"]["turns"])
        out = tmp_path / "t.jsonl"
        solve = subprocess.run(_cli("solve", "What is 5 + 5?", "--engine", "openai", "--base-url", f"{base}/v1",
                                    "--long", "long", "--short", "short", "--max-turns", "2",
                                    "--max-new-tokens", "8", "--out", str(out)),
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert solve.returncode == 0, solve.stdout + solve.stderr
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(recs) == 1 and recs[0]["turns"][0]["role"] == "long"
        assert recs[0]["tokens"]["total"] > 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
