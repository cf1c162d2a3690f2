"""Running one pipeline stage in a fresh child process (`launch.stage_processes`).

A stage that loads models leaves memory behind in the process after its models are freed: the C
allocator's fragmented arenas and oneDNN's cached kernels are not given back, so in one process
each stage's peak sat on what the stages before it left (the quickstart's cold start, which loads
no model, peaked at 1,368 MiB after the score stage; its RL stage at 5.4 GB in the pipeline against
3.9 GB alone). A child process gives all of it back when it exits.

The child is started with ``spawn`` (a new interpreter; the stage's `run` goes by its module and
name, so it must be a module-level function), never ``fork``: a process that has run a
parallel PyTorch op cannot fork safely, since GNU OpenMP's thread pool is not recreated in the child
and its first parallel op hangs. The child rebuilds the stage's `RunContext` from the run's config
and the earlier stages' summaries, seeds as the run does, and runs the stage; its stdout and stderr
are the parent's file descriptors (the run's log). What the stage prints on the console, and then
its summary, its peak memory or its exception, come back over a pipe. The child dies with its
parent (``PR_SET_PDEATHSIG``), so a killed run leaves no stage running on in the run directory.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longshort.config import PipelineConfig
from longshort.errors import LongshortError
from longshort.pipeline.context import RunContext, Stage, peak_rss_mb, seed_everything


class PipeConsole:
    """The child's console: each line goes to the parent, which prints it (terminal and log)."""

    def __init__(self, conn: Any):
        self._conn = conn

    def print(self, msg: str) -> None:
        self._conn.send(("print", msg))

    def attach_log(self, log: Any) -> None:  # the parent's console writes the log
        pass

    def close(self) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (AttributeError, OSError):  # not Linux: the child may outlive a killed parent
        return
    if os.getppid() != parent:
        os._exit(1)


def _child(conn: Any, parent: int, run: Callable[[RunContext], dict[str, Any]], config: PipelineConfig,
           out: str, resume: bool, config_path: str, stages: list[str] | None,
           summaries: dict[str, dict[str, Any]], log_level: int | None) -> None:
    _die_with_parent(parent)
    if log_level is not None:  # the parent sends library log records to the run's log: so does the child
        import logging

        root = logging.getLogger()
        root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(log_level)
    ctx = RunContext(config, Path(out), resume, PipeConsole(conn), config_path)  # type: ignore[arg-type]
    ctx.stages, ctx.summaries = stages, summaries
    seed_everything(config.seed)
    try:
        summary = run(ctx)
        reply: tuple[Any, ...] = ("done", summary, peak_rss_mb())  # with what it launched
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        traceback.print_exc()  # into the run's log
        reply = ("error", exc)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        conn.send(reply)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its message still goes back
        conn.send(("error", LongshortError(f"{type(reply[1]).__name__}: {reply[1]}")))
    conn.close()


def _log_level() -> int | None:
    """The root logger's level when it has handlers (`captured_output` points one at the run's log)."""
    import logging

    root = logging.getLogger()
    return root.level if root.handlers else None


def run_in_child(stage: Stage, ctx: RunContext) -> tuple[dict[str, Any], float]:
    """Run `stage` in a spawned child process; return its summary and the child's peak resident
    memory (MB). The stage's exception is raised here as it was raised there (the traceback is in
    the run's log); a child that dies without a word (killed, out of memory) is a `LongshortError`."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    recv, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, name=f"longshort-{stage.name}", daemon=False,
                      args=(send, os.getpid(), stage.run, ctx.config, str(ctx.out), ctx.resume, ctx.config_path,
                            ctx.stages, ctx.summaries, _log_level()))
    sys.stdout.flush()
    sys.stderr.flush()
    proc.start()
    send.close()  # the child holds the writing end: EOF here when it exits
    try:
        while True:
            try:
                msg = recv.recv()
            except EOFError:
                proc.join()
                raise LongshortError(f"stage {stage.name}: its process ended without a result (exit code "
                                     f"{proc.exitcode}; killed or out of memory?)") from None
            if msg[0] == "print":
                ctx.console.print(msg[1])
            elif msg[0] == "done":
                proc.join()
                return msg[1], msg[2]
            else:
                proc.join()
                raise msg[1]
    except BaseException:
        if proc.is_alive():  # Ctrl-C reached both; give the child a moment to stop, then end it
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    finally:
        recv.close()
