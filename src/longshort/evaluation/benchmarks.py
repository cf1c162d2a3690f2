"""Benchmark loaders: a registry of named benchmarks plus any JSONL file or hub dataset.

A benchmark is a loader and a grading rule, registered by name in one place (`BENCHMARKS`),
in the spirit of lm-evaluation-harness tasks: adding one means adding one `BenchmarkSpec`.
Every loader returns plain records `{id, problem, answer, benchmark, grading, choices?, ...}`
where `answer` is a string and, for multiple choice, `choices` are already written into the
problem text as `A) … D)` and `answer` is the gold letter.

Where the data comes from, in order:
1. a registered name (`math500`, `gsm8k`, ...) → its file in the data directory: `--data-dir`,
   else `$LONGSHORT_DATA`, else `../shared/benchmarks` (relative to the working directory or
   to the repository) when it exists; if no file is found the hub copy is tried (online only);
2. a path to a JSONL / JSONL.gz file with `problem` and `answer` (+ optional `choices`);
3. `hub:DATASET[:CONFIG][@SPLIT]` → `datasets.load_dataset` (needs network).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from longshort.errors import InputError, LongshortError
from longshort.io import MAX_TEXT_CHARS, ReadStats, check_answer, check_text, iter_lines, parse_record

Grading = Literal["math", "choice"]
LETTERS = "ABCDEFGHIJ"
ENV_DATA_DIR = "LONGSHORT_DATA"
MC_INSTRUCTION = "Answer with the letter of the correct choice, written as \\boxed{{X}} where X is one of {letters}."


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face hub and which fields hold what."""

    dataset: str
    config: str | None = None
    split: str = "test"
    problem_field: str = "problem"
    answer_field: str = "answer"


@dataclass(frozen=True)
class BenchmarkSpec:
    """One registered benchmark: its file, how it is graded, and how records are prepared.

    filename: the file in the data directory (JSONL, optionally gzip-compressed).
    grading: "math" (math-verify on the final answer) or "choice" (letters A-D).
    shuffle_choices: re-order choices with a fixed seed (GPQA); seed 0 keeps the stored order,
        which is already the documented seed-0 permutation (see SOURCES.md).
    hub: the hub copy used when the file is absent and the network is reachable.
    """

    name: str
    filename: str
    description: str
    grading: Grading = "math"
    shuffle_choices: bool = False
    aliases: tuple[str, ...] = ()
    hub: HubSource | None = None
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extra_fields: tuple[str, ...] = field(default=("subject", "level", "solution"))


def _gsm8k_prepare(rec: dict[str, Any]) -> dict[str, Any]:
    """GSM8K gold = the text after `####`, thousands separators removed (raw hub format)."""
    rec["answer"] = gsm8k_final_answer(str(rec["answer"]))
    return rec


