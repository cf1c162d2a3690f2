"""RL's frozen partner on a managed server (`training.partner_server`, ``partner_server: managed``).

A real `longshort serve` subprocess on a tiny model answers the openai engine and is gone after
the block; small stand-in servers (a few lines of http.server) check the process handling:
exceptions and Ctrl-C inside the block, the server's own child processes, a server that ignores
SIGTERM, one that dies or never answers. The run_rl test (slow) trains two iterations, each
against a server started on that iteration's partner.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from longshort.engines import make_engine
from longshort.engines.base import GenerationRequest, SamplingParams
from longshort.errors import LongshortError
from longshort.training.partner_server import PartnerServer, default_command, free_port, serve_partner
from longshort.training.rl import RLRunConfig, run_rl

ROOT = Path(__file__).resolve().parents[1]

# A stand-in OpenAI-compatible server: GET /v1/models lists argv[2]; options: start a child
# process that sleeps (its pid written to CHILD_PID), ignore SIGTERM, wait before listening.
FAKE = r'''
import http.server, json, os, signal, subprocess, sys, time
port, models = int(sys.argv[1]), sys.argv[2].split(",")
if os.environ.get("FAKE_CHILD_PID"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(os.environ["FAKE_CHILD_PID"], "w").write(str(child.pid))
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        print("request", self.path, flush=True)
print("fake server listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture()
def fake(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE)
    return [sys.executable, str(script), "{port}", "{model}"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.time() + within
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_longshort_serve_answers_the_openai_engine_and_is_gone_after_the_block(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a shared CPU: one thread is plenty for a tiny model
    log_path = tmp_path / "iter0_long" / "partner_server.log"
    with serve_partner("tiny-random", log_path=log_path, timeout=300) as server:
        pid = server.proc.pid
        assert server.model_name == "tiny-random" and server.command[:4] == [sys.executable, "-m", "longshort.cli",
                                                                           "serve"]
        engine = make_engine(server.model_name, "openai", base_url=server.base_url)
        try:
            req = GenerationRequest(messages=[{"role": "user", "content": "What is 2+2?"}], assistant_prefix="<think>",
                                    params=SamplingParams(temperature=0.0, max_new_tokens=4))
            [res] = engine.generate([req])
        finally:
            engine.close()
        assert res.completions[0].num_tokens >= 1 and res.prompt_tokens > 0
        assert _alive(pid)
    assert _gone(pid) and server.proc is None
    text = log_path.read_text()
    assert "partner server started" in text and "--long tiny-random --short tiny-random" in text


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_exception_inside_the_block_stops_the_server_and_its_children(tmp_path, fake, monkeypatch, exc):
    child_pid = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PID", str(child_pid))
    with pytest.raises(exc):
        with serve_partner("m", log_path=tmp_path / "p.log", command=fake, timeout=60) as server:
            pid, child = server.proc.pid, int(child_pid.read_text())
            assert _alive(pid) and _alive(child)
            raise exc()
    assert _gone(pid) and _gone(child)


def test_a_server_ignoring_sigterm_is_killed(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    port = free_port()
    server = PartnerServer([a.replace("{port}", str(port)).replace("{model}", "m") for a in fake], port,
                           tmp_path / "p.log", "m", timeout=60, stop_timeout=0.5)
    with server:
        pid = server.proc.pid
    assert _gone(pid, within=2)


def test_a_dying_server_is_one_line_naming_its_log(tmp_path):
    log_path = tmp_path / "iter1_short" / "partner_server.log"
    cmd = [sys.executable, "-c", "import sys; print('cannot load model', sys.argv[1]); sys.exit(3)", "{model}",
           "{port}"]
    with pytest.raises(LongshortError) as err:
        with serve_partner("runs/x/iter0_long", log_path=log_path, command=cmd, timeout=60):
            pytest.fail("the block must not run")
    msg = str(err.value)
    assert "\n" not in msg and "exited with code 3" in msg and str(log_path) in msg
    assert "last line: cannot load model runs/x/iter0_long" in msg


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "300")
    monkeypatch.setenv("FAKE_CHILD_PID", str(tmp_path / "child.pid"))
    with pytest.raises(LongshortError, match=r"did not answer GET http://127\.0\.0\.1:\d+/v1/models within 1 s.*"
                                             + str(tmp_path / "p.log")):
        with serve_partner("m", log_path=tmp_path / "p.log", command=fake, timeout=1):
            pass
    assert _gone(int((tmp_path / "child.pid").read_text()))


def test_the_served_model_name_is_found_or_refused(tmp_path, fake):
    one = [a.replace("{model}", "other") for a in fake] + ["{model}"]
    # one model listed under another name (vllm --served-model-name): that name is used
    with serve_partner("a", log_path=tmp_path / "p.log", command=one, timeout=60) as server:
        assert server.model_name == "other"
    two = [a.replace("{model}", "x,y") for a in fake] + ["{model}"]
    with pytest.raises(LongshortError, match="serves x, y, none named 'a'"):
        with serve_partner("a", log_path=tmp_path / "p.log", command=two, timeout=60):
            pass


def test_command_templates_are_checked():
    from longshort.training.partner_server import fill, template_arguments

    assert template_arguments("env CUDA_VISIBLE_DEVICES={local_rank} vllm serve {model} --port {port}")[0] == "env"
    with pytest.raises(LongshortError, match=r"unknown placeholder \{modle\}"):
        template_arguments("vllm serve {modle} --port {port}")
    with pytest.raises(LongshortError, match=r"must contain \{port\}"):
        template_arguments("vllm serve {model} --port 8000")
    assert fill(["--x", '{"k": {model}}'], {"model": 1}) == ["--x", '{"k": 1}']
    assert "--max-tokens-limit" not in default_command() and "8000" in default_command(8000)


def _problems(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text('{"id": "p1", "problem": "What is 2+2?", "answer": "4"}\n')
    return path


@pytest.mark.parametrize("update, match", [
    ({"partner_base_url": "http://127.0.0.1:9/v1"}, "drop partner_base_url"),
    ({"partner_server": "none", "partner_server_command": "vllm serve {model} --port {port}"},
     "only with partner_server: managed"),
    ({"partner_server_command": "vllm serve {model}"}, r"must contain \{port\}"),
    ({"partner_server_command": ["vllm", "serve", "--port", "{port}"]}, r"must contain \{model\}"),
    ({"partner_server_command": "no-such-server-binary {model} {port}"},
     "'no-such-server-binary' is not an executable"),
    ({"partner_engine_kwargs": {"batch_size": 4}}, "'batch_size' is not an option of the openai engine"),
])
def test_run_rl_refuses_bad_partner_server_settings_before_any_model_loads(tmp_path, update, match):
    base = dict(long="no/such-model", short="no/such-model", data=str(_problems(tmp_path)), out=str(tmp_path / "o"),
                report_to="none", partner_server="managed")
    with pytest.raises(LongshortError, match=match):
        run_rl(RLRunConfig(**{**base, **update}))
    assert not (tmp_path / "o").exists()


def test_rl_cli_refuses_managed_with_a_base_url_in_one_line(tmp_path, capsys):
    from longshort.cli import main

    args = ["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", str(_problems(tmp_path)),
            "--out", str(tmp_path / "o"), "--report-to", "none", "--partner-server", "managed",
            "--partner-base-url", "http://127.0.0.1:9/v1"]
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "drop partner_base_url" in err[0]


def test_run_rl_stops_the_iterations_server_when_the_iteration_fails(tmp_path, fake, monkeypatch):
    """run_rl's wiring, fast: the iteration's server is started on the partner (the short model in
    iteration 0), the partner engine points at it, and a failure inside the iteration stops it."""
    import shlex

    from longshort.training import rl

    seen = {}

    def failing_trainer(config, role, policy_spec, partner, *args, **kwargs):
        seen.update(role=role, model=partner.model_name, url=partner.base_url)
        raise RuntimeError("boom")

    monkeypatch.setattr(rl, "make_trainer", failing_trainer)
    out = tmp_path / "o"
    cfg = RLRunConfig(long="tiny-random", short="tiny-random-bytes", data=str(_problems(tmp_path)), out=str(out),
                      report_to="none", partner_server="managed", partner_server_command=shlex.join(fake))
    with pytest.raises(RuntimeError, match="boom"):
        run_rl(cfg)
    assert seen["role"] == "long" and seen["model"] == "tiny-random-bytes"
    text = (out / "iter0_long" / "partner_server.log").read_text()
    assert "partner server (short, iteration 0) started" in text and "tiny-random-bytes" in text
    port = int(seen["url"].rsplit(":", 1)[1].split("/")[0])
    assert f"{port} tiny-random-bytes" in text
    import httpx

    with pytest.raises(httpx.ConnectError):  # nothing listens there any more
        httpx.get(seen["url"] + "/models", timeout=5)


@pytest.mark.slow
def test_run_rl_serves_each_iterations_partner_on_its_own_server(tmp_path, monkeypatch):
    """Two iterations (long, then short): iteration 0's server serves the starting short model,
    iteration 1's the long model trained in iteration 0; both answered partner turns and are gone."""
    import torch

    from longshort.dialogue.collab import CollabConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from test_training_rl import _ending_model  # models that end turns early, so dialogues run several turns

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {"long": _ending_model("tiny-random", tmp_path / "long", 0.3),
                  "short": _ending_model("tiny-random-bytes", tmp_path / "short", 0.3)}
        out = tmp_path / "rl"
        # longshort serve with access logs (--log-level info), so the log shows the partner's requests
        command = ("{python} -m longshort.cli serve --long {model} --short {model} --host {host} --port {port} "
                   "--log-level info")
        cfg = RLRunConfig(long=models["long"], short=models["short"], data=str(_problems(tmp_path)), out=str(out),
                          iterations=2, first="long", max_steps=1, num_generations=2, batch_size=2,
                          report_to="none", dynamic_sampling=False, partner_server="managed",
                          partner_server_command=command, partner_server_timeout=300,
                          dialogue=CollabConfig(max_turns=2, max_new_tokens_long=8, max_new_tokens_short=8))
        run_rl(cfg)
    finally:
        torch.set_num_threads(torch_threads)
    expected = {"iter0_long": models["short"], "iter1_short": str(out / "iter0_long")}
    for d, partner in expected.items():
        metrics = json.loads((out / d / "metrics.json").read_text())["metrics"]
        served = metrics["partner_server"]
        assert metrics["partner"] == partner and served["model"] == partner
        assert served["command"][served["command"].index("--long") + 1] == partner
        assert served["log"] == str(out / d / "partner_server.log") and not _alive(served["pid"])
        text = Path(served["log"]).read_text()
        assert f"--long {partner} --short {partner}" in text and "POST /v1/completions" in text  # rendered locally (render_chat)
    final = json.loads((out / "longshort_run.json").read_text())["final"]
    assert final == {"long": str(out / "iter0_long"), "short": str(out / "iter1_short")}


def test_the_managed_partner_renders_with_its_own_tokenizer(tmp_path, monkeypatch):
    """The managed server serves a local model, so the openai engine renders prompts with that
    model's tokenizer (render_chat, sent to /v1/completions); partner_engine_kwargs still win."""
    from types import SimpleNamespace

    from longshort.training import rl

    seen = []
    monkeypatch.setattr("longshort.engines.make_engine", lambda *a, **k: seen.append((a, k)) or "engine")
    served = SimpleNamespace(model_name="tiny-random-bytes", base_url="http://127.0.0.1:1/v1")
    base = dict(long="tiny-random", short="tiny-random-bytes", data="p.jsonl", out=str(tmp_path / "o"),
                partner_server="managed")
    rl.make_partner("tiny-random-bytes", RLRunConfig(**base), served)
    rl.make_partner("tiny-random-bytes", RLRunConfig(**base, partner_engine_kwargs={"tokenizer": "tiny-random"}),
                    served)
    assert [k["tokenizer"] for _, k in seen] == ["tiny-random-bytes", "tiny-random"]
    assert seen[0][0] == ("tiny-random-bytes", "openai") and seen[0][1]["base_url"] == served.base_url
