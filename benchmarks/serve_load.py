"""Load test of `longshort serve`: N concurrent clients on loopback for a bounded time.

Starts the server in this process (uvicorn on 127.0.0.1, a free port) twice with the same models
and settings, once with request batching and once with batching off (max batch 1), and lets
`--clients` concurrent clients send chat requests to the pair for `--duration` seconds each.
Prints requests/s, p50/p95 latency and errors (must be 0) side by side, with ratios.
With `--base-url` it measures an already running server instead (one column).

`--fairness` measures the other claim: the latency of a short request (4 tokens) sent while a
long one (`--long-tokens`, default 1024) generates, with the express lane on and off (one
generation thread) side by side. Target (issue 11): under 2 s on the tiny model with the lane.

    .venv/bin/python benchmarks/serve_load.py                       # tiny-random pair, ~1 min
    .venv/bin/python benchmarks/serve_load.py --long smollm2-135m --short smollm2-135m --duration 60
    .venv/bin/python benchmarks/serve_load.py --fairness            # short-while-long latency
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time

import httpx
from _machine import header as machine_header

QUESTIONS = [
    "What is 12 + 35?", "Compute 7 * 8.", "What is 144 / 12?", "What is 99 - 45?",
    "A box holds 6 eggs. How many eggs are in 7 boxes?", "What is 3^4?",
    "Tom has 15 apples and gives away 6. How many are left?", "What is 25% of 80?",
]


def start_server(long: str, short: str, *, max_batch: int, max_wait_ms: float, max_new_tokens: int,
                 max_turns: int, **serve_options):
    """Run the app with uvicorn in a daemon thread on a loopback port; returns (base_url, stop)."""
    import uvicorn

    from longshort.dialogue.collab import CollabConfig
    from longshort.engines import make_engine
    from longshort.serve import ServeConfig, create_app

    long_engine = make_engine(long)
    short_engine = long_engine if short == long else make_engine(short)
    collab = CollabConfig(max_turns=max_turns, max_new_tokens_long=max_new_tokens,
                          max_new_tokens_short=max_new_tokens, temperature=0.0)
    app = create_app(long_engine, short_engine,
                     ServeConfig(max_batch_size=max_batch, max_wait_ms=max_wait_ms, collab=collab, **serve_options))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("server did not come up within 60 s")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

    return base + "/v1", stop


async def load(base_url: str, clients: int, duration: float, max_tokens: int | None) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    completion_tokens = 0
    stop_at = time.perf_counter() + duration

    async def client(idx: int, http: httpx.AsyncClient) -> None:
        nonlocal completion_tokens
        k = idx
        while time.perf_counter() < stop_at:
            body = {"model": "longshort", "messages": [{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]}
            if max_tokens:
                body["max_tokens"] = max_tokens
            k += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{base_url}/chat/completions", json=body)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                completion_tokens += r.json()["usage"]["completion_tokens"]
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - t0
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(base_url.rsplit("/v1", 1)[0] + "/health")).json()
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else lat * 19 or [float("nan")] * 19
    return {"requests": len(lat), "wall_s": wall, "rps": len(lat) / wall, "p50": statistics.median(lat) if lat else float("nan"),
            "p95": q[18], "errors": len(errors), "error_examples": errors[:3],
            "tok_s": completion_tokens / wall, "mean_batch": _mean_batch(health)}


def _mean_batch(health: dict) -> float:
    b = health.get("batching", {})
    return b.get("requests", 0) / b["batches"] if b.get("batches") else float("nan")


def fairness(base_url: str, long_tokens: int, shorts: int) -> dict:
    """Latency of `shorts` 4-token requests sent one after another while one long request runs."""
    import threading

    out: dict = {}

    def long_request() -> None:
        t0 = time.perf_counter()
        r = httpx.post(f"{base_url}/completions", json={"model": "long", "prompt": "Once upon a time",
                                                        "max_tokens": long_tokens, "temperature": 0}, timeout=3600)
        out["long_s"] = time.perf_counter() - t0
        out["long_status"] = r.status_code
        out["long_tokens"] = r.json().get("usage", {}).get("completion_tokens") if r.status_code == 200 else None

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()
    health = base_url.rsplit("/v1", 1)[0] + "/health"
    while not httpx.get(health, timeout=30).json()["busy"]:
        time.sleep(0.05)
    latencies, errors = [], 0
    for k in range(shorts):
        if not thread.is_alive():
            break
        t0 = time.perf_counter()
        r = httpx.post(f"{base_url}/completions", json={"model": "long", "prompt": f"{k} + 1 =", "max_tokens": 4,
                                                        "temperature": 0}, timeout=3600)
        latencies.append(time.perf_counter() - t0)
        errors += r.status_code != 200
    thread.join()
    out.update(short_n=len(latencies), short_p50=statistics.median(latencies) if latencies else float("nan"),
               short_max=max(latencies) if latencies else float("nan"), errors=errors + (out["long_status"] != 200))
    return out


def main_fairness(args) -> int:
    results = {}
    for label, express in (("express lane", 256), ("one thread", 0)):
        url, stop = start_server(args.long, args.short, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                 max_new_tokens=args.max_new_tokens, max_turns=args.max_turns,
                                 express_max_tokens=express)
        try:
            results[label] = fairness(url, args.long_tokens, args.shorts)
        finally:
            stop()
    cols = list(results)
    print(f"serve_load --fairness: a {args.long_tokens}-token request runs while up to {args.shorts} "
          f"4-token requests are sent one by one; model long={args.long}")
    print(f"{'metric':<22}" + "".join(f"{c:>14}" for c in cols) + "  ratio")
    for name, key in (("short p50 latency s", "short_p50"), ("short max latency s", "short_max"),
                      ("shorts answered", "short_n"), ("long request s", "long_s"),
                      ("long tokens", "long_tokens"), ("errors", "errors")):
        vals = [results[c][key] for c in cols]
        line = f"{name:<22}" + "".join(f"{v:>14.2f}" if isinstance(v, float) else f"{v!s:>14}" for v in vals)
        if all(isinstance(v, (int, float)) and v for v in vals):
            line += f"  {vals[0] / vals[1]:.2f}x"
        print(line)
    return 1 if any(results[c]["errors"] for c in cols) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", default="tiny-random")
    ap.add_argument("--short", default="tiny-random")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per configuration")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="per-turn token limit of the solver")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--base-url", default=None, help="measure this running server (…/v1) instead")
    ap.add_argument("--fairness", action="store_true", help="short-request latency while a long one runs")
    ap.add_argument("--long-tokens", type=int, default=1024, help="--fairness: tokens of the long request")
    ap.add_argument("--shorts", type=int, default=5, help="--fairness: short requests sent during it")
    args = ap.parse_args()
    print(machine_header())
    if args.fairness:
        return main_fairness(args)
    if args.base_url and not args.base_url.startswith(("http://127.0.0.1", "http://localhost")):
        print("error: --base-url must be a loopback address (127.0.0.1/localhost)", file=sys.stderr)
        return 2

    results: dict[str, dict] = {}
    if args.base_url:
        results["server"] = asyncio.run(load(args.base_url, args.clients, args.duration, None))
    else:
        for label, max_batch in (("batched", args.max_batch), ("unbatched", 1)):
            # one generation thread in both columns (no express lane), so the ratio is batching alone
            url, stop = start_server(args.long, args.short, max_batch=max_batch, max_wait_ms=args.max_wait_ms,
                                     max_new_tokens=args.max_new_tokens, max_turns=args.max_turns,
                                     express_max_tokens=0)
            try:
                asyncio.run(load(url, 1, 2.0, None))  # warm-up (first-call overheads)
                results[label] = asyncio.run(load(url, args.clients, args.duration, None))
            finally:
                stop()

    cols = list(results)
    print(f"serve_load: {args.clients} clients x {args.duration:g} s, long={args.long} short={args.short}, "
          f"max_new_tokens/turn={args.max_new_tokens}, max_turns={args.max_turns}")
    rows = [("requests", "requests", "{:.0f}"), ("requests/s", "rps", "{:.2f}"), ("gen tokens/s", "tok_s", "{:.1f}"),
            ("p50 latency s", "p50", "{:.2f}"), ("p95 latency s", "p95", "{:.2f}"),
            ("mean batch", "mean_batch", "{:.1f}"), ("errors", "errors", "{:.0f}")]
    header = f"{'metric':<16}" + "".join(f"{c:>12}" for c in cols) + ("  ratio" if len(cols) == 2 else "")
    print(header)
    for name, key, fmt in rows:
        vals = [results[c][key] for c in cols]
        line = f"{name:<16}" + "".join(f"{fmt.format(v):>12}" for v in vals)
        if len(cols) == 2 and vals[1]:
            line += f"  {vals[0] / vals[1]:.2f}x"
        print(line)
    for c in cols:
        for e in results[c]["error_examples"]:
            print(f"  {c} error: {e}")
    return 1 if any(results[c]["errors"] for c in cols) else 0


if __name__ == "__main__":
    sys.exit(main())
