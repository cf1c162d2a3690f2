"""GPU check: the engine, one training step of each kind and the quickstart, on one GPU in ≤ 5 minutes.

Four sections, each timed, each failing on its own (an exception is reported in the summary and
the other sections still run):

1. **engine** — longshort's `HFEngine` (fast path on with CUDA: static KV cache + torch.compile'd
   decode step) vs plain `model.generate()` on the same model, prompts and greedy settings
   (`benchmarks/engine_speed.py`'s workload): generated tokens/s of each and the ratio (target
   ≥ 8x at batch 256 x 256 new tokens on a GPU). Both get one untimed warm-up run first.
2. **sft** — SFT step(s) of the embedded model through `training.sft.make_trainer` (TRL's
   SFTTrainer as the pipeline builds it): wall time, per-step time, tokens/s, peak memory.
3. **rl** — one multi-turn GRPO step of the long role against the frozen short partner through
   `training.rl.make_partner` / `make_trainer` (TRL's GRPOTrainer with the dialogue rollout):
   wall time, turns and tokens per dialogue, peak memory.
4. **quickstart** — `configs/quickstart.yaml` through `pipeline.run_pipeline` at 4x its data scale
   (training traces, held-out problems, quality traces), every stage; Pass@1 and tokens of the
   pair and the baseline, the importance AUROC and the stage times.

Memory is `torch.cuda.max_memory_allocated()` on a GPU (reset at each section's start) and the
process's peak RSS (`ru_maxrss`) on a CPU. With `--isolate` (the default except with `--tiny`)
each section runs in its own Python process: a CUDA error or an out-of-memory in one cannot
poison the next, each one's peak memory is its own, and a section still running when `--budget`
is spent is killed and reported as `timeout` while the summary is still printed.

    .venv/bin/python benchmarks/gpu_check.py --tiny                  # CPU, tiny random model, < 1-2 min
    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.md          # GPU, default sizes
    python3 benchmarks/gpu_check.py --sections engine,sft            # a subset

On the device machine (torch and transformers there, nothing else of ours) run it through
`benchmarks/gpu_check.sh`, which installs the carried wheels, joins the embedded GGUF from its
two halves and then calls this script; that file's header says how to prepare and send them.
The last thing printed is a Markdown block (machine, versions, the table) to paste into
`docs/results/`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS = ("engine", "sft", "rl", "quickstart")
TITLES = {"setup": "setup (model cache)", "engine": "engine vs generate()", "sft": "SFT step",
          "rl": "multi-turn RL step", "quickstart": "quickstart"}
ENGINE_TARGET = 8.0  # engine / generate() tokens/s at 256 x 256 on one GPU (issue 12)
BAD = ("FAILED", "timeout")
# What "4x the quickstart" scales: the trace and problem counts (steps-based settings stay).
SCALED_KEYS = ("data.train", "data.eval[].limit", "quality.gold_traces", "quality.compare_traces")


# ----------------------------------------------------------------------------- sizes


@dataclass
class Sizes:
    """Everything a section's size depends on; `--tiny` and the GPU defaults are two presets."""

    model: str = "smollm2-135m"
    batch: int = 256                 # engine: prompts in the batch
    new_tokens: int = 256            # engine: max new tokens per prompt
    fast_path: str = "on"            # engine: HFEngine fast path (static cache + torch.compile)
    warmup: bool = True              # engine: one untimed run of each side first
    sft_batch: int = 16
    sft_steps: int = 2               # the first step carries the warm-up (kernels, allocator)
    sft_max_length: int = 1024       # tokens per example (prompt + turn + EOS), filled to ~this
    rl_generations: int = 8          # dialogues per problem (GRPO group)
    rl_batch: int = 64               # dialogues per step: 8 problems x 8
    rl_turns: int = 2                # max long turns per dialogue
    rl_long: int = 256               # token limit of a long turn
    rl_short: int = 128              # token limit of a short turn
    quickstart_scale: float = 4.0
    tiny_quickstart: bool = False    # a miniature of the quickstart on the tiny model instead


