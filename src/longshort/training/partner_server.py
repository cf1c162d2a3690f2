"""RL's frozen partner on a server that longshort starts for each iteration (``partner_server: managed``).

At the start of iteration k, `run_rl` starts a server for that iteration's partner (the model
trained in iteration k-1, or the starting spec), waits until it answers ``GET /v1/models``, plays
the partner's turns through the openai engine, and stops the server when the iteration ends,
also on an error or Ctrl-C. The next iteration starts a fresh server on the newly trained model.

The server is `longshort serve` by default; ``partner_server_command`` replaces it with any
command that serves an OpenAI-compatible API, e.g. ``vllm serve {model} --port {port}``. The
command runs without a shell (``shlex.split``; use ``env VAR=value cmd ...`` for environment
variables). Placeholders are replaced in each argument:

==============  =================================================================
``{model}``     the partner's model: a spec or the previous iteration's directory
``{port}``      a free TCP port on 127.0.0.1, chosen by longshort
``{host}``      127.0.0.1
``{role}``      the partner's role, long or short
``{iteration}`` the iteration number k
``{python}``    this Python (`sys.executable`)
``{local_rank}`` the process's LOCAL_RANK under ``accelerate launch`` (0 otherwise)
==============  =================================================================

Other braces (a JSON argument) are left alone; ``{model}`` and ``{port}`` are required.

Process handling: the server runs in its own process group (session), with stdin closed and
stdout/stderr appended to ``OUT/iter{k}_{role}/partner_server.log`` (``partner_server.rank{N}.log``
on ranks other than 0). On Linux a small launcher sets the parent-death signal before it execs
the command, so the server also goes when the trainer is killed outright. Stopping sends SIGTERM
to the whole group (the server's own workers too), waits, then sends SIGKILL to what is left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longshort.errors import LongshortError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PLACEHOLDERS = ("model", "port", "host", "role", "iteration", "python", "local_rank")
REQUIRED = ("model", "port")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Sets the parent-death signal, checks the parent is still the one that started it, then execs
# the command: the server (which keeps the signal across exec) dies with the trainer.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('partner server: the trainer exited before the server started')\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'partner server: cannot run {sys.argv[2]!r}: {exc}')\n"
)


def default_command(max_tokens: int = 4096) -> list[str]:
    """`longshort serve` for one model (the same spec for both roles: one engine), as a template.

    `max_tokens`: the longest turn the rollout asks for, so the server's per-request limits admit it.

    >>> default_command()[:4]
    ['{python}', '-m', 'longshort.cli', 'serve']
    """
    cmd = ["{python}", "-m", "longshort.cli", "serve", "--long", "{model}", "--short", "{model}",
           "--host", "{host}", "--port", "{port}", "--log-level", "warning"]
    if max_tokens > 4096:  # over `ServeConfig`'s defaults
        cmd += ["--max-tokens-limit", str(max_tokens), "--max-request-tokens", str(max(8192, max_tokens))]
    return cmd


def template_arguments(template: str | Sequence[str]) -> list[str]:
    """The template's arguments (a string is split like a shell would, without running one);
    unknown or missing placeholders are a `LongshortError`.

    >>> template_arguments("vllm serve {model} --port {port} --max-model-len 4096")
    ['vllm', 'serve', '{model}', '--port', '{port}', '--max-model-len', '4096']
    """
    try:
        args = shlex.split(template) if isinstance(template, str) else [str(a) for a in template]
    except ValueError as exc:
        raise LongshortError(f"partner_server_command {template!r}: {exc}") from None
    if not args:
        raise LongshortError("partner_server_command is empty")
    names = {m.group(1) for a in args for m in _PLACEHOLDER.finditer(a)}
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise LongshortError(f"partner_server_command: unknown placeholder {{{unknown[0]}}}; accepted: "
                             + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    missing = [p for p in REQUIRED if p not in names]
    if missing:
        raise LongshortError(f"partner_server_command must contain {{{missing[0]}}} (the server has to serve "
                             "each iteration's partner on the port longshort chose): "
                             + " ".join(args))
    return args


def fill(args: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """Replace the known placeholders in each argument; other braces stay.

    >>> fill(["--port", "{port}", '{"a": 1}'], {"port": 8001})
    ['--port', '8001', '{"a": 1}']
    """
    def sub(m: re.Match) -> str:
        return str(values[m.group(1)]) if m.group(1) in values else m.group(0)

    return [_PLACEHOLDER.sub(sub, a) for a in args]


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [x for x in lines if x and not x.startswith("# longshort:")]
    return lines[-1][:limit] if lines else ""


@dataclass
class PartnerServer:
    """One server process for the frozen partner; a context manager (start on enter, stop on exit).

    `command` is the final argument list (placeholders filled); the server must listen on
    `host`:`port` and serve `model` (or exactly one model) under ``/v1``. Entering waits until
    ``GET /v1/models`` answers 200, at most `timeout` seconds; a server that exits first or never
    answers is stopped and reported with its log file. `model_name` is then the name to request.
    """

    command: list[str]
    port: int
    log_path: Path
    model: str
    host: str = HOST
    timeout: float = 600.0
    api_key: str | None = None
    env: dict[str, str] | None = None
    stop_timeout: float = 15.0
    poll_interval: float = 0.25
    label: str = "partner server"
    model_name: str | None = field(default=None, init=False)
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: Any = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def describe(self) -> dict[str, Any]:
        """What metrics.json records about the server."""
        return {"command": self.command, "base_url": self.base_url, "model": self.model_name,
                "log": str(self.log_path), "pid": self.proc.pid if self.proc else None}

    # -- start ------------------------------------------------------------------------------

    def start(self) -> PartnerServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"# longshort: {self.label} started {stamp}: {shlex.join(self.command)}\n".encode())
        self._log.flush()
        argv = self.command
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *self.command]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # the log is current when we quote it
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            self._log.close()
            raise LongshortError(f"{self.label}: cannot run {self.command[0]!r}: {exc}") from None
        log.info("%s: started pid %d: %s (log %s)", self.label, self.proc.pid, shlex.join(self.command),
                 self.log_path)
        try:
            self.model_name = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("%s ready at %s (model %r)", self.label, self.base_url, self.model_name)
        return self

    def _wait_ready(self) -> str:
        import httpx

        url = f"{self.base_url}/models"
        headers = {"Authorization": f"Bearer {self.api_key or os.environ.get('OPENAI_API_KEY') or 'EMPTY'}"}
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = _last_line(self.log_path)
                raise LongshortError(f"{self.label} exited with code {code} before it answered GET {url}; see its "
                                     f"log {self.log_path}" + (f" (last line: {tail})" if tail else ""))
            try:
                resp = httpx.get(url, headers=headers, timeout=min(10.0, self.timeout))
                if resp.status_code == 200:
                    body = resp.json()
                    items = body.get("data") if isinstance(body, dict) else None
                    ids = [str(m["id"]) for m in items or [] if isinstance(m, dict) and "id" in m]
                    return self._pick_model(ids)
                last = f"HTTP {resp.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise LongshortError(f"{self.label} did not answer GET {url} within {self.timeout:g} s (last: "
                                     f"{last}); see its log {self.log_path}")
            time.sleep(self.poll_interval)

    def _pick_model(self, ids: list[str]) -> str:
        if self.model in ids:
            return self.model
        if len(ids) == 1:  # e.g. `vllm serve --served-model-name NAME`
            return ids[0]
        raise LongshortError(f"{self.label} at {self.base_url} serves {', '.join(ids) or 'no model'}, none named "
                             f"{self.model!r}; see its log {self.log_path}")

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to what is left after `stop_timeout`.
        Idempotent."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                self._stop(proc)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _stop(self, proc: subprocess.Popen) -> None:
        pgid = proc.pid  # start_new_session: the server leads its own group
        group = hasattr(os, "killpg")

        def send(sig: int) -> bool:
            try:
                if group:
                    os.killpg(pgid, sig)
                elif proc.poll() is None:
                    proc.send_signal(sig)
                return True
            except (ProcessLookupError, PermissionError):
                return False

        deadline = time.monotonic() + self.stop_timeout
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        while group and proc.poll() is not None and time.monotonic() < deadline and send(0):
            time.sleep(0.05)  # the server is gone; its workers get the rest of the grace time
        if send(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM) and proc.poll() is None:
            log.warning("%s (pid %d) did not stop within %g s of SIGTERM; killed", self.label, proc.pid,
                        self.stop_timeout)
        proc.wait()
        log.info("%s (pid %d) stopped, exit code %s", self.label, proc.pid, proc.returncode)

    def __enter__(self) -> PartnerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the RL run's side -------------------------------------------------------------------------


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def command_template(config: Any) -> list[str]:
    """The run's server command template (checked): ``partner_server_command`` or `default_command`."""
    if config.partner_server_command is not None:  # "" or [] is an error, not "the default"
        return template_arguments(config.partner_server_command)
    d = config.dialogue
    return default_command(max(d.max_new_tokens_long, d.max_new_tokens_short))


