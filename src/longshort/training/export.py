"""The cold-start SFT sets in other trainers' formats (docs/training.md, "Exporting the cold-start sets").

Our records (`longshort coldstart`, docs/architecture.md) are ``{prompt: [system, user],
assistant_prefix, completion}``: the role *continues* its assistant message, which already holds
the earlier turns (`protocol.render_input`). TRL's conversational prompt–completion form cannot say
that (checked against TRL 1.16's `data_utils.apply_chat_template` and `SFTTrainer`): a prompt that
ends in an assistant message is continued (`continue_final_message`) only by
`maybe_apply_chat_template`, and even there the completion is rendered as a *new* assistant message
(the completion starts with the template's end-of-message and a new assistant header), while
`SFTTrainer` renders the prompt with `add_generation_prompt=True`, which closes that message. So the
sets are exported as rendered text, for one model's chat template and tokenizer:

- ``trl``: TRL's standard (not conversational) prompt–completion form, ``{id, prompt, completion}``
  with prompt = ``chat_template(prompt, add_generation_prompt=True) + assistant_prefix`` and
  completion = the turn + the EOS text. `datasets.load_dataset("json", ...)` reads it and
  `SFTTrainer` prepares it as it is (no formatting function, no conversion).
- ``llamafactory``: LLaMA-Factory's alpaca format, ``{id, instruction, output}`` (instruction = the
  same rendered prompt, output = turn + EOS) and its ``dataset_info.json`` entries; train it with
  ``template: empty`` (the prompt already holds the chat template).

Each example is checked token for token: the sequence and loss mask that TRL's `SFTTrainer`
(tokenise prompt, then prompt + completion; loss after their common prefix) and LLaMA-Factory
(prompt and response encoded apart without special tokens) would build are compared with
`longshort.training.sft.tokenize_example`, what `longshort sft` trains on; differences are counted
per role and format in ``export.json``. Examples longer than ``max_length`` tokens are left out,
as `longshort sft` drops them (TRL and LLaMA-Factory would cut them instead).

`export_sets(records_by_role, tokenizers, ...) -> (files, manifest)`; `write_export(out, files)`
writes them, refusing to replace an existing file that holds something else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from longshort.engines.base import render_chat
from longshort.errors import InputError, LongshortError
from longshort.training.sft import check_sft_record, tokenize_example

FORMATS = ("trl", "llamafactory")
ROLES = ("long", "short")
#: What LLaMA-Factory must be told to train on these files as `longshort sft` does.
LLAMAFACTORY_ARGS = {"template": "empty", "train_on_prompt": False, "packing": False}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: ids of examples whose tokens differ, kept in export.json (the count is always complete)
MAX_LISTED = 20


# --------------------------------------------------------------------------- reading


def read_sft_inputs(paths: Sequence[str | os.PathLike], *, skip_bad: bool = False
                    ) -> tuple[dict[str, list[dict[str, Any]]], list[str], int]:
    """Records by role from `longshort coldstart` outputs: a directory (its sft_long.jsonl and
    sft_short.jsonl) or SFT JSONL files. Returns (records by role, files read, bad records
    skipped). A bad record is an `InputError` naming file, line and field (skipped and counted
    with `skip_bad`)."""
    from longshort.io import ReadStats, iter_jsonl

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [p / f"sft_{r}.jsonl" for r in ROLES if (p / f"sft_{r}.jsonl").is_file()]
            if not found:
                raise InputError("holds no sft_long.jsonl or sft_short.jsonl (a `longshort coldstart` "
                                 "output directory)", path=str(p))
            files += found
        else:
            files.append(p)
    by_role: dict[str, list[dict[str, Any]]] = {r: [] for r in ROLES}
    skipped = 0
    for f in dict.fromkeys(files):
        stats = ReadStats()
        for line, rec in iter_jsonl(f, required=["prompt", "completion"], skip_bad=skip_bad, stats=stats,
                                    with_lines=True):
            try:
                check_sft_record(rec, str(f), line)
                if rec.get("role") not in ROLES:
                    raise InputError(f"expected one of {', '.join(map(repr, ROLES))}", path=str(f), line=line,
                                     field="role")
            except InputError:
                if not skip_bad:
                    raise
                skipped += 1
                continue
            by_role[rec["role"]].append(rec)
        skipped += stats.skipped
    if not any(by_role.values()):
        raise InputError("no SFT records" + (f" left after skipping {skipped} bad one(s)" if skipped else ""),
                         path=", ".join(map(str, dict.fromkeys(files))))
    return by_role, [str(f) for f in dict.fromkeys(files)], skipped


# --------------------------------------------------------------------------- rendering + checks


def _special_affixes(tok: Any) -> tuple[list[int], list[int]]:
    """The ids a plain ``tok(text)`` call adds before and after the text (e.g. a BOS)."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def trl_tokens(tok: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) as TRL's `SFTTrainer` builds them for a standard
    prompt–completion example: ``tok(prompt)`` and ``tok(prompt + completion)`` (special tokens
    added as the tokenizer does), the completion starting where the two diverge."""
    p_ids = tok(prompt)["input_ids"]
    ids = tok(prompt + completion)["input_ids"]
    n = len(os.path.commonprefix([p_ids, ids]))  # works on any sequences, lists of ids too
    return ids, [0] * n + [1] * (len(ids) - n)


def llamafactory_tokens(tok: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, loss mask) as LLaMA-Factory's supervised processor builds them under
    ``template: empty``: prompt and response encoded apart, without special tokens."""
    p_ids = tok.encode(prompt, add_special_tokens=False)
    c_ids = tok.encode(completion, add_special_tokens=False)
    return p_ids + c_ids, [0] * len(p_ids) + [1] * len(c_ids)


