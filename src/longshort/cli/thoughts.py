"""CLI commands of the thoughts area: `chunk`, `score`, `coldstart`, `synth` (DESIGN §5).

Thin wrappers over `longshort.thoughts.*`: read and validate every input record before any
work, write outputs per record (resumable by id) or atomically, print a short summary.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from longshort.cli.app import app, config_option, finite, given
from longshort.errors import InputError, LongshortError
from longshort.io import ReadStats, ResumableWriter, iter_jsonl, write_json_atomic, write_jsonl_atomic
from longshort.thoughts.chunking import ChunkConfig, HeuristicConfig, LLMChunkConfig
from longshort.thoughts.coldstart import ColdStartConfig
from longshort.thoughts.importance import ImportanceConfig
from longshort.thoughts.scored import check_scored_record

MODEL_HELP = "Model spec (smollm2-135m, tiny-random, a local dir, a hub id) or the served model name."


def _check_engine(engine: str, base_url: str | None, model: str | None = None, option: str = "--model") -> None:
    """--base-url goes with --engine openai (where it must be a URL); with another engine it would be
    silently ignored. `model`: a spec the in-process engine will load, checked before any work."""
    from longshort.cli.app import check_urls
    from longshort.models import spec_problem

    check_urls(engine, base_url=base_url)
    if model is not None and engine in ("transformers", "hf") and spec_problem(model):
        raise InputError(spec_problem(model), field=option)


def _engine(model: str, engine: str, base_url: str | None, **kw: Any):
    from longshort.engines import make_engine

    return make_engine(model, engine, base_url=base_url, **kw)


def _skipped_note(stats: ReadStats) -> None:
    if stats.skipped:
        typer.echo(f"skipped {stats.skipped} bad record(s); first: {stats.reasons[0]}", err=True)


# fields every record of a stage's output holds: an --out JSONL without them is not ours
CHUNK_FIELDS = ("thoughts", "chunk_method")
SCORE_FIELDS = ("thoughts", "importance")


def _check_out(inp: Path, out: Path, expect: tuple[str, ...] = (), skip_bad: bool = False):
    """Refuse, before any work, an --out a run would damage (the input, a directory, a file that
    is not this stage's output, a bad line in the middle); return what it holds (read-only)."""
    from longshort.io import check_input_file, check_output_file, scan_output

    check_input_file(inp)
    check_output_file(out, inputs=[inp])
    return scan_output(out, expect=expect, skip_bad=skip_bad)


# --------------------------------------------------------------------------- chunk


@app.command()
def chunk(
    input: Path = typer.Option(..., "--input", "-i", help="Long-CoT JSONL {id?, problem, answer, response}."),
    out: Path = typer.Option(..., "--out", "-o", help="Chunk records JSONL (appended, resumable by id)."),
    method: str | None = config_option(ChunkConfig, "method", help="segment (no model, human granularity) | "
                                       "heuristic (no model, one thought per marker) | llm | gold (planted "
                                       "thoughts of synth traces)."),
    model: str = typer.Option("smollm2-135m", help=MODEL_HELP + " Used by --method llm."),
    engine: str = typer.Option("transformers", help="transformers | openai | vllm (llm method)."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server URL for --engine openai."),
    max_retries: int | None = config_option(LLMChunkConfig, "max_retries", min=0,
                                            help="llm method: retries after an unusable answer."),
    max_thoughts: int | None = typer.Option(None, min=1, help="heuristic: merge the smallest neighbours down to "
                                            "this many thoughts per trace (caps scoring cost)."),
    batch: int = typer.Option(16, min=1, help="llm method: traces per generate call (written after each)."),
    seed: int | None = config_option(LLMChunkConfig, "seed", help="llm method: base sampling seed."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad records instead of stopping."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip ids already in --out."),
) -> None:
    """Split long-CoT traces into steps and group them into thoughts."""
    from pydantic import ValidationError

    from longshort.thoughts.chunking import chunk_records
    from longshort.thoughts.ingest import load_traces

    method = method or ChunkConfig.model_fields["method"].default
    if method not in ("segment", "heuristic", "llm", "gold"):
        raise LongshortError(f"unknown --method {method!r}; accepted: segment, heuristic, llm, gold")
    _check_engine(engine, base_url, model if method == "llm" else None)
    _check_out(input, out, CHUNK_FIELDS, skip_bad)
    stats = ReadStats()
    records = load_traces(input, skip_bad=skip_bad, stats=stats)
    if not records:
        raise InputError(f"no records left after skipping {stats.skipped} bad one(s)", path=str(input))
    if method == "gold":
        for k, r in enumerate(records):
            if not r.get("gold_thoughts"):
                raise InputError("missing (method 'gold' needs synthetic traces from `longshort synth`)",
                                 path=str(input), line=stats.lines[k] if k < len(stats.lines) else k + 1,
                                 field="gold_thoughts")
    _skipped_note(stats)
    try:
        cfg = ChunkConfig(method=method, llm=LLMChunkConfig(**given(max_retries=max_retries, seed=seed)),
                          heuristic=HeuristicConfig(max_thoughts=max_thoughts))
    except ValidationError as exc:
        e = exc.errors()[0]
        raise LongshortError(f"bad option --{str(e['loc'][-1]).replace('_', '-')}: {e['msg']}") from None
    eng = _engine(model, engine, base_url) if method == "llm" else None
    flags: Counter[str] = Counter()
    n_thoughts = n_new = 0
    with ResumableWriter(out, resume=resume, expect=CHUNK_FIELDS, skip_bad=skip_bad) as w:
        todo = [r for r in records if r["id"] not in w.done_ids]
        if len(todo) < len(records):
            typer.echo(f"resuming: {len(records) - len(todo)} trace(s) already in {out}", err=True)
        step = max(1, batch) if method == "llm" else 256
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), desc="chunk", unit="trace") as bar:
            for s in range(0, len(todo), step):
                try:
                    done = chunk_records(todo[s:s + step], cfg, engine=eng, progress=False)
                except ValueError as exc:
                    raise LongshortError(str(exc)) from None
                for rec in done:
                    w.write(rec)
                    n_new += 1
                    n_thoughts += len(rec["thoughts"])
                    flags.update(rec["flags"])
                bar.update(len(done))
    if eng is not None:
        eng.close()
    mean = n_thoughts / n_new if n_new else 0.0
    typer.echo(f"chunked {n_new} trace(s) ({method}): {n_thoughts} thoughts, {mean:.1f} per trace -> {out}")
    if flags:
        typer.echo("flags: " + ", ".join(f"{k}={v}" for k, v in flags.most_common()))


