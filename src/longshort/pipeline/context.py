"""What every stage gets: the `RunContext` (config, run directory, earlier stages' summaries),
the `Stage` record, the engine pool, and the quiet console.

The console shows one line when a stage starts, one when it ends (with its key figure) and the
final summary. Everything else a stage prints (trainer dicts, progress bars, library warnings)
goes to `OUT/pipeline.log`: while a stage runs, the process's stdout and stderr file descriptors
point at that file, so C-level and subprocess output is caught too (`--verbose` keeps it on
the terminal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from longshort.config import PipelineConfig

LOG_FILE = "pipeline.log"


@dataclass
class Stage:
    """One pipeline stage: `run(ctx) -> summary` writes into `ctx.dir(name)`; `sections` are the
    config sections its result depends on (for the fingerprint checked on resume); `headline(summary)`
    is the figure printed when it ends; a stage that `loads_models` (a flag, or a test of the
    config) runs in a child process of its own when `launch.stage_processes` is on (`pipeline.child`)."""

    name: str
    run: Callable[[RunContext], dict[str, Any]]
    sections: tuple[str, ...]
    description: str
    headline: Callable[[dict[str, Any]], str] | None = None
    loads_models: bool | Callable[[PipelineConfig], bool] = True

    def in_child(self, config: PipelineConfig) -> bool:
        """Whether this stage runs in a child process of its own in a run of `config`."""
        loads = self.loads_models(config) if callable(self.loads_models) else self.loads_models
        return loads and config.launch.stage_processes


class Console:
    """Lines for the person at the terminal, written to the terminal even while the stage's own
    output is redirected to the log file (and copied into the log)."""

    def __init__(self, stream: TextIO | None = None):
        stream = stream or sys.stderr
        self._owned = False
        try:  # a duplicate of the terminal's stderr taken before any redirection
            fd = os.dup(stream.fileno())
            self._out: TextIO = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
            self._owned = True
        except (AttributeError, OSError, ValueError):  # a captured stream (tests): write to it as it is
            self._out = stream
        self._log: TextIO | None = None

    def attach_log(self, log: TextIO | None) -> None:
        self._log = log

    def print(self, msg: str) -> None:
        self._out.write(msg + "\n")
        self._out.flush()
        if self._log is not None:
            self._log.write(f"[console] {msg}\n")
            self._log.flush()

    def close(self) -> None:
        if self._owned:
            with contextlib.suppress(OSError):
                self._out.close()


class RunContext:
    """What a stage needs: the config, the run directory and the outputs of earlier stages."""

    def __init__(self, config: PipelineConfig, out: Path, resume: bool, console: Console, config_path: str = ""):
        self.config, self.out, self.resume, self.console = config, out, resume, console
        self.config_path = config_path
        self.stages: list[str] | None = None  # the names of the stages this run goes through (None = all)
        self.summaries: dict[str, dict[str, Any]] = {}

    def dir(self, stage: str) -> Path:
        d = self.out / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, msg: str) -> None:
        """A detail line: into the run's log file (the terminal shows it with --verbose)."""
        print(f"  {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def captured_output(log_path: Path, *, verbose: bool) -> Iterator[TextIO]:
    """Point fds 1 and 2 (and Python's warnings and library loggers) at `log_path` for the
    duration; with `verbose`, leave the terminal as it is and only open the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    log.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}\n")
    if verbose:
        try:
            yield log
        finally:
            log.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    old_showwarning = warnings.showwarning

    def _to_log(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = _to_log
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        warnings.showwarning = old_showwarning
        root.removeHandler(handler)
        root.setLevel(old_level)
        log.close()


class Engines:
    """Engines built once per stage and released at its end (training needs the memory).

    `get(spec)` is a stage's own engine (llm chunking, scoring, llm compression); `pair(long, short)`
    are the two roles' engines (evaluation), each at its role's server (`models.long_base_url` /
    `short_base_url`, else `base_url`) and, on engine vllm, with its own share of GPU memory."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._cache: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def _make_pair(self, long: str | None, short: str | None, *, stage: bool = False) -> tuple[Any, Any]:
        from longshort.engines import make_pair

        m = self.config.models
        urls: dict[str, Any] = {}
        if m.engine == "openai":
            urls = {"base_url": m.base_url or m.long_base_url} if stage else \
                {"base_url": m.base_url, "long_base_url": m.long_base_url, "short_base_url": m.short_base_url}
        return make_pair(long, short, m.engine, **urls, **m.engine_options)

    def get(self, spec: str):
        """The engine of `spec` for a stage's own work: at `models.base_url`, else the long role's server."""
        key = ("stage", spec)
        if key not in self._cache:
            self._cache[key] = self._make_pair(spec, None, stage=True)
        return self._cache[key][0]

    def pair(self, long: str | None, short: str | None) -> tuple[Any, Any]:
        """The long and the short role's engines (None for a role given as None; one engine when both
        roles are the same model at the same server), built together by `engines.make_pair`."""
        key = ("pair", long, short)
        if key not in self._cache:
            self._cache[key] = self._make_pair(long, short)
        return self._cache[key]

    def close(self) -> None:
        engines = {id(e): e for built in self._cache.values() for e in built if e is not None}
        for engine in engines.values():
            engine.close()
        self._cache.clear()
        from longshort.models import free_memory

        free_memory()  # the next system or stage starts from what the engines really held, not their peak

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    try:
        from transformers import set_seed

        set_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (accelerate-launched training)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its largest finished child, in MB."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(max(me.ru_maxrss, kids.ru_maxrss) / 1024, 1)  # Linux reports KiB


class StagePeak:
    """Peak resident memory of one stage: Linux's high-water mark (``VmHWM``) is reset when the
    stage starts (``/proc/self/clear_refs``), so the figure is the stage's own, not the run's so
    far; a child that finished during the stage (accelerate-launched training) counts when it
    peaked higher. ``mb`` is None where ``/proc`` is missing or the reset is not allowed."""

    def __init__(self) -> None:
        import resource

        self._kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.ok = True
        except OSError:
            self.ok = False

    @property
    def mb(self) -> float | None:
        import resource

        if not self.ok:
            return None
        try:
            hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                       if line.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            return None
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return round(max(hwm, kids if kids > self._kids else 0) / 1024, 1)  # KiB