def tiny_sizes() -> Sizes:
    return Sizes(model="tiny-random", batch=4, new_tokens=16, fast_path="off", warmup=True, sft_batch=2,
                 sft_steps=1, sft_max_length=256, rl_generations=2, rl_batch=2, rl_turns=2, rl_long=8,
                 rl_short=8, quickstart_scale=1.0, tiny_quickstart=True)


# ----------------------------------------------------------------------------- results and measuring


@dataclass
class Result:
    section: str
    status: str = "ok"               # ok | below target | FAILED | timeout | skipped
    result: str = ""
    seconds: float = 0.0
    memory: str = ""
    memory_bytes: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(isolated: bool) -> tuple[int, str]:
    """(bytes, text): the GPU's max allocated since `reset_peak`, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        b = torch.cuda.max_memory_allocated()
        r = torch.cuda.max_memory_reserved()
        return b, f"{b / 2**30:.2f} GiB GPU (reserved {r / 2**30:.2f})"
    b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return b, f"{b / 2**30:.2f} GiB RSS" + ("" if isolated else " (process peak so far)")


class _Deadline(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise `_Deadline` in this (main) thread after `seconds` (in-process sections)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum, frame):
        raise _Deadline(f"budget spent after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- sections


def section_setup(s: Sizes, work: Path) -> dict[str, Any]:
    """Materialise the model cache (GGUF → safetensors once) so no section's time includes it."""
    from longshort.models import load_tokenizer, resolve_model_path

    where = resolve_model_path(s.model)
    load_tokenizer(s.model)
    return {"result": f"{s.model} at {where}", "details": {"path": where}}


def section_engine(s: Sizes, work: Path) -> dict[str, Any]:
    import engine_speed as es
    import torch

    from longshort.engines.hf import HFEngine
    from longshort.models import load_model

    model, tok = load_model(s.model)
    engine = HFEngine.from_model(model, tok, batch_size=s.batch, fast_path=s.fast_path)
    chats = es.prompts(s.batch)
    warm = {}
    if s.warmup:
        for name, fn in (("plain", lambda: es.run_plain(model, tok, chats, s.new_tokens)),
                         ("engine", lambda: es.run_engine(engine, chats, s.new_tokens))):
            t0 = time.perf_counter()
            fn()
            warm[name] = round(time.perf_counter() - t0, 2)
        print(f"  warm-up (untimed): plain {warm['plain']:.1f} s, engine {warm['engine']:.1f} s")
    p_dt, p_tok = es.run_plain(model, tok, chats, s.new_tokens)
    e_dt, e_tok = es.run_engine(engine, chats, s.new_tokens)
    p_tps, e_tps = p_tok / p_dt, e_tok / e_dt
    ratio = e_tps / p_tps
    print(f"  model.generate(): {p_dt:.2f} s, {p_tok} tokens, {p_tps:,.0f} tok/s")
    print(f"  HFEngine:         {e_dt:.2f} s, {e_tok} tokens, {e_tps:,.0f} tok/s  -> {ratio:.2f}x")
    target = ENGINE_TARGET if torch.cuda.is_available() and s.batch >= 256 and s.new_tokens >= 256 else None
    result = (f"{s.batch}x{s.new_tokens} greedy, {next(model.parameters()).dtype}".replace("torch.", "")
              + f": engine {e_tps:,.0f} tok/s vs generate() {p_tps:,.0f} tok/s = **{ratio:.2f}x**"
              + (f" (target ≥ {target:g}x)" if target else "")
              + (f"; untimed warm-up {warm['plain']:.1f} s + {warm['engine']:.1f} s (engine: compile)"
                 if warm and engine.fast else ""))
    return {"result": result, "status": "below target" if target and ratio < target else "ok",
            "details": {"plain_s": round(p_dt, 3), "plain_tokens": p_tok, "plain_tok_s": round(p_tps, 1),
                        "engine_s": round(e_dt, 3), "engine_tokens": e_tok, "engine_tok_s": round(e_tps, 1),
                        "ratio": round(ratio, 3), "fast_path": engine.fast, "warmup_s": warm,
                        "batch": s.batch, "new_tokens": s.new_tokens}}