# --------------------------------------------------------------------------- score


class _TokenizerOnly:
    """Token counting and chat rendering without loading model weights (for --dry-run)."""

    def __init__(self, spec: str):
        from longshort.models import load_tokenizer, resolve_model_path

        self.tokenizer = load_tokenizer(spec)
        self.model_name = spec
        self.max_context = None
        try:
            conf = json.loads((Path(resolve_model_path(spec)) / "config.json").read_text())
            self.max_context = conf.get("max_position_embeddings")
        except (OSError, ValueError, LongshortError):
            pass

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, request) -> str:
        """The transformers engine's text for `request` (`HFEngine.render`): `render_chat`."""
        from longshort.engines.base import render_request

        return render_request(self.tokenizer, request)


def _read_scoring_input(path: Path, skip_bad: bool, stats: ReadStats) -> list[dict[str, Any]]:
    """Chunk records, or raw traces (chunked here with the default chunker and flagged)."""
    from longshort.thoughts.chunking import chunk_records
    from longshort.thoughts.importance import check_answer, validate_scoring_record
    from longshort.thoughts.ingest import normalize_trace

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, (line, rec) in enumerate(iter_jsonl(path, skip_bad=skip_bad, stats=stats, with_lines=True)):
        try:
            if "thoughts" in rec:
                r = dict(rec)
                if not str(r.get("id", "")).strip():
                    raise InputError("missing", path=str(path), line=line, field="id")
                if isinstance(r["id"], bool) or not isinstance(r["id"], str | int):  # not str(["a"]) as an id
                    raise InputError("expected a string or an integer", path=str(path), line=line, field="id")
                r["id"] = str(r["id"])
                validate_scoring_record(r, str(path), line)
            else:
                r = normalize_trace(rec, path=str(path), line=line, index=index,
                                    id_prefix=f"{path.name.split('.')[0]}-")
                why = check_answer(r["answer"])
                if why:
                    raise InputError(f"answer cannot be parsed ({why})", path=str(path), line=line, field="answer")
                r = chunk_records([r])[0]
                r["flags"] = r["flags"] + ["auto_chunked"]
            if r["id"] in seen:
                raise InputError(f"duplicate id {r['id']!r}", path=str(path), line=line, field="id")
        except InputError:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.reasons.append(str(sys.exc_info()[1]))
            continue
        seen.add(r["id"])
        out.append(r)
    if not out:
        raise InputError("no records" if not stats.skipped else
                         f"no records left after skipping {stats.skipped} bad one(s)", path=str(path))
    return out