def check_partner_server(config: Any) -> None:
    """The partner-server settings of an `RLRunConfig`, before any model loads (one line each)."""
    if config.partner_base_url is not None:  # "" would mean "in-process partner", silently
        from longshort.io import check_url

        check_url(config.partner_base_url, field="partner_base_url")
    if config.partner_server == "none":
        if config.partner_server_command is not None:
            raise LongshortError("partner_server_command is used only with partner_server: managed (longshort "
                                 "runs it for each iteration); set --partner-server managed")
        return
    if config.partner_base_url:
        raise LongshortError("partner_server: managed starts its own server for each iteration's partner; drop "
                             "partner_base_url (a fixed server), or keep it with partner_server: none")
    if not math.isfinite(config.partner_server_timeout):  # `gt=0` lets inf through: a wait without end
        raise LongshortError(f"partner_server_timeout: expected a finite number of seconds, got "
                             f"{config.partner_server_timeout}")
    args = command_template(config)
    exe = fill(args[:1], _values("", 0, "long", 0))[0]
    if shutil.which(exe) is None:
        raise LongshortError(f"partner_server_command: {exe!r} is not an executable on PATH")
    from longshort.engines.openai import OpenAIEngineConfig

    unknown = sorted(set(config.partner_engine_kwargs) - (set(OpenAIEngineConfig.model_fields) - {"base_url"}))
    if unknown:
        raise LongshortError(f"partner_engine_kwargs: {unknown[0]!r} is not an option of the openai engine, which "
                             "plays a served partner; it takes: "
                             + ", ".join(sorted(set(OpenAIEngineConfig.model_fields) - {"base_url"})))