def step_timer():
    """A transformers `TrainerCallback` recording the wall time of each optimizer step (`.times`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def sft_records(tok: Any, n: int, max_length: int) -> list[dict[str, Any]]:
    """`n` cold-start SFT examples of the long role, each filled to about `max_length` tokens."""
    from longshort.dialogue.protocol import render_input
    from longshort.engines.base import render_chat

    out = []
    for i in range(n):
        q = f"What is {i + 12} times {i + 7}, plus {3 * i + 1}?"
        messages, prefix = render_input("long", q, [])
        budget = max_length - len(tok(render_chat(tok, messages, prefix), add_special_tokens=False)["input_ids"])
        budget -= 8  # the closing tag and EOS, tokenised apart
        lines: list[str] = []
        k = 0
        while True:
            line = f"Step {k + 1}: {i + k} plus {k + 3} is {i + 2 * k + 3}; we check it once more and carry on."
            body = "<think>\n" + "\n".join(lines + [line]) + "\n</think>"
            if len(tok(body, add_special_tokens=False)["input_ids"]) > budget:
                break
            lines.append(line)
            k += 1
        out.append({"id": f"gc-{i}", "role": "long", "problem": q, "answer": "0", "prompt": messages,
                    "assistant_prefix": prefix, "completion": "<think>\n" + "\n".join(lines) + "\n</think>"})
    return out


def section_sft(s: Sizes, work: Path) -> dict[str, Any]:
    from longshort.models import load_tokenizer
    from longshort.training.sft import SFTRunConfig, make_trainer

    records = sft_records(load_tokenizer(s.model), s.sft_batch * s.sft_steps, s.sft_max_length)
    cfg = SFTRunConfig(role="long", data="(in memory)", model=s.model, out=str(work / "sft"), max_steps=s.sft_steps,
                       batch_size=s.sft_batch, max_length=s.sft_max_length, lr=1e-5, warmup=0, logging_steps=1,
                       save_steps=10**6, report_to="none")
    trainer = make_trainer(cfg, records)
    timer = step_timer()
    trainer.add_callback(timer)
    tokens = sum(len(ex["input_ids"]) for ex in trainer.train_dataset)
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    steady = timer.times[-1] if timer.times else wall
    per_step = tokens / max(1, s.sft_steps)
    loss = out.metrics.get("train_loss")
    prec = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    steps = ", ".join(f"{t:.2f}" for t in timer.times)
    result = (f"{s.sft_steps} step(s) of {s.sft_batch} x ~{per_step / s.sft_batch:.0f} tokens ({prec}): "
              f"last step **{steady:.2f} s** = {per_step / steady:,.0f} tokens/s (steps: {steps} s)")
    if loss is not None:
        result += f", loss {loss:.3f}"
    return {"result": result, "details": {"wall_s": round(wall, 3), "step_s": [round(t, 3) for t in timer.times],
                                          "tokens": tokens, "batch": s.sft_batch, "steps": s.sft_steps,
                                          "precision": prec, "metrics": out.metrics,
                                          "dropped": getattr(trainer, "_longshort_dropped", None)}}


def section_rl(s: Sizes, work: Path) -> dict[str, Any]:
    from longshort.dialogue.collab import CollabConfig
    from longshort.training.rl import RLRunConfig, load_problems, make_partner, make_trainer

    (work / "rl").mkdir(parents=True, exist_ok=True)
    data = work / "rl" / "problems.jsonl"
    need = 2 * max(1, s.rl_batch // s.rl_generations)
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i + 3} + {2 * i + 5}?",
                                        "answer": str(3 * i + 8)}) + "\n" for i in range(need)))
    dialogue = CollabConfig(max_turns=s.rl_turns, max_new_tokens_long=s.rl_long, max_new_tokens_short=s.rl_short)
    cfg = RLRunConfig(long=s.model, short=s.model, data=str(data), out=str(work / "rl" / "run"), iterations=1,
                      max_steps=1, num_generations=s.rl_generations, batch_size=s.rl_batch, lr=1e-6,
                      dynamic_sampling=False, report_to="none", save_steps=10**6, dialogue=dialogue)
    partner = make_partner(cfg.short, cfg)
    try:
        trainer = make_trainer(cfg, "long", cfg.long, partner, work / "rl" / "ckpt", load_problems(str(data)))
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    finally:
        partner.close()
    log = trainer.state.log_history[0] if trainer.state.log_history else {}
    turns = log.get("dialogue/turns")
    tl, ts = log.get("dialogue/tokens_long"), log.get("dialogue/tokens_short")
    groups = s.rl_batch // s.rl_generations
    bits = [f"1 GRPO step, {s.rl_batch} dialogues ({groups} problem{'s' * (groups != 1)} x "
            f"{s.rl_generations}), ≤ {s.rl_turns} long turns of ≤ {s.rl_long} + short of ≤ {s.rl_short} tokens: "
            f"**{wall:.1f} s**"]
    if turns is not None:
        bits.append(f"{turns:.2f} turns/dialogue")
    if tl is not None and ts is not None:
        bits.append(f"{tl:.0f} long + {ts:.0f} short tokens/dialogue")
    return {"result": ", ".join(bits),
            "details": {"wall_s": round(wall, 3), "log": {k: v for k, v in log.items()
                                                          if isinstance(v, (int, float, str))}}}


def quickstart_recipe(base: dict[str, Any], s: Sizes) -> dict[str, Any]:
    """The quickstart at `s.quickstart_scale` x its trace/problem counts, or (`tiny_quickstart`) its
    miniature on the tiny model: every stage, the same methods, a few examples and steps."""
    raw = json.loads(json.dumps(base))  # deep copy
    if s.tiny_quickstart:
        raw["name"] = "quickstart-tiny"
        raw["models"].update(base=s.model, scorer=s.model)
        raw["data"]["train"] = 4
        raw["data"]["eval"] = [dict(e, limit=2) for e in raw["data"]["eval"]]
        raw["score"]["ablation_window"] = 16
        raw["quality"].update(gold_traces=2, compare_traces=2)
        small = {"batch_size": 2, "grad_accum": 1, "max_length": 384}
        raw["baseline_sft"].update(epochs=1, **small)
        raw["sft"].update(max_steps=1, **small)
        raw["rl"].update(max_steps=1, num_generations=2, batch_size=2, grad_accum=1, dynamic_max_rounds=0,
                         dialogue={"max_turns": 1, "max_new_tokens_long": 8, "max_new_tokens_short": 8})
        raw["eval"]["collab"].update(max_new_tokens_long=8, max_new_tokens_short=8, solo_max_new_tokens=16)
        return raw
    k = s.quickstart_scale
    raw["name"] = f"quickstart-x{k:g}"
    raw["data"]["train"] = int(round(raw["data"]["train"] * k))
    raw["data"]["eval"] = [dict(e, limit=int(round(e["limit"] * k))) if "limit" in e else e
                           for e in raw["data"]["eval"]]
    for key in ("gold_traces", "compare_traces"):
        if key in raw.get("quality", {}):
            raw["quality"][key] = int(round(raw["quality"][key] * k))
    return raw


def section_quickstart(s: Sizes, work: Path) -> dict[str, Any]:
    import yaml

    from longshort.pipeline import run_pipeline

    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    raw = quickstart_recipe(base, s)
    recipe = work / f"{raw['name']}.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = Path(run_pipeline(recipe, work / raw["name"]))
    m = json.loads((run_dir / "metrics.json").read_text())
    stages = m.get("stage_seconds", {})
    parts = []
    for name, h in m.get("headline", {}).items():
        parts.append(f"{name} ({h.get('problems')} problems): pair {h['accuracy_pair']:.1%} at "
                     f"{h['tokens_pair']:.0f} tokens, baseline {h['accuracy_baseline']:.1%} at "
                     f"{h['tokens_baseline']:.0f} tokens ({h.get('token_reduction', 0):.0%} fewer)")
    auroc = (m.get("importance") or {}).get("auroc") or {}
    if auroc.get("auroc") is not None:
        parts.append(f"importance AUROC {auroc['auroc']:.3f}")
    what = (f"miniature on {s.model}" if s.tiny_quickstart
            else f"x{s.quickstart_scale:g} ({raw['data']['train']} traces)")
    stage_txt = ", ".join(f"{k} {v:.0f}" for k, v in stages.items() if v >= 0.5)
    return {"result": f"{what}: " + "; ".join(parts) + (f"; stages (s): {stage_txt}" if stage_txt else ""),
            "details": {"recipe": raw, "headline": m.get("headline"), "stage_seconds": stages,
                        "peak_rss_mb": m.get("peak_rss_mb"), "run_dir": str(run_dir)}}


RUNNERS = {"setup": section_setup, "engine": section_engine, "sft": section_sft, "rl": section_rl,
           "quickstart": section_quickstart}


def run_in_process(name: str, s: Sizes, work: Path, budget: float, *, isolated: bool = False) -> Result:
    """Run one section here; any exception becomes a FAILED result (or timeout past `budget`)."""
    res = Result(name)
    reset_peak()
    t0 = time.perf_counter()
    try:
        with alarm(budget):
            out = RUNNERS[name](s, work)
        res.result = out.get("result", "")
        res.status = out.get("status", "ok")
        res.details = out.get("details", {})
    except _Deadline as exc:
        res.status, res.error = "timeout", str(exc)
    except BaseException as exc:  # noqa: BLE001 - a section's failure must not stop the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        res.status = "FAILED"
        res.error = f"{type(exc).__name__}: {exc}".strip()[:600]
        res.details["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
    res.seconds = time.perf_counter() - t0
    try:
        res.memory_bytes, res.memory = peak_memory(isolated)
    except Exception as exc:  # noqa: BLE001 - e.g. a broken CUDA context after a failure
        res.memory = f"unknown ({type(exc).__name__})"
    return res


def run_isolated(name: str, args: argparse.Namespace, work: Path, budget: float) -> Result:
    """Run one section in a child process (own CUDA context, own peak memory), killed past `budget`."""
    out = work / f"result-{name}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result-json", str(out),
            "--work", str(work), *child_flags(args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        code = proc.wait(timeout=max(1.0, budget))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return Result(name, status="timeout", seconds=time.perf_counter() - t0,
                      error=f"still running when the budget was spent ({budget:.0f} s left for it); killed")
    if out.exists():
        res = Result(**json.loads(out.read_text()))
        if code and res.status == "ok":
            res.status, res.error = "FAILED", f"exit code {code} after the section finished"
        return res
    return Result(name, status="FAILED", seconds=time.perf_counter() - t0,
                  error=f"the section's process died with exit code {code} (see its output above)")


def child_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--tiny"] if args.tiny else []
    for opt in ("model", "batch", "new_tokens", "fast_path", "threads", "quickstart_scale", "sft_batch",
                "sft_steps"):
        v = getattr(args, opt)
        if v is not None:
            flags += [f"--{opt.replace('_', '-')}", str(v)]
    return flags


# ----------------------------------------------------------------------------- report


def versions() -> str:
    from importlib import metadata

    import torch

    bits = []
    for name in ("torch", "transformers", "trl", "datasets", "accelerate", "pydantic"):
        try:
            bits.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            bits.append(f"{name} missing")
    cuda = f"CUDA {torch.version.cuda}" if torch.cuda.is_available() else "no CUDA"
    return ", ".join(bits) + f"; {cuda}; Python {sys.version.split()[0]}"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def summary(results: list[Result], *, machine: str, mode: str, total: float, budget: float) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"### GPU check ({mode}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"`{' '.join(['python3', 'benchmarks/gpu_check.py', *sys.argv[1:]])}`; git {git_revision()}", "",
             f"- {machine}", f"- {versions()}", "",
             "| section | result | time | memory | status |", "|---|---|---|---|---|"]
    for r in results:
        result = r.result or (r.error or "")[:200]
        lines.append(f"| {TITLES.get(r.section, r.section)} | {cell(result)} | {fmt_s(r.seconds)} | "
                     f"{cell(r.memory or '–')} | {r.status} |")
    bad = [r for r in results if r.status in BAD]
    lines += ["", f"Total {fmt_s(total)} (budget {fmt_s(budget)}); {len(bad)} of {len(results)} failed."]
    for r in bad:
        lines.append(f"- **{TITLES.get(r.section, r.section)}** {r.status}: {cell(r.error or '')}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized: the tiny random model, a few tokens and steps, "
                    "the quickstart's miniature (what the tests run)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown summary to this file")
    ap.add_argument("--json", type=Path, default=None, help="also write every result (with details) as JSON")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole check; a section still running then is stopped and reported as "
                         "timeout (default 290 on a GPU: the 5-minute target, 900 with --tiny)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each section in its own process (default: on, off with --tiny)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (models, run directories)")
    ap.add_argument("--model", default=None, help="model spec (default smollm2-135m; tiny-random with --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="engine: prompts in the batch (default 256; tiny 4)")
    ap.add_argument("--new-tokens", type=int, default=None, help="engine: new tokens (default 256; tiny 16)")
    ap.add_argument("--fast-path", choices=["auto", "on", "off"], default=None,
                    help="engine fast path (default on with CUDA, off on a CPU)")
    ap.add_argument("--sft-batch", type=int, default=None, help="SFT: examples per step (default 16; tiny 2)")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT: optimizer steps (default 2; tiny 1)")
    ap.add_argument("--quickstart-scale", type=float, default=None, help="quickstart: data scale (default 4)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --tiny)")
    ap.add_argument("--child", choices=["setup", *SECTIONS], help=argparse.SUPPRESS)
    ap.add_argument("--result-json", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    s = tiny_sizes() if args.tiny else Sizes()
    if not args.tiny and not _cuda():
        s.fast_path = "off"
    for opt in ("model", "batch", "new_tokens", "fast_path", "quickstart_scale", "sft_batch", "sft_steps"):
        v = getattr(args, opt)
        if v is not None:
            setattr(s, opt, v)
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    s = sizes_from(args)
    if args.child:  # one section, for the parent's --isolate
        work = args.work
        budget = 0.0  # the parent kills us at its deadline
        res = run_in_process(args.child, s, work, budget, isolated=True)
        args.result_json.write_text(json.dumps(asdict(res), default=str))
        return 0

    from _machine import header

    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    isolate = (not args.tiny) if args.isolate is None else args.isolate
    budget = args.budget or (900.0 if args.tiny else 290.0)
    machine = header()
    mode = ("tiny, CPU" if args.tiny else "default sizes") + (", isolated" if isolate else ", one process")
    print(machine)
    print(versions())
    print(f"sizes: {json.dumps(asdict(s))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[Result] = []
    try:
        for name in ["setup", *names]:
            left = budget - (time.perf_counter() - started)
            print(f"\n== {TITLES[name]} ({left:.0f} s of the budget left)", flush=True)
            if left < 3:
                results.append(Result(name, status="timeout", error="budget spent before it started"))
                continue
            if isolate and name != "setup":
                res = run_isolated(name, args, work, left)
            else:  # setup runs here: the children then find the model cache ready
                res = run_in_process(name, s, work, left)
            results.append(res)
            print(f"== {TITLES[name]}: {res.status} in {fmt_s(res.seconds)}; {res.result or res.error}", flush=True)
            if name == "setup" and res.status in BAD:
                print("   (the sections below will most likely fail the same way)")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    text = summary(results, machine=machine, mode=mode, total=total, budget=budget)
    print("\n" + text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return 1 if any(r.status in BAD for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