@app.command()
def score(
    input: Path = typer.Option(..., "--input", "-i", help="Chunk records from `longshort chunk` (raw traces are "
                               "chunked with the heuristic first)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scored records JSONL (appended, resumable by id)."),
    model: str = typer.Option("smollm2-135m", help=MODEL_HELP),
    engine: str = typer.Option("transformers", help="transformers | openai | vllm."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server URL for --engine openai."),
    estimator: str | None = config_option(
        ImportanceConfig, "estimator", help="How acc_i is measured: rollout (sample continuations and grade "
        "them, the paper's) | forced (the model's probability of the gold answer after each prefix) | ablation "
        "(how much less likely the rest of the trace is without the thought); forced and ablation sample "
        "nothing and need the transformers engine."),
    ablation_window: int | None = config_option(ImportanceConfig, "ablation_window", min=1, help="--estimator "
                                                "ablation: tokens after a thought compared with and without it."),
    ablation_tokens: str | None = config_option(ImportanceConfig, "ablation_tokens", help="--estimator ablation: "
                                                "which rest tokens count: math (digits, operators) | all."),
    rollouts: int | None = config_option(ImportanceConfig, "rollouts", min=1, help="Continuations per prefix (R)."),
    delta: float | None = config_option(ImportanceConfig, "delta", help="Length decay base δ."),
    alpha: float | None = config_option(ImportanceConfig, "alpha", help="Confidence level of the Hoeffding bound."),
    metric: str | None = config_option(ImportanceConfig, "metric", help="Importance metric (gain_decay | gain)."),
    max_new_tokens: int | None = config_option(ImportanceConfig, "max_new_tokens", min=1,
                                               help="Tokens per continuation."),
    temperature: float | None = config_option(ImportanceConfig, "temperature", help="Rollout sampling temperature."),
    top_p: float | None = config_option(ImportanceConfig, "top_p", help="Rollout nucleus mass."),
    seed: int | None = config_option(ImportanceConfig, "seed", help="Base seed of rollouts."),
    max_context: int | None = typer.Option(None, min=1, help="Model context in tokens (default: from the model)."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N traces."),
    shard: str | None = typer.Option(None, help="K/N: score only traces K, K+N, K+2N, ... (K from 0), for N "
                                     "processes in parallel, e.g. one per GPU with CUDA_VISIBLE_DEVICES=K, each "
                                     "with its own --out; every trace lands in exactly one output, so "
                                     "concatenating them gives the whole set."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print rollouts and estimated generated tokens, then stop."),
    pilot: int = typer.Option(0, min=0, help="--dry-run: load the model and run the rollouts of this many "
                              "prefixes (spread over the input) to measure tokens per rollout; 0 = assume every "
                              "rollout runs to --max-new-tokens."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad records instead of stopping."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip ids already in --out."),
) -> None:
    """Importance of every thought: accuracy gained by it (rollout: graded continuations; forced: the
    probability of the gold answer), times the length decay."""
    from pydantic import ValidationError

    from longshort.thoughts.importance import METRICS, plan
    from longshort.thoughts.scoring import iter_score

    _check_engine(engine, base_url, model)
    part = parse_shard(shard) if shard is not None else None
    existing = _check_out(input, out, SCORE_FIELDS, skip_bad)
    try:
        cfg = ImportanceConfig(**given(
            estimator=estimator, rollouts=rollouts, delta=delta, alpha=alpha, metric=metric,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, max_context=max_context,
            ablation_window=ablation_window, ablation_tokens=ablation_tokens))
    except ValidationError as exc:
        raise LongshortError(f"bad option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    estimator = cfg.estimator
    if cfg.metric not in METRICS:
        raise LongshortError(f"unknown --metric {cfg.metric!r}; known: {', '.join(sorted(METRICS))}")
    if estimator in ("forced", "ablation") and engine not in ("transformers", "hf"):
        raise LongshortError(f"--estimator {estimator} reads the model's probabilities, which --engine {engine} cannot "
                             "give; use --engine transformers or --estimator rollout")
    stats = ReadStats()
    records = _read_scoring_input(input, skip_bad, stats)
    _skipped_note(stats)
    if limit is not None:
        records = records[:limit]
    if part is not None:
        records = records[part[0]::part[1]]
    done_ids: set[str] = set()
    if resume and out.exists():
        done_ids = existing.done_ids  # read-only: a dry run changes nothing
    todo = [r for r in records if r["id"] not in done_ids]
    if dry_run:
        from longshort.thoughts.importance import describe_plan
        from longshort.thoughts.importance import pilot as run_pilot

        if pilot:
            counter = _engine(model, engine, base_url)
            pl = run_pilot(todo, counter, cfg, prefixes=pilot)
            p = plan(todo, counter, cfg, tokens_per_rollout=pl["tokens_per_rollout"])
            counter.close()
        else:
            counter = _TokenizerOnly(model) if engine in ("transformers", "hf") else _engine(model, engine, base_url)
            p = plan(todo, counter, cfg)
        typer.echo(f"dry run ({len(records) - len(todo)} already done): " + describe_plan(p, cfg)
                   + (f"; {p['truncated_traces']} trace(s) exceed the context and will be truncated"
                      if p["truncated_traces"] else ""))
        return
    if not todo:
        typer.echo(f"nothing to do: all {len(records)} trace(s) already in {out}")
        return
    from longshort.thoughts.importance import describe_actual, describe_plan

    eng = _engine(model, engine, base_url)
    cost = plan(todo, eng, cfg)
    typer.echo("plan: " + describe_plan(cost, cfg), err=True)
    flags: Counter[str] = Counter()
    n = rolls = toks = 0
    with ResumableWriter(out, resume=resume, expect=SCORE_FIELDS, skip_bad=skip_bad) as w:
        if len(todo) < len(records):
            typer.echo(f"resuming: {len(records) - len(todo)} trace(s) already in {out}", err=True)
        for rec in iter_score(todo, eng, cfg, progress=True):
            w.write(rec)
            n += 1
            rolls += rec["importance"]["num_rollouts"]
            toks += rec["importance"]["generated_tokens"]
            flags.update(rec["flags"])
    eng.close()
    typer.echo(f"scored {n} trace(s) ({estimator}, {model}): {rolls} rollouts, {toks} generated tokens -> {out}")
    typer.echo(describe_actual(cost, toks))
    if flags:
        typer.echo("flags: " + ", ".join(f"{k}={v}" for k, v in flags.most_common()))


def parse_shard(value: str) -> tuple[int, int]:
    """``--shard K/N`` as (K, N), 0 <= K < N; anything else is a one-line error.

    >>> parse_shard("1/4")
    (1, 4)
    """
    k, sep, n = value.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or len(value) > 20:
        raise InputError(f"expected K/N with whole numbers, e.g. 0/4 (got {value!r})", field="--shard")
    kk, nn = int(k), int(n)
    if nn < 1 or kk >= nn:
        raise InputError(f"need 0 <= K < N (got {value!r})", field="--shard")
    return kk, nn


# --------------------------------------------------------------------------- coldstart


@app.command()
def coldstart(
    input: Path = typer.Option(..., "--input", "-i", help="Scored records from `longshort score`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: sft_long.jsonl, sft_short.jsonl, stats.json."),
    threshold: float | None = typer.Option(None, help="Long iff score >= threshold."),
    ratio: float | None = typer.Option(None, help="Long = top ratio of thoughts by (positive) score."),
    relative: float | None = config_option(ColdStartConfig, "relative", min=0.0, help="Default rule: long iff "
                                           "score >= RELATIVE x the trace's mean positive score per thought "
                                           "(0 = every positive score)."),
    compressor: str | None = config_option(ColdStartConfig, "compressor", help="drop | extractive | llm."),
    model: str = typer.Option("smollm2-135m", help=MODEL_HELP + " Used by --compressor llm."),
    engine: str = typer.Option("transformers", help="Engine of --compressor llm."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server URL for --engine openai."),
    max_long_turns: int = typer.Option(4, min=0, help="At most this many long turns per dialogue (0 = no limit)."),
    tokenizer: str = typer.Option("smollm2-135m", help="Tokenizer for the token stats ('none' = word estimate)."),
    keep_incorrect: bool = typer.Option(False, "--keep-incorrect", help="Also use traces whose answer is wrong."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad records instead of stopping."),
) -> None:
    """Build the two SFT sets (one per role) from scored traces."""
    from pydantic import ValidationError

    from longshort.thoughts.coldstart import synthesize

    if threshold is not None and ratio is not None:
        raise LongshortError("give --threshold or --ratio, not both")
    finite(threshold=threshold, ratio=ratio)  # --threshold nan puts nothing in the long role
    _check_engine(engine, base_url, model if compressor == "llm" else None)
    if tokenizer.lower() != "none":
        _check_engine("transformers", None, tokenizer, "--tokenizer")
    try:
        cfg = ColdStartConfig(threshold=threshold, ratio=ratio, require_correct=not keep_incorrect,
                              max_long_turns=max_long_turns or None, **given(compressor=compressor, relative=relative))
    except ValidationError as exc:
        e = exc.errors()[0]
        raise LongshortError(f"bad option --{e['loc'][0]}: {e['msg']}") from None
    from longshort.io import check_input_file, check_output_dir, check_replaceable, first_record_has

    check_input_file(input)
    check_output_dir(out)
    for name in COLDSTART_FILES:
        # an earlier coldstart output is replaced; the input or a user's sft_long.jsonl never
        check_replaceable(out / name, command="coldstart", inputs=[input], head_bytes=10_000_000,
                          ours=first_record_has("dialogues", whole=True) if name.endswith(".json")
                          else first_record_has("prompt", "completion"))
    stats = ReadStats()
    records = []
    seen: dict[str, int] = {}
    for k, rec in iter_jsonl(input, skip_bad=skip_bad, stats=stats, with_lines=True):
        try:
            check_scored_record(rec, str(input), k, require_correct=cfg.require_correct)
            if str(rec["id"]) in seen:
                raise InputError(f"duplicate id {str(rec['id'])!r} (first on line {seen[str(rec['id'])]})",
                                 path=str(input), line=k, field="id")
            seen[str(rec["id"])] = k
        except InputError as problem:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.reasons.append(str(problem))
            continue
        records.append(rec)
    if not records:
        raise InputError("no records" if not stats.skipped else
                         f"no records left after skipping {stats.skipped} bad one(s)", path=str(input))
    _skipped_note(stats)
    count = None
    if tokenizer.lower() != "none":
        from longshort.models import load_tokenizer

        tok = load_tokenizer(tokenizer)

        def count(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"])
    eng = _engine(model, engine, base_url) if cfg.compressor == "llm" else None
    long_ex, short_ex, st = synthesize(records, cfg, engine=eng, count_tokens=count)
    if eng is not None:
        eng.close()
    st["skipped_bad_records"] = stats.skipped
    if not long_ex and not short_ex:  # nothing to train on: say why instead of writing empty sets
        why = (f"all {st['skipped_incorrect']} trace(s) answer incorrectly (--keep-incorrect uses them)"
               if st.get("skipped_incorrect") else "no trace gave a dialogue")
        raise InputError(f"no SFT examples: {why}; nothing written", path=str(input))
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "sft_long.jsonl", long_ex)
    write_jsonl_atomic(out / "sft_short.jsonl", short_ex)
    write_json_atomic(out / "stats.json", st)
    typer.echo(f"{st['dialogues']} dialogue(s) ({st['skipped_incorrect']} incorrect trace(s) skipped): "
               f"{len(long_ex)} long / {len(short_ex)} short examples, token share long "
               f"{st['token_share']['long']:.2f}, compression {st['compression_ratio']} -> {out}")


# generate() holds the set in memory (~2 KB a trace): 100,000 is ~200 MB and 15 s; --n 10**12 never ends
MAX_SYNTH = 100_000
COLDSTART_FILES = ("sft_long.jsonl", "sft_short.jsonl", "stats.json")


# --------------------------------------------------------------------------- synth


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL of synthetic traces."),
    task: str = typer.Option("arithmetic", help="Task family (arithmetic)."),
    n: int = typer.Option(100, min=1, max=MAX_SYNTH, help="Number of problems."),
    seed: int = typer.Option(0, help="Random seed (same seed, same file)."),
    num_ops: int = typer.Option(3, help="Computations per problem (drawn from 1..num_ops+1)."),
    max_operand: int = typer.Option(12, help="Largest operand."),
    redundancy: int = typer.Option(3, help="Redundant thoughts per trace."),
    noise: float = typer.Option(0.3, help="Style noise: chance a thought lacks its discourse marker."),
    fixed_ops: bool = typer.Option(False, "--fixed-ops", help="Exactly --num-ops computations per problem."),
) -> None:
    """Generate the planted-importance task: problems + R1-style traces with true thoughts."""
    from pydantic import ValidationError

    from longshort.thoughts.synthetic import SynthConfig, generate

    if n < 1:
        raise LongshortError("--n must be at least 1")
    try:
        cfg = SynthConfig(task=task, num_ops=num_ops, max_operand=max_operand, redundancy=redundancy,
                          noise=noise, vary_ops=not fixed_ops)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise LongshortError(f"bad option --{str(e['loc'][0]).replace('_', '-')}: {e['msg']}") from None
    from longshort.io import check_new_file

    check_new_file(out)
    recs = generate(n, seed=seed, config=cfg)
    write_jsonl_atomic(out, recs)
    typer.echo(f"wrote {len(recs)} {task} problem(s) (seed {seed}) -> {out}")