def gsm8k_final_answer(text: str) -> str:
    """The final answer of a GSM8K reference solution (after `####`), commas removed.

    >>> gsm8k_final_answer("She makes 9 * 2 = $<<9*2=18>>18.\\n#### 1,018")
    '1018'
    >>> gsm8k_final_answer("72")
    '72'
    """
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip().replace(",", "")


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Add a benchmark to the registry (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in BENCHMARKS:
            raise ValueError(f"benchmark name {key!r} registered twice")
        BENCHMARKS[key] = spec
    return spec


register(BenchmarkSpec(
    "math500", "math500.jsonl", "MATH500 (Lightman et al.), 500 competition problems, LaTeX answers",
    hub=HubSource("HuggingFaceH4/MATH-500", split="test")))
register(BenchmarkSpec(
    "aime24", "aime24.jsonl", "AIME 2024 I+II, 30 problems, integer answers 0-999",
    hub=HubSource("HuggingFaceH4/aime_2024", split="train")))
register(BenchmarkSpec(
    "aime25", "aime25.jsonl", "AIME 2025 I+II, 30 problems, integer answers 0-999",
    hub=HubSource("MathArena/aime_2025", split="train")))
register(BenchmarkSpec(
    "amc23", "amc23.jsonl", "AMC 12A/12B 2023, 40 problems, numeric answers",
    hub=HubSource("math-ai/amc23", split="test", problem_field="question")))
register(BenchmarkSpec(
    "gpqa_diamond", "gpqa_diamond.jsonl.gz",
    "GPQA Diamond, 198 graduate-level science questions, 4 choices, graded by letter",
    grading="choice", shuffle_choices=True, aliases=("gpqa",), extra_fields=("subject", "subdomain")))
register(BenchmarkSpec(
    "gsm8k", "gsm8k_test.jsonl", "GSM8K test split, 1319 grade-school word problems, numeric answers",
    aliases=("gsm8k_test",), prepare=_gsm8k_prepare,
    hub=HubSource("openai/gsm8k", config="main", split="test", problem_field="question")))


def known_benchmarks() -> list[str]:
    """Registered benchmark names (aliases excluded), sorted."""
    return sorted({spec.name for spec in BENCHMARKS.values()})


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data directory: the argument, else $LONGSHORT_DATA, else an existing
    `../shared/benchmarks` next to the working directory or the repository; None if none."""
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if not p.is_dir():
            raise InputError("data directory not found", path=str(p))
        return p
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise InputError(f"data directory from ${ENV_DATA_DIR} not found", path=str(p))
        return p
    repo_root = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), repo_root):
        cand = (base / ".." / "shared" / "benchmarks").resolve()
        if cand.is_dir():
            return cand
    return None


def _choice_seed(benchmark: str, seed: int, rid: str) -> int:
    # Same scheme as the stored GPQA file (SOURCES.md), so seed 0 means the documented order.
    digest = hashlib.sha256(f"{benchmark}|seed={seed}|{rid}".encode()).hexdigest()
    return int(digest[:16], 16)


def shuffle_choices(choices: list[str], answer_index: int, *, benchmark: str, seed: int,
                    rid: str) -> tuple[list[str], int]:
    """Permute choices deterministically per (benchmark, seed, id); return the new gold index.

    >>> shuffle_choices(["right", "w1", "w2", "w3"], 0, benchmark="b", seed=1, rid="q")
    (['w2', 'w3', 'right', 'w1'], 2)
    """
    perm = random.Random(_choice_seed(benchmark, seed, rid)).sample(range(len(choices)), len(choices))
    return [choices[i] for i in perm], perm.index(answer_index)


def format_choice_problem(question: str, choices: list[str]) -> str:
    """The question followed by lettered choices and the answer-format instruction."""
    letters = LETTERS[: len(choices)]
    lines = [question.strip(), ""]
    lines += [f"{letter}) {str(text).strip()}" for letter, text in zip(letters, choices, strict=True)]
    shown = ", ".join(letters[:-1]) + f" or {letters[-1]}"
    lines += ["", MC_INSTRUCTION.format(letters=shown)]
    return "\n".join(lines)


def _answer_letter(rec: dict[str, Any], choices: list[str], path: str, line: int) -> int:
    ans = str(rec["answer"]).strip()
    m = re.fullmatch(r"\(?([A-Ja-j])\)?", ans)
    if m and LETTERS.index(m.group(1).upper()) < len(choices):
        return LETTERS.index(m.group(1).upper())
    stripped = [str(c).strip() for c in choices]
    if ans in stripped:
        return stripped.index(ans)
    raise InputError(f"answer {ans!r} is neither a choice letter nor one of the choices",
                     path=path, line=line, field="answer")


def _finish_one(rec: dict[str, Any], line: int, *, benchmark: str, grading: Grading, shuffle: bool,
                seed: int, path: str, prepare, extra_fields: tuple[str, ...]) -> dict[str, Any]:
    """One validated raw record → a benchmark record (id, string answer, lettered choices)."""
    for name in ("problem", "answer"):
        value = rec.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError("missing or empty", path=path, line=line, field=name)
    # types and sizes, checked before any model is loaded: a problem is a string (not an object
    # sent to the model as its repr), an answer a string or a finite number
    problem = check_text(rec["problem"], path=path, line=line, field="problem")
    check_answer(rec["answer"], path=path, line=line)
    rec = dict(rec)
    if prepare is not None:
        rec = prepare(rec)
    raw_id = rec.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)
                               or not str(raw_id).strip()):
        raise InputError("expected a non-empty string or an integer", path=path, line=line, field="id")
    rid = str(raw_id).strip() if raw_id is not None else f"{benchmark}-{line - 1}"
    answer = check_answer(rec["answer"], path=path, line=line)
    item: dict[str, Any] = {"id": rid, "problem": problem, "answer": answer,
                            "benchmark": benchmark, "grading": grading}
    choices = rec.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(
                isinstance(c, str | int | float) and not isinstance(c, bool) and str(c).strip()
                and len(str(c)) <= MAX_TEXT_CHARS for c in choices):
            raise InputError(f"expected a list of 2-{len(LETTERS)} non-empty strings",
                             path=path, line=line, field="choices")
        choices = [str(c).strip() for c in choices]
        gold = _answer_letter(rec, choices, path, line)
        if shuffle and seed != 0:
            choices, gold = shuffle_choices(choices, gold, benchmark=benchmark, seed=seed, rid=rid)
        item["question"] = item["problem"]
        item["problem"] = format_choice_problem(item["problem"], choices)
        item["choices"] = choices
        item["answer"] = LETTERS[gold]
        item["grading"] = "choice"
    for key in extra_fields:
        if rec.get(key) is not None:
            item[key] = rec[key]
    return item


def _finish_records(raw: Iterable[tuple[int, dict[str, Any] | InputError]], *, benchmark: str,
                    grading: Grading, shuffle: bool, seed: int, path: str, prepare=None,
                    extra_fields: tuple[str, ...] = ("subject", "level", "solution"),
                    skip_bad: bool = False, stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Validate and convert (line, raw record) pairs; a bad one raises `InputError` naming the
    file, line and field, or with `skip_bad` is skipped and counted in `stats`."""
    stats = stats if stats is not None else ReadStats()
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line, rec in raw:
        try:
            if isinstance(rec, InputError):
                raise rec
            item = _finish_one(rec, line, benchmark=benchmark, grading=grading, shuffle=shuffle, seed=seed,
                               path=path, prepare=prepare, extra_fields=extra_fields)
            if item["id"] in seen:
                raise InputError(f"duplicate id {item['id']!r}", path=path, line=line, field="id")
        except InputError as err:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.reasons.append(str(err))
            continue
        seen.add(item["id"])
        stats.read += 1
        out.append(item)
    if not out:
        raise InputError("no records" + (" (empty file)" if not stats.skipped else
                                         f" left after skipping {stats.skipped} bad ones"), path=path)
    return out


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object (or not
    UTF-8, or holds NaN) comes back as an InputError so the caller can raise it or skip it."""
    for lineno, text in iter_lines(path):
        if isinstance(text, InputError):
            yield lineno, text
            continue
        if not text.strip():
            continue
        try:
            yield lineno, parse_record(text, path=str(path), line=lineno)
        except InputError as err:
            yield lineno, err


def _load_jsonl(path: Path, *, benchmark: str, spec: BenchmarkSpec | None, seed: int,
                skip_bad: bool = False, stats: ReadStats | None = None) -> list[dict]:
    if path.is_dir():
        raise InputError("is a directory, expected a JSONL file", path=str(path))
    return _finish_records(
        _read_lines(path), benchmark=benchmark, grading=spec.grading if spec else "math",
        shuffle=spec.shuffle_choices if spec else False, seed=seed, path=str(path),
        prepare=spec.prepare if spec else None,
        extra_fields=spec.extra_fields if spec else ("subject", "level", "solution"),
        skip_bad=skip_bad, stats=stats)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe of the hub, so offline machines fail in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(source: HubSource, *, benchmark: str, spec: BenchmarkSpec | None, seed: int,
              skip_bad: bool = False, stats: ReadStats | None = None) -> list[dict]:
    """Load a hub dataset through `datasets`; a clear error when offline or missing."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise LongshortError("the `datasets` package is needed for hub benchmarks") from exc
    where = f"hub:{source.dataset}" + (f":{source.config}" if source.config else "") + f"@{source.split}"
    offline_env = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline_env and not _hub_reachable():
        raise LongshortError(
            f"cannot load {where}: the Hugging Face Hub is unreachable (offline); hub datasets need "
            f"network access (or HF_HUB_OFFLINE=1 to use a copy already in the local cache), or put "
            f"the JSONL file in the data directory (--data-dir / ${ENV_DATA_DIR})")
    try:
        ds = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except Exception as exc:  # network, auth, unknown dataset: all user-fixable
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LongshortError(
            f"cannot load {where} ({type(exc).__name__}: {msg[:200]}); hub datasets need network "
            f"access, or put the JSONL file in the data directory (--data-dir / ${ENV_DATA_DIR})"
        ) from None
    raw: list[tuple[int, dict[str, Any]]] = []
    for i, row in enumerate(ds):
        rec = dict(row)
        rec["problem"] = row.get(source.problem_field) or row.get("problem") or row.get("question")
        rec["answer"] = row.get(source.answer_field)
        if spec is None and "####" in str(rec["answer"]):
            rec["answer"] = gsm8k_final_answer(str(rec["answer"]))
        if "id" not in rec:
            rec["id"] = str(row.get("unique_id") or f"{benchmark}-{i}")
        raw.append((i + 1, rec))
    return _finish_records(raw, benchmark=benchmark, grading=spec.grading if spec else "math",
                           shuffle=spec.shuffle_choices if spec else False, seed=seed, path=where,
                           prepare=spec.prepare if spec else None, skip_bad=skip_bad, stats=stats)


def parse_hub_name(name: str) -> HubSource:
    """`hub:DATASET[:CONFIG][@SPLIT]` → HubSource.

    >>> parse_hub_name("hub:openai/gsm8k:main@test")
    HubSource(dataset='openai/gsm8k', config='main', split='test', problem_field='problem', answer_field='answer')
    """
    body = name[len("hub:"):]
    split = "test"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    dataset, _, config = body.partition(":")
    if not dataset:
        raise InputError(f"bad hub benchmark {name!r}; expected hub:DATASET[:CONFIG][@SPLIT]")
    return HubSource(dataset, config or None, split)


def benchmark_spec(name: str) -> BenchmarkSpec | None:
    """The registered spec for a name or alias (case-insensitive), else None."""
    return BENCHMARKS.get(name.strip().lower())


def load_benchmark(name_or_path: str, *, data_dir: str | os.PathLike | None = None,
                   limit: int | None = None, seed: int = 0, skip_bad: bool = False,
                   stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Load a benchmark as records `{id, problem, answer, benchmark, grading, choices?, ...}`.

    `name_or_path`: a registered name (see `known_benchmarks()`), a JSONL path, or
    `hub:DATASET[:CONFIG][@SPLIT]`. `limit` keeps the first N problems (source order).
    `seed` orders multiple-choice options for benchmarks that shuffle them (GPQA).
    A bad record raises `InputError` (file, line, field); with `skip_bad` it is skipped and
    counted in `stats` (a `ReadStats`).
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}", field="limit")
    if not isinstance(name_or_path, str) or not name_or_path.strip():  # not Path("") = the current directory
        raise InputError(f"empty; known: {', '.join(known_benchmarks())}, a JSONL path, or "
                         "hub:DATASET[:CONFIG][@SPLIT]", field="benchmark")
    spec = benchmark_spec(name_or_path)
    if spec is not None:
        records = _load_registered(spec, data_dir=data_dir, seed=seed, skip_bad=skip_bad, stats=stats)
    elif name_or_path.startswith("hub:"):
        records = _load_hub(parse_hub_name(name_or_path), benchmark=name_or_path, spec=None, seed=seed,
                            skip_bad=skip_bad, stats=stats)
    elif _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise InputError("benchmark file not found", path=str(path))
        records = _load_jsonl(path, benchmark=_path_benchmark_name(path), spec=None, seed=seed,
                              skip_bad=skip_bad, stats=stats)
    else:
        raise InputError(
            f"unknown benchmark {name_or_path!r}; known: {', '.join(known_benchmarks())}; "
            "or give a path to a JSONL file with problem/answer fields, or hub:DATASET[:CONFIG][@SPLIT]")
    return records[:limit] if limit is not None else records


def _looks_like_path(s: str) -> bool:
    return s.endswith((".jsonl", ".jsonl.gz", ".json")) or os.sep in s or Path(s).exists()


def _path_benchmark_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _load_registered(spec: BenchmarkSpec, *, data_dir, seed: int, skip_bad: bool = False,
                     stats: ReadStats | None = None) -> list[dict[str, Any]]:
    root = resolve_data_dir(data_dir)
    if root is not None and (root / spec.filename).exists():
        return _load_jsonl(root / spec.filename, benchmark=spec.name, spec=spec, seed=seed,
                           skip_bad=skip_bad, stats=stats)
    looked = str(root / spec.filename) if root is not None else (
        f"no data directory (use --data-dir or ${ENV_DATA_DIR}; ../shared/benchmarks not found)")
    if spec.hub is None:
        raise InputError(f"benchmark file for {spec.name!r} not found and it has no hub copy",
                         path=looked)
    try:
        return _load_hub(spec.hub, benchmark=spec.name, spec=spec, seed=seed, skip_bad=skip_bad, stats=stats)
    except LongshortError as exc:
        raise LongshortError(f"benchmark {spec.name!r}: file not found ({looked}) and {exc}") from None
