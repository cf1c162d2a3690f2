"""Stages in child processes (`pipeline.child.run_in_child`, `launch.stage_processes`): the summary,
the console lines and the stage's own exception come back; a child that dies is one clear error;
a killed run takes its stage's process with it. The stage functions are module-level, as the
spawned child imports them by name."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longshort.config import load_config
from longshort.errors import InputError, LongshortError
from longshort.pipeline.child import run_in_child
from longshort.pipeline.context import Console, RunContext, Stage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")


def _talks(ctx: RunContext) -> dict:
    ctx.console.print("hello from the stage")
    (ctx.dir("talk") / "out.txt").write_text("written by the child")
    return {"pid": os.getpid(), "seen": ctx.summaries, "stages": ctx.stages, "seed": ctx.config.seed}


def _logs(ctx: RunContext) -> dict:
    import logging
    import warnings

    logging.getLogger("longshort.somewhere").info("an info record from the child")
    print("a print from the child")
    warnings.warn("a warning from the child", stacklevel=1)
    return {}


def _bad_input(ctx: RunContext) -> dict:
    raise InputError("expected a number", path="traces.jsonl", line=7, field="answer")


def _dies(ctx: RunContext) -> dict:
    ctx.console.print("about to die")
    os._exit(3)


def _sleeps(ctx: RunContext) -> dict:
    (ctx.out / "child.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return {}


def _ctx(tmp_path: Path, stream: io.StringIO | None = None) -> RunContext:
    ctx = RunContext(load_config(ROOT / "configs" / "smoke.yaml"), tmp_path, False, Console(stream or io.StringIO()))
    ctx.stages, ctx.summaries = ["data", "talk"], {"data": {"traces": 4}}
    return ctx


def test_summary_console_lines_and_files_come_back(tmp_path):
    stream = io.StringIO()
    summary, peak = run_in_child(Stage("talk", _talks, (), "talks"), _ctx(tmp_path, stream))
    assert summary["pid"] != os.getpid()  # another process ran it
    assert summary["seen"] == {"data": {"traces": 4}} and summary["stages"] == ["data", "talk"]
    assert summary["seed"] == 0 and peak > 0
    assert stream.getvalue() == "hello from the stage\n"  # printed by the parent's console
    assert (tmp_path / "talk" / "out.txt").read_text() == "written by the child"


def test_the_childs_output_goes_to_the_runs_log(tmp_path):
    from longshort.pipeline.context import captured_output

    stream = io.StringIO()
    with captured_output(tmp_path / "pipeline.log", verbose=False):
        run_in_child(Stage("logs", _logs, (), "logs"), _ctx(tmp_path, stream))
    log = (tmp_path / "pipeline.log").read_text()
    for line in ("an info record from the child", "a print from the child", "a warning from the child"):
        assert line in log
    assert stream.getvalue() == ""  # nothing of it on the console


def test_the_stages_own_error_is_raised_in_the_parent(tmp_path):
    with pytest.raises(InputError, match=r"traces\.jsonl:7: field 'answer': expected a number"):
        run_in_child(Stage("bad", _bad_input, (), "bad"), _ctx(tmp_path))


def test_a_child_that_dies_is_one_clear_error(tmp_path):
    stream = io.StringIO()
    with pytest.raises(LongshortError, match=r"stage dies: its process ended without a result \(exit code 3"):
        run_in_child(Stage("dies", _dies, (), "dies"), _ctx(tmp_path, stream))
    assert stream.getvalue() == "about to die\n"


def test_a_killed_run_takes_its_stage_process_with_it(tmp_path):
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from pathlib import Path\n"
        "from test_pipeline_child import _ctx, _sleeps\n"
        "from longshort.pipeline.child import run_in_child\n"
        "from longshort.pipeline.context import Stage\n"
        "run_in_child(Stage('sleeps', _sleeps, (), 'sleeps'), _ctx(Path(sys.argv[1])))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(Path(__file__).parent)])
    pid_file = tmp_path / "child.pid"
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), "the stage never started"
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break  # dead, waiting to be reaped by init
        except FileNotFoundError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the stage's process outlived the killed run")


def test_stages_that_load_models_run_in_children_unless_turned_off():
    from longshort.pipeline import STAGES

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    inside = {s.name for s in STAGES if s.in_child(cfg)}
    assert inside == {"baseline", "score", "sft", "rl", "eval"}  # smoke chunks and compresses without a model
    llm = cfg.model_copy(update={"chunk": cfg.chunk.model_copy(update={"method": "llm"})})
    assert "chunk" in {s.name for s in STAGES if s.in_child(llm)}
    off = cfg.model_copy(update={"launch": cfg.launch.model_copy(update={"stage_processes": False})})
    assert not any(s.in_child(off) for s in STAGES)
    assert load_config(ROOT / "configs" / "quickstart.yaml").launch.stage_processes is True  # on by default