def export_role(records: Iterable[dict[str, Any]], tok: Any, *, max_length: int,
                formats: Sequence[str] = FORMATS) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """One role's records → (TRL rows, LLaMA-Factory rows, stats). Rows of examples longer than
    `max_length` tokens are left out (as `longshort sft` drops them); every kept row is compared
    token for token with what `longshort sft` trains on."""
    if tok.eos_token is None or tok.eos_token_id is None:
        raise LongshortError("the tokenizer has no EOS token; `longshort sft` ends each turn with one")
    head, tail = _special_affixes(tok)
    head_text = tok.decode(head) if head else ""
    trl_rows: list[dict[str, Any]] = []
    lf_rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"examples": 0, "exported": 0, "dropped_over_max_length": 0, "longest_tokens": 0,
                             "mismatches": {f: 0 for f in formats}, "mismatched_ids": {f: [] for f in formats}}
    for k, rec in enumerate(records):
        stats["examples"] += 1
        rid = str(rec.get("id", k))
        ours = tokenize_example(tok, rec, add_eos=True)
        if len(ours["input_ids"]) > max_length:
            stats["dropped_over_max_length"] += 1
            continue
        stats["exported"] += 1
        stats["longest_tokens"] = max(stats["longest_tokens"], len(ours["input_ids"]))
        prompt = render_chat(tok, rec["prompt"], rec.get("assistant_prefix", ""))
        completion = rec["completion"] + tok.eos_token
        expected = (ours["input_ids"], ours["completion_mask"])
        if "trl" in formats:
            # tok(prompt) adds the tokenizer's own leading specials (a BOS) again: leave them to it
            trl_prompt = prompt[len(head_text):] if head_text and prompt.startswith(head_text) else prompt
            trl_rows.append({"id": rid, "prompt": trl_prompt, "completion": completion})
            if tail or trl_tokens(tok, trl_prompt, completion) != expected:
                _mismatch(stats, "trl", rid)
        if "llamafactory" in formats:
            lf_rows.append({"id": rid, "instruction": prompt, "output": completion})
            if llamafactory_tokens(tok, prompt, completion) != expected:
                _mismatch(stats, "llamafactory", rid)
    return trl_rows, lf_rows, stats


def _mismatch(stats: dict[str, Any], fmt: str, rid: str) -> None:
    stats["mismatches"][fmt] += 1
    if len(stats["mismatched_ids"][fmt]) < MAX_LISTED:
        stats["mismatched_ids"][fmt].append(rid)


