"""Request batching and fair scheduling: job queues, lanes, and the generation threads.

A **lane** is one generation thread with its own queue. Its worker takes the first queued job,
waits up to `max_wait_ms` for more (up to `max_batch_size`), groups them by compatible settings
and runs each group through the solver (pair jobs) or the engine (single-model jobs) in one
call, on the lane's thread, so the event loop keeps answering while the models generate.

Fairness: every job carries its token **budget** (the most tokens it may generate: n ×
max_tokens for one model, max_turns × (long + short turn limits) for a dialogue). Jobs within
`express_max_tokens` go to the **express lane**, a second thread over engines that may run
beside the main ones (the same weights; see `lane_engine`), so a short request is answered
while a long one generates instead of waiting for it. Without an express lane, small jobs still
go to the front of the main queue (the order is small first, then arrival).

Failure isolation: when a group fails, its members are retried one by one, so only a request
that fails on its own gets the error; the others get their answers.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from longshort.dialogue.collab import CollabConfig, solve_problems
from longshort.engines.base import Engine
from longshort.serve.config import ServeConfig
from longshort.serve.protocol import APIError

log = logging.getLogger(__name__)


@dataclass
class Job:
    kind: str                     # "pair" or a role ("long"/"short") for single-model generation
    key: tuple                    # jobs with equal (kind, key) run in one solver/engine call
    payload: Any                  # pair: (problem text, CollabConfig); role: GenerationRequest
    budget: int                   # most tokens this job may generate
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    batch_size: int = 0


@dataclass
class BatchStats:
    """Counters shown by /health and /metrics: how much batching happened (all lanes)."""

    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    errors: int = 0
    retried: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_batch(self, size: int) -> None:
        with self.lock:
            self.batches += 1
            self.requests += size
            self.max_batch = max(self.max_batch, size)
            self.batch_sizes.append(size)
            del self.batch_sizes[:-100]

    def add(self, *, errors: int = 0, retried: int = 0) -> None:
        with self.lock:
            self.errors += errors
            self.retried += retried

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
                "errors": self.errors, "retried_alone": self.retried,
                "recent_batch_sizes": self.batch_sizes[-20:]}


class _JobQueue:
    """Small jobs first (budget within the express limit), then arrival order."""

    def __init__(self, small: int):
        self._small = small
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._ready = asyncio.Event()

    def put(self, job: Job) -> None:
        heapq.heappush(self._heap, (0 if job.budget <= self._small else 1, next(self._seq), job))
        self._ready.set()

    def get_nowait(self) -> Job:
        job = heapq.heappop(self._heap)[2]
        if not self._heap:
            self._ready.clear()
        return job

    async def get(self) -> Job:
        while not self._heap:
            await self._ready.wait()
        return self.get_nowait()

    def __len__(self) -> int:
        return len(self._heap)


class Lane:
    """One generation thread, its queue and its engines."""

    def __init__(self, name: str, engines: dict[str, Engine], config: ServeConfig, stats: BatchStats):
        self.name, self.engines, self.config, self.stats = name, engines, config, stats
        self.queue: _JobQueue | None = None
        self.running = 0
        self.running_tokens = 0
        self.busy_since: float | None = None
        self.busy_seconds = 0.0
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"longshort-{name}")

    def start(self) -> None:
        self.queue = _JobQueue(self.config.express_max_tokens)
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def state(self) -> dict[str, Any]:
        busy = self.busy_seconds + (time.monotonic() - self.busy_since if self.busy_since else 0.0)
        return {"queued": len(self.queue) if self.queue is not None else 0, "running": self.running,
                "running_tokens": self.running_tokens, "busy": self.running > 0,
                "busy_for_s": round(time.monotonic() - self.busy_since, 2) if self.busy_since else 0.0,
                "busy_seconds_total": round(busy, 2)}

    async def _worker(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000.0
            while len(batch) < self.config.max_batch_size:
                if len(self.queue):
                    batch.append(self.queue.get_nowait())  # already waiting: take it for free
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.002))
            batch = [j for j in batch if not j.future.done()]  # client gone (timeout/cancel)
            if not batch:
                continue
            self.stats.add_batch(len(batch))
            for job in batch:
                job.batch_size = len(batch)
            self.running, self.running_tokens = len(batch), sum(j.budget for j in batch)
            self.busy_since = time.monotonic()
            try:
                await loop.run_in_executor(self._executor, self._run_batch, batch)
            finally:
                self.busy_seconds += time.monotonic() - self.busy_since
                self.running, self.running_tokens, self.busy_since = 0, 0, None

    # -- runs on the lane's thread
    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            groups.setdefault((job.kind, job.key), []).append(job)
        for (kind, _key), jobs in groups.items():
            try:
                results = self._run_group(kind, jobs)
            except Exception as exc:
                if len(jobs) == 1:
                    self._fail(kind, jobs[0], exc)
                    continue
                # one bad member must not fail the others: retry each alone
                log.warning("batch of %d %s request(s) failed (%s: %s); retrying them one by one",
                            len(jobs), kind, type(exc).__name__, exc)
                self.stats.add(retried=len(jobs))
                for job in jobs:
                    if job.future.done():
                        continue
                    try:
                        _resolve(job, result=self._run_group(kind, [job])[0])
                    except Exception as one_exc:
                        self._fail(kind, job, one_exc)
                continue
            for job, res in zip(jobs, results, strict=True):
                _resolve(job, result=res)

    def _fail(self, kind: str, job: Job, exc: Exception) -> None:
        log.error("%s request failed: %s: %s", kind, type(exc).__name__, exc)
        self.stats.add(errors=1)
        _resolve(job, exc=APIError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                   type="server_error", code="generation_failed"))

    def _run_group(self, kind: str, jobs: list[Job]) -> list[Any]:
        if kind == "pair":
            return self._solve_pair(jobs)
        results = self.engines[kind].generate([j.payload for j in jobs])
        if len(results) != len(jobs):
            raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        return results

    def _solve_pair(self, jobs: list[Job]) -> list[dict[str, Any]]:
        config: CollabConfig = jobs[0].payload[1]
        # ids from the question (not the batch position): the solver seeds each turn from the id,
        # so a seeded request samples the same way whatever else shares its batch
        problems, seen = [], set()
        for job in jobs:
            rid = hashlib.sha1(job.payload[0].encode()).hexdigest()[:12]
            k = 0
            while f"{rid}~{k}" in seen:
                k += 1
            rid = f"{rid}~{k}"
            seen.add(rid)
            problems.append({"id": rid, "problem": job.payload[0]})
        records = solve_problems(problems, long_engine=self.engines["long"],
                                 short_engine=self.engines["short"], config=config, mode="collab")
        by_id = {str(r["id"]): r for r in records}
        missing = [p["id"] for p in problems if p["id"] not in by_id]
        if missing:
            raise RuntimeError(f"solver returned no record for {missing}")
        return [by_id[p["id"]] for p in problems]


def lane_engine(engine: Engine) -> Engine | None:
    """An engine that may generate on a second thread beside `engine`, or None.

    transformers: a second `HFEngine` over the same weights (no copy) with its own tokenizer
    copy, decoding state and no compiled fast path (inference only reads the weights);
    openai: the engine itself (its HTTP client is thread-safe). Others (vllm): None, since
    one in-process vLLM cannot take two callers at once.
    """
    from longshort.engines.hf import HFEngine
    from longshort.engines.openai import OpenAIEngine

    if isinstance(engine, OpenAIEngine):
        return engine
    if isinstance(engine, HFEngine):
        twin = HFEngine.from_model(engine.model, copy.deepcopy(engine.tokenizer),
                                   config=engine.config.model_copy(update={"fast_path": "off"}))
        twin.model_name, twin.spec = engine.model_name, engine.spec
        return twin
    return None


class Batcher:
    """The main lane, the optional express lane, and the shared counters."""

    def __init__(self, long_engine: Engine, short_engine: Engine, config: ServeConfig):
        self.engines = {"long": long_engine, "short": short_engine}
        self.config = config
        self.stats = BatchStats()
        self.lanes = {"main": Lane("main", self.engines, config, self.stats)}
        if config.express_max_tokens > 0:
            twins: dict[int, Engine | None] = {}
            for e in (long_engine, short_engine):
                if id(e) not in twins:
                    twins[id(e)] = lane_engine(e)
            express = {"long": twins[id(long_engine)], "short": twins[id(short_engine)]}
            if all(e is not None for e in express.values()):
                self.lanes["express"] = Lane("express", express, config, self.stats)  # type: ignore[arg-type]

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.start()

    async def stop(self) -> None:
        for lane in self.lanes.values():
            await lane.stop()

    def pending(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values() if lane.queue is not None)

    def busy(self) -> bool:
        return any(lane.running for lane in self.lanes.values())

    def lane_for(self, budget: int) -> Lane:
        if budget <= self.config.express_max_tokens and "express" in self.lanes:
            return self.lanes["express"]
        return self.lanes["main"]

    async def submit(self, kind: str, key: tuple, payload: Any, budget: int) -> tuple[Any, int]:
        """Queue one job and wait for its result; returns (result, batch size it ran in)."""
        lane = self.lane_for(budget)
        if lane.queue is None:
            raise APIError(503, "server is starting", type="server_error", code="not_ready")
        if self.pending() >= self.config.max_queue:
            raise APIError(503, f"server busy: {self.config.max_queue} requests already queued; retry later",
                           type="server_error", code="queue_full")
        loop = asyncio.get_running_loop()
        job = Job(kind, key, payload, budget, loop.create_future(), loop)
        lane.queue.put(job)
        try:  # on timeout or client cancellation the future is cancelled: the worker skips it
            result = await asyncio.wait_for(job.future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"request timed out after {self.config.request_timeout_s:g} s",
                           type="server_error", code="timeout") from None
        return result, job.batch_size


def _resolve(job: Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    def _set() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(_set)
    except RuntimeError:  # the event loop is gone (server shutting down): nobody is waiting
        pass
