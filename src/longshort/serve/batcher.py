"""Request batching: a queue, a background worker, and one generation thread.

The worker takes the first queued job, waits up to `max_wait_ms` for more (up to
`max_batch_size`), groups them by compatible settings and runs each group through the solver
(pair jobs) or the engine (single-model jobs) in one call, on one worker thread (the engines are
not thread-safe, and one thread keeps the event loop answering while the models generate).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
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
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    batch_size: int = 0


@dataclass
class BatchStats:
    """Counters shown by /health: how much batching happened."""

    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
                "errors": self.errors, "recent_batch_sizes": self.batch_sizes[-20:]}


class Batcher:
    """Collects jobs for `max_wait_ms` (up to `max_batch_size`) and runs them together on one
    worker thread."""

    def __init__(self, long_engine: Engine, short_engine: Engine, config: ServeConfig):
        self.engines = {"long": long_engine, "short": short_engine}
        self.config = config
        self.stats = BatchStats()
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longshort-gen")

    # -- lifecycle (called from the app's lifespan)
    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, kind: str, key: tuple, payload: Any) -> tuple[Any, int]:
        """Queue one job and wait for its result; returns (result, batch size it ran in)."""
        if self._queue is None:
            raise APIError(503, "server is starting", type="server_error", code="not_ready")
        if self._queue.qsize() >= self.config.max_queue:
            raise APIError(503, f"server busy: {self.config.max_queue} requests already queued; retry later",
                           type="server_error", code="queue_full")
        loop = asyncio.get_running_loop()
        job = Job(kind, key, payload, loop.create_future(), loop)
        await self._queue.put(job)
        try:  # on timeout or client cancellation the future is cancelled: the worker skips it
            result = await asyncio.wait_for(job.future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"request timed out after {self.config.request_timeout_s:g} s",
                           type="server_error", code="timeout") from None
        return result, job.batch_size

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.config.max_wait_ms / 1000.0
            # poll rather than wait_for(queue.get()): a get cancelled by a timeout can lose an item
            while len(batch) < self.config.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())  # already waiting: take it for free
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.002))
            batch = [j for j in batch if not j.future.done()]  # client gone (timeout/cancel)
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            self.stats.batch_sizes.append(len(batch))
            del self.stats.batch_sizes[:-100]
            for job in batch:
                job.batch_size = len(batch)
            await loop.run_in_executor(self._executor, self._run_batch, batch)

    # -- runs on the worker thread
    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            groups.setdefault((job.kind, job.key), []).append(job)
        for (kind, _key), jobs in groups.items():
            try:
                if kind == "pair":
                    results = self._solve_pair(jobs)
                else:
                    results = self.engines[kind].generate([j.payload for j in jobs])
            except Exception as exc:  # answer this group with 500, keep serving
                log.exception("batch of %d %s request(s) failed", len(jobs), kind)
                self.stats.errors += len(jobs)
                err = APIError(500, f"generation failed: {type(exc).__name__}: {exc}",
                               type="server_error", code="generation_failed")
                for job in jobs:
                    _resolve(job, exc=err)
                continue
            for job, res in zip(jobs, results, strict=True):
                _resolve(job, result=res)

    def _solve_pair(self, jobs: list[Job]) -> list[dict[str, Any]]:
        config: CollabConfig = jobs[0].payload[1]
        # ids from the question (not the batch position): the solver seeds each turn from the id,
        # so a seeded request gets the same answer whatever else shares its batch
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