# --------------------------------------------------------------------------- the export


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def check_options(formats: Sequence[str], name: str) -> list[str]:
    """The formats (in FORMATS order) if they and `name` are valid, else a `LongshortError`."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise LongshortError(f"unknown --format {unknown[0]!r}; expected {' or '.join(FORMATS)}" if unknown
                             else "no --format given")
    if not isinstance(name, str) or not _NAME.match(name):
        raise LongshortError(f"bad --name {name!r}: letters, digits, '_', '.', '-' (a LLaMA-Factory dataset name)")
    return [f for f in FORMATS if f in formats]


def planned_files(roles: Iterable[str], formats: Sequence[str], name: str) -> list[str]:
    """The relative paths `export_sets` writes for these roles and formats (export.json last)."""
    rels = []
    for role in roles:
        if "trl" in formats:
            rels.append(f"trl/sft_{role}.jsonl")
        if "llamafactory" in formats:
            rels.append(f"llamafactory/{name}_{role}.jsonl")
    if "llamafactory" in formats:
        rels.append("llamafactory/dataset_info.json")
    return rels + ["export.json"]


def check_export_paths(out: str | os.PathLike, rels: Iterable[str], *, inputs: Sequence[str] = ()) -> None:
    """Before any tokenizer loads: every path the export will write must be writable and none an
    input (`check_output_file`), and an existing dataset_info.json must be a JSON object (ours are
    added to it). Whether an existing file holds the same text is known only once the examples are
    rendered (`write_export`)."""
    from longshort.io import check_output_dir, check_output_file

    root = check_output_dir(out)
    for rel in rels:
        p = check_output_file(root / rel, inputs=inputs)
        if rel.endswith("dataset_info.json") and p.exists():
            _merge_dataset_info(p, {})


def export_sets(records_by_role: dict[str, list[dict[str, Any]]], tokenizers: dict[str, Any],
                models: dict[str, str], *, formats: Sequence[str] = FORMATS, max_length: int = 4096,
                name: str = "longshort", inputs: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, Any]]:
    """(files: relative path → text, manifest). `tokenizers[role]` renders and checks that role's
    records (the model it will be trained from, named `models[role]`). Layout: ``trl/sft_{role}.jsonl``,
    ``llamafactory/{name}_{role}.jsonl`` + ``llamafactory/dataset_info.json``, ``export.json``."""
    formats = check_options(formats, name)
    files: dict[str, str] = {}
    roles: dict[str, Any] = {}
    dataset_info: dict[str, Any] = {}
    for role in ROLES:
        recs = records_by_role.get(role) or []
        if not recs:
            continue
        trl_rows, lf_rows, stats = export_role(recs, tokenizers[role], max_length=max_length, formats=formats)
        if not stats["exported"]:
            raise LongshortError(f"all {stats['examples']} {role} examples are longer than max_length="
                                 f"{max_length} tokens; raise --max-length")
        role_files = {}
        if "trl" in formats:
            role_files["trl"] = f"trl/sft_{role}.jsonl"
            files[role_files["trl"]] = _jsonl(trl_rows)
        if "llamafactory" in formats:
            role_files["llamafactory"] = f"llamafactory/{name}_{role}.jsonl"
            files[role_files["llamafactory"]] = _jsonl(lf_rows)
            dataset_info[f"{name}_{role}"] = {"file_name": f"{name}_{role}.jsonl", "formatting": "alpaca",
                                              "columns": {"prompt": "instruction", "response": "output"}}
        roles[role] = {"model": models[role], "eos_token": tokenizers[role].eos_token, "files": role_files, **stats}
    if not roles:
        raise LongshortError("no SFT records to export")
    if "llamafactory" in formats:
        files["llamafactory/dataset_info.json"] = json.dumps(dataset_info, indent=2, ensure_ascii=False) + "\n"
    longest = max(r["longest_tokens"] for r in roles.values())
    manifest = {
        "inputs": list(inputs), "formats": formats, "max_length": max_length, "roles": roles,
        "longest_tokens": longest,
        "trl": {"sft_config": {"completion_only_loss": True, "packing": False, "max_length": max_length},
                "note": "standard prompt-completion: datasets.load_dataset('json', data_files=...), then "
                        "SFTTrainer(train_dataset=...) as it is"} if "trl" in formats else None,
        "llamafactory": {"dataset_dir": "llamafactory", "datasets": list(dataset_info),
                         "train_args": {**LLAMAFACTORY_ARGS, "cutoff_len": max_length}}
        if "llamafactory" in formats else None,
    }
    files["export.json"] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    return files, manifest


def _merge_dataset_info(path: Path, ours: dict[str, Any]) -> str:
    """The dataset_info.json to write at `path`: ours, added to the entries already there (a
    LLaMA-Factory data directory holds other datasets). An entry of ours that is there with other
    content is refused."""
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, a 4,300-digit integer, nested too deep
        raise InputError(f"exists and is not JSON ({exc}); will not overwrite it", path=str(path)) from None
    if not isinstance(existing, dict):
        raise InputError("exists and is not a JSON object; will not overwrite it", path=str(path))
    for key, value in ours.items():
        if key in existing and existing[key] != value:
            raise InputError("already defines this dataset differently; will not overwrite it (delete the entry "
                             "or choose another --name)", path=str(path), field=key)
    return json.dumps({**existing, **ours}, indent=2, ensure_ascii=False) + "\n"


def write_export(out: str | os.PathLike, files: dict[str, str], *, inputs: Sequence[str] = ()) -> dict[str, str]:
    """Write `files` under `out` atomically. Every path is checked first, nothing is written if
    one fails: an existing file must already hold exactly the same text (then it is left as it is),
    except dataset_info.json, to which our entries are added. Returns path → "written"/"unchanged"."""
    from longshort.io import check_output_dir, check_output_file, write_text_atomic

    root = check_output_dir(out)
    plan: list[tuple[Path, str | None]] = []
    for rel, text in files.items():
        p = check_output_file(root / rel, inputs=inputs)
        if not p.exists():
            plan.append((p, text))
            continue
        try:
            before = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            before = None
        if rel.endswith("dataset_info.json"):
            text = _merge_dataset_info(p, json.loads(text))
        elif before != text:
            raise InputError("already exists with other content; will not overwrite it (delete it or "
                             "choose another --out)", path=str(p))
        plan.append((p, None if before == text else text))
    done = {}
    for p, text in plan:
        if text is not None:
            write_text_atomic(p, text)
        done[str(p)] = "unchanged" if text is None else "written"
    return done