def _values(model: str, port: int, role: str, iteration: int) -> dict[str, Any]:
    return {"model": model, "port": port, "host": HOST, "role": role, "iteration": iteration,
            "python": sys.executable, "local_rank": _rank()[1]}


def _env(default: bool) -> dict[str, str] | None:
    """Under ``accelerate launch`` the default server goes on the process's own GPU, as the in-process
    partner does (``cuda:LOCAL_RANK``); a custom command chooses for itself ({local_rank})."""
    if not default or "LOCAL_RANK" not in os.environ:
        return None
    local = _rank()[1]
    env = dict(os.environ)
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    env["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
    return env


def managed_partner(config: Any, model: str, *, iteration: int, role: str,
                    log_dir: str | os.PathLike) -> contextlib.AbstractContextManager[PartnerServer | None]:
    """The iteration's partner server as a context manager (its value: the started `PartnerServer`),
    or one whose value is None when ``partner_server`` is none."""
    if config.partner_server != "managed":
        return contextlib.nullcontext(None)
    rank = _rank()[0]
    port = free_port()
    args = fill(command_template(config), _values(model, port, role, iteration))
    name = "partner_server.log" if rank == 0 else f"partner_server.rank{rank}.log"
    return PartnerServer(args, port, Path(log_dir) / name, model, timeout=config.partner_server_timeout,
                         api_key=config.partner_engine_kwargs.get("api_key"),
                         env=_env(not config.partner_server_command),
                         label=f"partner server ({role}, iteration {iteration})")


@contextlib.contextmanager
def serve_partner(model: str, *, log_path: str | os.PathLike, command: str | Sequence[str] | None = None,
                  timeout: float = 600.0, role: str = "short", iteration: int = 0,
                  **kwargs: Any) -> Iterator[PartnerServer]:
    """Library use: serve `model` (default: `longshort serve`) for the block, e.g.

    ``with serve_partner("tiny-random", log_path="p.log") as s: make_engine(s.model_name, "openai",
    base_url=s.base_url)``."""
    args = template_arguments(command) if command is not None else default_command()
    port = free_port()
    filled = fill(args, _values(model, port, role, iteration))
    with PartnerServer(filled, port, Path(log_path), model, timeout=timeout, **kwargs) as server:
        yield server
