"""A table-driven corpus of bad inputs, as a careless or hostile user would give them (issue 11).

Every case runs the real `longshort` entry point in-process and asserts what a user expects:
- a non-zero exit;
- exactly one line on stderr, `error: ...`, naming the file (and line) or the field/option;
- no traceback anywhere;
- nothing already written changed: every file under the case's directory hashes the same
  before and after (and no new file or directory appears);
- no model or tokenizer was loaded (the checks come first: loading one here fails the case);
- bounded time (a hang detector, not a speed target).

Cases are generated from tables: each JSONL-reading command × each malformed-file variant, each
command × each bad field, each output-writing command × each output it must refuse, count
options ≤ 0 and non-numbers, recipes (alias bombs, deep nesting, duplicate keys, unknown
names) and `grade`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from longshort.cli import main

BOUND_S = 60.0  # a hang detector on a busy CI machine; bad input is refused in well under 1 s

# ----------------------------------------------------------------------------- good records

PROBLEM = {"id": "a", "problem": "What is 1 + 1?", "answer": "2"}
TRACE = {"id": "a", "problem": "What is 1 + 1?", "answer": "2",
         "response": "<think>\nOne plus one.\n\nSo the answer is 2.\n</think>\nThe answer is \\boxed{2}."}
SCORED = {"id": "a", "problem": "What is 1 + 1?", "answer": "2",
          "response": "<think>\nOne plus one is 2.\n</think>\nThe answer is \\boxed{2}.",
          "thoughts": [{"start": 1, "end": 1, "type": "computation", "category": "computation",
                        "text": "One plus one is 2.", "score": 0.5, "e": 0.5}]}
SFT = {"id": "a", "role": "long", "problem": "What is 1 + 1?",
       "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 1 + 1?"}],
       "assistant_prefix": "", "completion": "<think>One plus one.</think>"}
CHUNKED = {**TRACE, "steps": ["One plus one.", "So the answer is 2."],
           "thoughts": [{"start": 1, "end": 2, "type": "computation", "text": "One plus one.\n\nSo 2."}],
           "chunk_method": "heuristic", "flags": []}
DIALOGUE = {"id": "a", "problem_id": "a", "sample": 0, "problem": "What is 1 + 1?", "mode": "collab",
            "turns": [], "final_answer": "2", "finished": True}


def line(rec: dict[str, Any]) -> str:
    return json.dumps(rec) + "\n"


# ----------------------------------------------------------------------------- commands

# name -> (argv with {in} for the input file and {d} for the case directory, good record)
READERS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "solve": (["solve", "--file", "{in}"], PROBLEM),
    "solve-out": (["solve", "--file", "{in}", "--out", "{d}/o.jsonl"], PROBLEM),
    "eval": (["eval", "--benchmark", "{in}", "--out", "{d}/run", "--long", "tiny-random",
              "--short", "tiny-random"], PROBLEM),
    "chunk": (["chunk", "--input", "{in}", "--out", "{d}/c.jsonl"], TRACE),
    "score": (["score", "--input", "{in}", "--out", "{d}/s.jsonl", "--model", "tiny-random"], TRACE),
    "score-dry": (["score", "--input", "{in}", "--out", "{d}/s.jsonl", "--model", "tiny-random",
                   "--dry-run"], TRACE),
    "coldstart": (["coldstart", "--input", "{in}", "--out", "{d}/cs"], SCORED),
    "rl": (["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", "{in}",
            "--out", "{d}/rl"], PROBLEM),
    "sft": (["sft", "--role", "long", "--data", "{in}", "--model", "tiny-random", "--out", "{d}/sft"], SFT),
}
# how each says that nothing is left to work on
NO_RECORDS = {k: "no records" for k in READERS} | {"sft": "no training examples"}
# commands whose records carry problem/answer fields (sft records are chat prompts)
PROBLEM_READERS = [k for k in READERS if k != "sft"]


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # name -> str | bytes | special marker
    expect: list[str] = field(default_factory=list)  # substrings of the error line ({d} allowed)
    root_skip: bool = False  # permissions mean nothing to root


DIR, FIFO = object(), object()


@dataclass(frozen=True)
class Link:
    target: str


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


# malformed-file variants, valid for every JSONL reader: name -> (file name, content, expect)
def file_variants(good: dict[str, Any]) -> dict[str, tuple[str, Any, list[str]]]:
    g = line(good)
    return {
        "non_utf8": ("in.jsonl", g.encode() + b'{"id": "b", "problem": "caf\xe9 cr\xe8me"}\n', ["in.jsonl:2", "UTF-8"]),
        "non_utf8_line1": ("in.jsonl", b"\xff\xfe{}\n" + g.encode(), ["in.jsonl:1", "UTF-8"]),
        "latin1_whole": ("in.jsonl", g.replace("What", "Qu\u00e9").encode("latin-1"), ["in.jsonl:1", "UTF-8"]),
        "utf16": ("in.jsonl", g.encode("utf-16"), ["in.jsonl:1"]),
        "malformed": ("in.jsonl", g + '{"problem": \n', ["in.jsonl:2", "malformed JSON"]),
        "trailing_comma": ("in.jsonl", g + '{"a": 1,}\n', ["in.jsonl:2", "malformed JSON"]),
        "single_quotes": ("in.jsonl", g + "{'problem': 'x'}\n", ["in.jsonl:2", "malformed JSON"]),
        "array_line": ("in.jsonl", g + "[1, 2, 3]\n", ["in.jsonl:2", "object"]),
        "null_line": ("in.jsonl", g + "null\n", ["in.jsonl:2", "object"]),
        "string_line": ("in.jsonl", g + '"hello"\n', ["in.jsonl:2", "object"]),
        "number_line": ("in.jsonl", g + "42\n", ["in.jsonl:2", "object"]),
        "nan": ("in.jsonl", g + '{"id": "b", "answer": NaN}\n', ["in.jsonl:2", "NaN"]),
        "infinity": ("in.jsonl", g + '{"id": "b", "answer": -Infinity}\n', ["in.jsonl:2", "Infinity"]),
        "deep_json": ("in.jsonl", g + "[" * 100_000 + "\n", ["in.jsonl:2"]),
        "deep_object": ("in.jsonl", g + '{"a":' * 50_000 + "\n", ["in.jsonl:2"]),
        "bom_then_bad": ("in.jsonl", b"\xef\xbb\xbf" + g.encode() + b"{oops\n", ["in.jsonl:2"]),
        "crlf_then_bad": ("in.jsonl", g.replace("\n", "\r\n") + "{oops\r\n", ["in.jsonl:2"]),
        "duplicate_key": ("in.jsonl", g + '{"id": "b", "problem": "x", "problem": "y"}\n', ["in.jsonl:2", "twice"]),
        "concatenated": ("in.jsonl", g.strip() + g, ["in.jsonl:1", "malformed JSON"]),
        "empty_file": ("in.jsonl", "", ["in.jsonl", "no "]),
        "blank_lines_only": ("in.jsonl", "\n\n   \n\t\n", ["in.jsonl", "no "]),
        "missing_file": ("other.jsonl", g, ["in.jsonl", "not found"]),
        "directory": ("in.jsonl", DIR, ["in.jsonl", "directory"]),
        "fifo": ("in.jsonl", FIFO, ["in.jsonl", "not a regular file"]),
        "dangling_symlink": ("in.jsonl", Link("nowhere.jsonl"), ["in.jsonl", "not found"]),
        "gz_truncated": ("in.jsonl.gz", _gz(g * 50)[:40], ["in.jsonl.gz", "cannot read"]),
        "gz_not_gzip": ("in.jsonl.gz", g, ["in.jsonl.gz", "cannot read"]),
        "huge_integer": ("in.jsonl", g + '{"id": "b", "answer": ' + "1" * 5000 + "}\n", ["in.jsonl:2", "digits"]),
    }


def field_variants(good: dict[str, Any]) -> dict[str, tuple[dict[str, Any] | None, str, list[str]]]:
    """Bad values of the fields problem readers use: name -> (record on line 2, expect)."""
    drop = {k: v for k, v in good.items() if k != "problem"}
    return {
        "problem_dict": ({**good, "id": "b", "problem": {"text": "What is 2?"}}, ["in.jsonl:2", "problem"]),
        "problem_list": ({**good, "id": "b", "problem": ["What", "is", "2?"]}, ["in.jsonl:2", "problem"]),
        "problem_number": ({**good, "id": "b", "problem": 17}, ["in.jsonl:2", "problem"]),
        "problem_bool": ({**good, "id": "b", "problem": True}, ["in.jsonl:2", "problem"]),
        "problem_null": ({**good, "id": "b", "problem": None}, ["in.jsonl:2", "problem"]),
        "problem_blank": ({**good, "id": "b", "problem": " \n\t "}, ["in.jsonl:2", "problem"]),
        "problem_missing": ({**drop, "id": "b"}, ["in.jsonl:2", "problem"]),
        "answer_list": ({**good, "id": "b", "answer": ["2", "3"]}, ["in.jsonl:2", "answer"]),
        "answer_dict": ({**good, "id": "b", "answer": {"value": 2}}, ["in.jsonl:2", "answer"]),
        "answer_bool": ({**good, "id": "b", "answer": False}, ["in.jsonl:2", "answer"]),
        "answer_blank": ({**good, "id": "b", "answer": "   "}, ["in.jsonl:2", "answer"]),
        "id_list": ({**good, "id": ["b"]}, ["in.jsonl:2", "id"]),
        "id_dict": ({**good, "id": {"k": "b"}}, ["in.jsonl:2", "id"]),
        "id_bool": ({**good, "id": True}, ["in.jsonl:2", "id"]),
        "duplicate_id": ({**good}, ["in.jsonl:2", "duplicate id"]),
        "duplicate_id_int_vs_str": ({**good, "id": 7}, ["in.jsonl:3", "duplicate id"]),
    }


def _reader_argv(cmd: str) -> list[str]:
    return list(READERS[cmd][0])


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for cmd, (argv, good) in READERS.items():
        for name, (fname, content, expect) in file_variants(good).items():
            a = [x.replace("{in}", "{d}/in.jsonl.gz" if fname.endswith(".gz") else "{d}/in.jsonl") for x in argv]
            cases.append(Case(f"{cmd}-{name}", a, {fname: content}, expect))
        # every line bad and --skip-bad: nothing left is still an error, and nothing is written
        a = [x.replace("{in}", "{d}/in.jsonl") for x in argv] + ["--skip-bad"]
        cases.append(Case(f"{cmd}-all_bad_skip_bad", a, {"in.jsonl": "{oops\n[1]\nnull\n"}, ["in.jsonl", NO_RECORDS[cmd]]))
    for cmd in PROBLEM_READERS:
        argv, good = READERS[cmd]
        a = [x.replace("{in}", "{d}/in.jsonl") for x in argv]
        for name, (rec, expect) in field_variants(good).items():
            if cmd in ("chunk", "score", "score-dry") and name.startswith("problem_") and name in (
                    "problem_null",):
                expect = ["in.jsonl:2", "problem"]
            content = line(good) + line(rec)
            if name == "duplicate_id_int_vs_str":
                content = line({**good, "id": "7"}) + line({**good, "id": "x"}) + line(rec)
            cases.append(Case(f"{cmd}-{name}", a, {"in.jsonl": content}, expect))
    # a 5 MB problem is refused up front, naming file:line (before the model is loaded)
    for cmd in ("solve", "eval", "rl", "coldstart", "chunk", "score"):
        argv, good = READERS[cmd]
        a = [x.replace("{in}", "{d}/in.jsonl") for x in argv]
        big = {**good, "id": "b", "problem": "Compute 1 + 1. " * 350_000}
        cases.append(Case(f"{cmd}-problem_5MB", a, {"in.jsonl": line(good) + line(big)}, ["in.jsonl:2", "problem", "too long"]))
    for cmd in ("solve", "eval", "rl", "coldstart", "chunk", "score"):
        argv, good = READERS[cmd]
        a = [x.replace("{in}", "{d}/in.jsonl") for x in argv]
        bad = {**good, "id": "b", "problem": "What is \udcff?"}
        cases.append(Case(f"{cmd}-problem_lone_surrogate", a, {"in.jsonl": line(good) + line(bad)},
                          ["in.jsonl:2", "problem", "Unicode"]))
    cases.append(Case("solve-argument_undecodable_bytes", ["solve", "What is \udcff?"], {}, ["PROBLEM", "Unicode"]))
    cases.append(Case("solve-argument_5MB", ["solve", "What is 1 + 1? " * 350_000], {}, ["PROBLEM", "too long"]))
    # eval records: choices of the wrong shape, answer that is no choice
    a = [x.replace("{in}", "{d}/in.jsonl") for x in READERS["eval"][0]]
    for name, rec, exp in [
        ("choices_string", {**PROBLEM, "choices": "a, b, c"}, "choices"),
        ("choices_one", {**PROBLEM, "choices": ["only"]}, "choices"),
        ("choices_eleven", {**PROBLEM, "choices": [str(i) for i in range(11)]}, "choices"),
        ("choices_empty_entry", {**PROBLEM, "choices": ["a", " "]}, "choices"),
        ("choices_nested", {**PROBLEM, "choices": [["a"], ["b"]]}, "choices"),
        ("gold_not_a_choice", {**PROBLEM, "answer": "Z", "choices": ["1", "2"]}, "answer"),
        ("gold_letter_out_of_range", {**PROBLEM, "answer": "D", "choices": ["1", "2"]}, "answer"),
    ]:
        cases.append(Case(f"eval-{name}", a, {"in.jsonl": line(rec)}, ["in.jsonl:1", exp]))
    # sft records: the chat fields
    a = [x.replace("{in}", "{d}/in.jsonl") for x in READERS["sft"][0]]
    for name, rec, exp in [
        ("prompt_string", {**SFT, "prompt": "hello"}, "prompt"),
        ("prompt_empty", {**SFT, "prompt": []}, "prompt"),
        ("prompt_bad_message", {**SFT, "prompt": [{"role": "user"}]}, "prompt"),
        ("completion_list", {**SFT, "completion": ["x"]}, "completion"),
        ("completion_missing", {k: v for k, v in SFT.items() if k != "completion"}, "completion"),
        ("prefix_number", {**SFT, "assistant_prefix": 3}, "assistant_prefix"),
        ("other_role_only", {**SFT, "role": "short"}, "role"),
    ]:
        cases.append(Case(f"sft-{name}", a, {"in.jsonl": line(SFT) + line(rec) if exp != "role" else line(rec)},
                          ["in.jsonl", exp]))
    # coldstart thoughts of the wrong shape
    a = [x.replace("{in}", "{d}/in.jsonl") for x in READERS["coldstart"][0]]
    for name, thoughts, exp in [
        ("thoughts_numbers", [1, 2, 3], "thoughts.0"),
        ("thoughts_strings", ["a", "b"], "thoughts.0"),
        ("thoughts_dict", {"text": "x", "score": 1}, "thoughts"),
        ("thoughts_no_score", [{"text": "x"}], "thoughts"),
        ("thought_text_number", [{"text": 5, "score": 0.1}], "thoughts.0.text"),
        ("thought_score_string", [{"text": "x", "score": "high"}], "thoughts.0.score"),
        ("thought_score_bool", [{"text": "x", "score": True}], "thoughts.0.score"),
        ("thoughts_empty", [], "thoughts"),
    ]:
        cases.append(Case(f"coldstart-{name}", a, {"in.jsonl": line(SCORED) + line({**SCORED, "id": "b", "thoughts": thoughts})},
                          ["in.jsonl:2", exp]))
    cases += output_cases() + option_cases() + recipe_cases() + grade_cases() + misc_cases() + held_out_cases()
    return cases


# ----------------------------------------------------------------------------- outputs


def output_cases() -> list[Case]:
    """Outputs a run must refuse, leaving them untouched: name -> (content of the existing out)."""
    cases: list[Case] = []
    appenders = {  # command -> (argv with {out}, input file name and content, a record of its own output)
        "chunk": (["chunk", "--input", "{d}/in.jsonl", "--out", "{out}"], line(TRACE), CHUNKED),
        "score": (["score", "--input", "{d}/in.jsonl", "--out", "{out}", "--model", "tiny-random"],
                  line(TRACE), {**CHUNKED, "importance": {}}),
        "score-dry": (["score", "--input", "{d}/in.jsonl", "--out", "{out}", "--model", "tiny-random", "--dry-run"],
                      line(TRACE), {**CHUNKED, "importance": {}}),
        "solve": (["solve", "--file", "{d}/in.jsonl", "--out", "{out}"], line(PROBLEM), DIALOGUE),
    }
    for cmd, (argv, inp, own) in appenders.items():
        o1, o2 = line(own), line({**own, "id": "z"})
        variants: dict[str, tuple[str, Any, list[str]]] = {
            "notes_txt": ("notes.txt", "my notes\nsecond line\n", ["notes.txt:1"]),
            "notes_txt_no_newline": ("notes.txt", "my notes, one line, no newline", ["notes.txt:1"]),
            "notes_txt_brace": ("notes.txt", "{ not json at all }\n", ["notes.txt:1"]),
            "blank_middle": ("o.jsonl", o1 + "\n" + o2, ["o.jsonl:2", "blank"]),
            "whitespace_middle": ("o.jsonl", o1 + "   \n" + o2, ["o.jsonl:2", "blank"]),
            "torn_middle": ("o.jsonl", o1 + '{"id": "x", "thou\n' + o2, ["o.jsonl:2"]),
            "non_utf8_middle": ("o.jsonl", o1.encode() + b"\xff\xfe\n" + o2.encode(), ["o.jsonl:2", "UTF-8"]),
            "array_middle": ("o.jsonl", o1 + "[1]\n" + o2, ["o.jsonl:2"]),
            "no_id": ("o.jsonl", o1 + line({k: v for k, v in own.items() if k != "id"}), ["o.jsonl:2", "id"]),
            "unrelated_jsonl": ("o.jsonl", line({"id": 1, "name": "alice"}) + line({"id": 2, "name": "bob"}),
                                ["o.jsonl:1", "not this command's output"]),
            "other_stage_output": ("o.jsonl", line(PROBLEM), ["o.jsonl:1", "not this command's output"]),
            "directory": ("o.jsonl", DIR, ["o.jsonl", "directory"]),
            "fifo": ("o.jsonl", FIFO, ["o.jsonl", "not a regular file"]),
            "dangling_symlink": ("o.jsonl", Link("gone/nowhere.jsonl"), ["o.jsonl", "symbolic link"]),
            "is_input": ("in.jsonl", None, ["in.jsonl", "input"]),
            "symlink_to_input": ("o.jsonl", Link("in.jsonl"), ["o.jsonl", "input"]),
            "parent_is_file": ("blocker/o.jsonl", None, ["blocker", "not a directory"]),
            "huge_integer_middle": ("o.jsonl", o1 + '{"id": ' + "7" * 5000 + "}\n" + o2, ["o.jsonl:2"]),
        }
        for name, (oname, content, expect) in variants.items():
            files: dict[str, Any] = {"in.jsonl": inp}
            if name == "parent_is_file":
                files["blocker"] = "a file, not a directory\n"
            elif content is not None:
                files[oname] = content
            a = [x.replace("{out}", "{d}/" + oname) for x in argv]
            cases.append(Case(f"out-{cmd}-{name}", a, files, expect))
        # torn middle + --skip-bad is fine to go on with, but an unrelated file with --skip-bad is not
        a = [x.replace("{out}", "{d}/notes.txt") for x in argv] + ["--skip-bad"]
        cases.append(Case(f"out-{cmd}-notes_txt_skip_bad", a, {"in.jsonl": inp, "notes.txt": "my notes\nmore\n"},
                          ["notes.txt", "no records of this command's output"]))
        cases.append(Case(f"out-{cmd}-readonly_file", [x.replace("{out}", "{d}/o.jsonl") for x in argv],
                          {"in.jsonl": inp, "o.jsonl": ("RO", o1)}, ["o.jsonl", "not writable"], root_skip=True))
    # whole-file and directory outputs
    synth = ["synth", "--n", "2", "--out"]
    cases += [
        Case("out-synth-existing_file", synth + ["{d}/s.jsonl"], {"s.jsonl": line(TRACE)}, ["s.jsonl", "already exists"]),
        Case("out-synth-notes", synth + ["{d}/notes.txt"], {"notes.txt": "keep me\n"}, ["notes.txt", "already exists"]),
        Case("out-synth-directory", synth + ["{d}/sd"], {"sd": DIR}, ["sd", "directory"]),
        Case("out-synth-parent_is_file", synth + ["{d}/blocker/s.jsonl"], {"blocker": "x\n"}, ["blocker", "not a directory"]),
        Case("out-synth-fifo", synth + ["{d}/f"], {"f": FIFO}, ["f", "not a regular file"]),
        Case("out-coldstart-existing_file", ["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/cs"],
             {"in.jsonl": line(SCORED), "cs": "a file\n"}, ["cs", "not a directory"]),
        Case("out-coldstart-parent_is_file", ["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/b/cs"],
             {"in.jsonl": line(SCORED), "b": "a file\n"}, ["b", "not a directory"]),
        Case("out-sft-existing_file", ["sft", "--role", "long", "--data", "{d}/in.jsonl", "--model", "tiny-random",
                                       "--out", "{d}/m"], {"in.jsonl": line(SFT), "m": "weights?\n"}, ["m", "not a directory"]),
        Case("out-rl-existing_file", ["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", "{d}/in.jsonl",
                                      "--out", "{d}/m"], {"in.jsonl": line(PROBLEM), "m": "x\n"}, ["m", "not a directory"]),
        Case("out-eval-existing_file", ["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run"],
             {"in.jsonl": line(PROBLEM), "run": "not a dir\n"}, ["run", "not a directory"]),
        Case("out-eval-torn_middle_predictions", ["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run",
                                                  "--long", "tiny-random", "--short", "tiny-random"],
             {"in.jsonl": line(PROBLEM), "run/predictions.jsonl": line(DIALOGUE) + "{torn\n" + line({**DIALOGUE, "id": "b"})},
             ["predictions.jsonl:2"]),
        Case("out-eval-foreign_predictions", ["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run",
                                              "--long", "tiny-random", "--short", "tiny-random"],
             {"in.jsonl": line(PROBLEM), "run/predictions.jsonl": line({"id": "a", "x": 1})},
             ["predictions.jsonl:1", "not this command's output"]),
        Case("out-compare-plot_dir", ["compare", "{d}/r", "--plot", "{d}/pd"], {"pd": DIR, "r": DIR}, ["pd", "directory"]),
        Case("out-compare-plot_txt", ["compare", "{d}/r", "--plot", "{d}/p.txt"], {"r": DIR}, ["p.txt", ".png"]),
        Case("out-compare-plot_parent_file", ["compare", "{d}/r", "--plot", "{d}/b/p.png"], {"r": DIR, "b": "x"},
             ["b", "not a directory"]),
        Case("out-compare-missing_run", ["compare", "{d}/nope"], {}, ["nope", "not found"]),
        Case("out-compare-not_a_run", ["compare", "{d}/r"], {"r": DIR}, ["r", "metrics.json"]),
        Case("out-compare-bad_metrics", ["compare", "{d}/r"], {"r/metrics.json": "{bad json"}, ["metrics.json"]),
        Case("out-compare-metrics_not_utf8", ["compare", "{d}/r"], {"r/metrics.json": b"\xff\xfe{}"},
             ["metrics.json", "unreadable"]),
        Case("out-compare-metrics_huge_int", ["compare", "{d}/r"], {"r/metrics.json": '{"benchmark": ' + "9" * 5000 + "}"},
             ["metrics.json", "unreadable"]),
        Case("out-compare-metrics_not_object", ["compare", "{d}/r"], {"r/metrics.json": "[1, 2]"},
             ["metrics.json", "JSON object"]),
    ]
    return cases


# ----------------------------------------------------------------------------- options


def option_cases() -> list[Case]:
    base = {
        "score": (["score", "--input", "{d}/in.jsonl", "--out", "{d}/s.jsonl", "--model", "tiny-random"], line(TRACE)),
        "chunk": (["chunk", "--input", "{d}/in.jsonl", "--out", "{d}/c.jsonl"], line(TRACE)),
        "solve": (["solve", "--file", "{d}/in.jsonl"], line(PROBLEM)),
        "eval": (["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run"], line(PROBLEM)),
        "sft": (["sft", "--role", "long", "--data", "{d}/in.jsonl", "--model", "tiny-random", "--out", "{d}/m"], line(SFT)),
        "rl": (["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", "{d}/in.jsonl", "--out", "{d}/m"],
               line(PROBLEM)),
        "synth": (["synth", "--out", "{d}/s.jsonl"], None),
        "coldstart": (["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/cs"], line(SCORED)),
    }
    counts = {
        "score": ["--limit", "--rollouts", "--max-new-tokens", "--max-context"],
        "chunk": ["--batch", "--max-thoughts"],
        "solve": ["--samples", "--max-turns", "--max-new-tokens"],
        "eval": ["--samples", "--limit", "--max-new-tokens", "--max-turns"],
        "sft": ["--max-steps", "--batch-size", "--grad-accum", "--max-length", "--save-steps"],
        "rl": ["--iterations", "--num-generations", "--batch-size", "--max-steps", "--max-turns"],
        "synth": ["--n"],
    }
    cases = []
    for cmd, opts in counts.items():
        argv, inp = base[cmd]
        files = {"in.jsonl": inp} if inp else {}
        for opt in opts:
            for value in ("0", "-1", "abc", "1.5", ""):
                if value in ("abc", "1.5", "") and opt not in opts[:1]:
                    continue  # non-numbers once per command
                cases.append(Case(f"opt-{cmd}{opt}={value or 'empty'}", argv + [opt, value], files, [opt]))
    floats = [("solve", "--temperature", "-1"), ("solve", "--temperature", "nan"), ("solve", "--temperature", "inf"),
              ("score", "--delta", "-0.5"), ("score", "--delta", "nan"), ("score", "--alpha", "0"),
              ("score", "--alpha", "2"), ("score", "--temperature", "-1"), ("score", "--top-p", "0"),
              ("score", "--top-p", "1.5"), ("eval", "--temperature", "-1"), ("eval", "--grading-timeout", "0"),
              ("sft", "--epochs", "0"), ("sft", "--lr", "-1"), ("sft", "--lr", "nan"), ("rl", "--lr", "0"),
              ("rl", "--temperature", "-2"), ("synth", "--noise", "1.5"), ("synth", "--noise", "-0.1"),
              ("coldstart", "--ratio", "1.5"), ("coldstart", "--ratio", "-1"), ("coldstart", "--max-long-turns", "-1"),
              # infinities and NaN that a `gt=0` / `ge=0` bound lets through
              ("sft", "--lr", "inf"), ("sft", "--epochs", "inf"), ("rl", "--lr", "inf"), ("rl", "--beta", "inf"),
              ("rl", "--partner-server-timeout", "inf"), ("score", "--temperature", "inf"), ("score", "--delta", "inf"),
              ("coldstart", "--threshold", "nan"), ("coldstart", "--threshold", "inf"),
              ("coldstart", "--relative", "inf"), ("eval", "--grading-timeout", "inf"),
              ("eval", "--temperature", "inf"), ("eval", "--grading-timeout", "1e9")]
    for cmd, opt, value in floats:
        argv, inp = base[cmd]
        files = {"in.jsonl": inp} if inp else {}
        cases.append(Case(f"opt-{cmd}{opt}={value}", argv + [opt, value], files, [opt.lstrip("-").split("-")[0]]))
    words = [("solve", "--mode", "medium", "mode"), ("eval", "--mode", "both", "mode"), ("chunk", "--method", "magic", "method"),
             ("score", "--metric", "vibes", "metric"), ("coldstart", "--compressor", "zip", "compressor"),
             ("sft", "--role", "middle", "role"), ("sft", "--precision", "fp8", "precision"), ("rl", "--first", "both", "first"),
             ("synth", "--task", "poetry", "task"), ("eval", "--interval", "wild", "interval"),
             ("solve", "--long", "", "--long"), ("solve", "--long", "no-such-model", "no-such-model")]
    for cmd, opt, value, exp in words:
        argv, inp = base[cmd]
        files = {"in.jsonl": inp} if inp else {}
        if cmd == "sft" and opt == "--role":
            argv = [x if x != "long" else value for x in argv]
            cases.append(Case(f"opt-{cmd}{opt}={value}", argv, files, [exp]))
            continue
        cases.append(Case(f"opt-{cmd}{opt}={value or 'empty'}", argv + [opt, value], files, [exp]))
    cases += [
        Case("opt-solve-both_problem_and_file", ["solve", "x", "--file", "{d}/in.jsonl"], {"in.jsonl": line(PROBLEM)}, ["either"]),
        Case("opt-solve-nothing", ["solve"], {}, ["either"]),
        Case("opt-solve-blank_problem", ["solve", "  \t "], {}, ["empty"]),
        Case("opt-unknown_command", ["sovle", "x"], {}, ["sovle"]),
        Case("opt-unknown_option", ["solve", "x", "--temprature", "1"], {}, ["--temprature"]),
        Case("opt-missing_required", ["chunk", "--input", "{d}/in.jsonl"], {"in.jsonl": line(TRACE)}, ["--out"]),
        Case("opt-coldstart-threshold_and_ratio", ["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/cs",
                                                   "--threshold", "0.1", "--ratio", "0.5"], {"in.jsonl": line(SCORED)}, ["not both"]),
        Case("opt-chunk-gold_without_gold", ["chunk", "--input", "{d}/in.jsonl", "--out", "{d}/c.jsonl", "--method", "gold"],
             {"in.jsonl": line(TRACE)}, ["in.jsonl:1", "gold_thoughts"]),
        Case("opt-eval-unknown_benchmark", ["eval", "--benchmark", "math5000", "--out", "{d}/run"], {}, ["math5000"]),
        Case("opt-eval-missing_benchmark_file", ["eval", "--benchmark", "{d}/nope.jsonl", "--out", "{d}/run"], {},
             ["nope.jsonl", "not found"]),
        Case("opt-eval-baseline_missing", ["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run", "--baseline", "{d}/b"],
             {"in.jsonl": line(PROBLEM)}, ["b", "not found"]),
        Case("opt-eval-data_dir_file", ["eval", "--benchmark", "gsm8k", "--out", "{d}/run", "--data-dir", "{d}/f"],
             {"f": "x"}, ["f", "not found"]),
        Case("opt-sft-config_missing", ["sft", "--role", "long", "--data", "{d}/in.jsonl", "--model", "tiny-random",
                                        "--out", "{d}/m", "--config", "{d}/c.yaml"], {"in.jsonl": line(SFT)}, ["c.yaml", "not found"]),
    ]
    return cases


# ----------------------------------------------------------------------------- recipes


def _bomb() -> str:
    rows = ['    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"    {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "models:\n  engine_options:\n" + "\n".join(rows) + "\n"


def recipe_cases() -> list[Case]:
    check = ["pipeline", "{d}/r.yaml", "--check"]
    recipes = {
        "deep_list": ("name: x\nseed: " + "[" * 5000 + "]" * 5000 + "\n", ["r.yaml:2", "nested"]),
        "deep_mapping": ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n", ["r.yaml", "nested"]),
        "alias_bomb": (_bomb(), ["r.yaml:3", "aliases"]),
        "single_alias": ("name: &n run\nreport:\n  example_dialogues: 1\nseed: 0\nx: *n\n", ["r.yaml:1", "aliases"]),
        "merge_key": ("base: &b {samples: 2}\neval:\n  <<: *b\n", ["r.yaml:1", "aliases"]),
        "duplicate_key": ("name: a\nseed: 1\nname: b\n", ["r.yaml:3", "twice"]),
        "duplicate_nested_key": ("score:\n  rollouts: 2\n  rollouts: 3\n", ["r.yaml:3", "twice"]),
        "unknown_eval_set": ("data:\n  eval:\n    - name: math5000\n", ["r.yaml:3", "data.eval.0.name"]),
        "eval_set_is_dir": ("data:\n  eval:\n    - name: sub\n", ["r.yaml", "data.eval.0.name"]),
        "unknown_model": ("models:\n  base: smollm3-999m\n", ["r.yaml:2", "models.base"]),
        "unknown_scorer": ("models:\n  scorer: not a model\n", ["r.yaml:2", "models.scorer"]),
        "missing_model_dir": ("models:\n  base: ./no/such/dir\n", ["r.yaml:2", "models.base"]),
        "unknown_key": ("naem: x\n", ["r.yaml:1", "naem"]),
        "unknown_nested_key": ("score:\n  rolouts: 3\n", ["r.yaml:2", "score.rolouts"]),
        "wrong_type": ("score:\n  rollouts: many\n", ["r.yaml:2", "score.rollouts"]),
        "zero_count": ("score:\n  rollouts: 0\n", ["r.yaml:2", "score.rollouts"]),
        "negative_limit": ("data:\n  eval:\n    - name: synthetic\n      limit: -1\n", ["r.yaml", "limit"]),
        "nan_float": ("score:\n  delta: .nan\n", ["r.yaml", "score.delta"]),
        "top_level_list": ("- name: x\n", ["r.yaml", "mapping"]),
        "top_level_string": ("just a string\n", ["r.yaml", "mapping"]),
        "tab_indent": ("score:\n\trollouts: 3\n", ["r.yaml:2", "invalid YAML"]),
        "unclosed_bracket": ("seed: [1, 2\n", ["r.yaml", "invalid YAML"]),
        "non_utf8": (b"name: caf\xe9\n", ["r.yaml:1", "UTF-8"]),
        "too_large": ("# " + "x" * 2_000_000 + "\n", ["r.yaml", "too large"]),
        "empty_eval": ("data:\n  eval: []\n", ["r.yaml", "eval"]),
        "python_tag": ("name: !!python/object/apply:os.system ['echo hi']\n", ["r.yaml:1"]),
        "list_key": ("? [a, b]\n: 1\n", ["r.yaml"]),
        "huge_integer": ("name: x\nseed: " + "9" * 5000 + "\n", ["r.yaml:2", "digits"]),
        "huge_integer_in_list": ("name: x\nseed: [" + "9" * 5000 + "]\n", ["r.yaml:2", "digits"]),
    }
    cases = []
    for name, (text, expect) in recipes.items():
        files: dict[str, Any] = {"r.yaml": text}
        if name == "eval_set_is_dir":
            files["sub"] = DIR
        cases.append(Case(f"recipe-{name}", list(check), files, expect))
        if name in ("deep_list", "alias_bomb", "duplicate_key", "non_utf8", "too_large", "tab_indent"):
            cases.append(Case(f"recipe-{name}-run", ["pipeline", "{d}/r.yaml", "--out", "{d}/run"], dict(files), expect))
    cases += [
        Case("recipe-missing", list(check), {}, ["r.yaml", "not found"]),
        Case("recipe-directory", list(check), {"r.yaml": DIR}, ["r.yaml", "directory"]),
    ]
    # training --config files
    sft = ["sft", "--role", "long", "--data", "{d}/in.jsonl", "--model", "tiny-random", "--out", "{d}/m", "--config"]
    for name, (fname, text, expect) in {
        "alias_bomb": ("c.yaml", _bomb().replace("models:\n  engine_options:\n", "x:\n"), ["c.yaml:2", "aliases"]),
        "deep": ("c.yaml", "lr: " + "[" * 3000 + "]" * 3000 + "\n", ["c.yaml:1", "nested"]),
        "duplicate_key": ("c.yaml", "lr: 0.1\nlr: 0.2\n", ["c.yaml:2", "twice"]),
        "unknown_field": ("c.yaml", "learning_rat: 0.1\n", ["learning_rat"]),
        "list_top": ("c.yaml", "- 1\n", ["c.yaml", "mapping"]),
        "json_duplicate": ("c.json", '{"lr": 0.1, "lr": 0.2}', ["c.json", "twice"]),
        "json_nan": ("c.json", '{"lr": NaN}', ["c.json", "NaN"]),
        "json_malformed": ("c.json", '{"lr": ', ["c.json", "malformed JSON"]),
        "json_deep": ("c.json", "[" * 100_000, ["c.json"]),
        "non_utf8": ("c.yaml", b"lr: \xff\n", ["c.yaml:1", "UTF-8"]),
    }.items():
        cases.append(Case(f"config-sft-{name}", [x if x != "{d}/c.yaml" else x for x in sft] + ["{d}/" + fname],
                          {"in.jsonl": line(SFT), fname: text}, expect))
    return cases


# ----------------------------------------------------------------------------- grade


def grade_cases() -> list[Case]:
    g = ["grade"]
    return [
        Case("grade-gold_not_a_choice", g + ["a", "Z", "--choices", "a", "--choices", "b"], {}, ["GOLD", "not a choice"]),
        Case("grade-gold_letter_out_of_range", g + ["A", "C", "--choices", "a", "--choices", "b"], {}, ["GOLD", "not a choice"]),
        Case("grade-gold_number_not_choice", g + ["A", "3", "--choices", "1", "--choices", "2"], {}, ["GOLD", "not a choice"]),
        Case("grade-one_choice", g + ["a", "A", "--choices", "a"], {}, ["--choices"]),
        Case("grade-eleven_choices", g + ["a", "A"] + [x for i in range(11) for x in ("--choices", str(i))], {}, ["--choices"]),
        Case("grade-empty_choice", g + ["a", "A", "--choices", "a", "--choices", " "], {}, ["--choices"]),
        Case("grade-empty_gold", g + ["a", "  "], {}, ["GOLD"]),
        Case("grade-timeout_zero", g + ["1", "1", "--timeout", "0"], {}, ["--timeout"]),
        Case("grade-timeout_negative", g + ["1", "1", "--timeout", "-5"], {}, ["--timeout"]),
        Case("grade-timeout_nan", g + ["1", "1", "--timeout", "nan"], {}, ["--timeout"]),
        Case("grade-timeout_inf", g + ["1", "1", "--timeout", "inf"], {}, ["--timeout"]),
        Case("grade-timeout_huge", g + ["1", "1", "--timeout", "1e12"], {}, ["--timeout"]),
        Case("grade-timeout_word", g + ["1", "1", "--timeout", "soon"], {}, ["--timeout"]),
        Case("grade-missing_gold", g + ["1"], {}, ["gold"]),
    ]


def misc_cases() -> list[Case]:
    return [
        Case("solve-out_is_input", ["solve", "--file", "{d}/in.jsonl", "--out", "{d}/in.jsonl"], {"in.jsonl": line(PROBLEM)},
             ["in.jsonl", "input"]),
        Case("chunk-input_empty_path", ["chunk", "--input", "", "--out", "{d}/c.jsonl"], {}, ["directory"]),
        Case("chunk-out_empty_path", ["chunk", "--input", "{d}/in.jsonl", "--out", ""], {"in.jsonl": line(TRACE)},
             ["directory"]),
        Case("solve-out_empty_path", ["solve", "--file", "{d}/in.jsonl", "--out", ""], {"in.jsonl": line(PROBLEM)},
             ["directory"]),
        Case("chunk-input_missing", ["chunk", "--input", "{d}/nope.jsonl", "--out", "{d}/c.jsonl"], {}, ["nope.jsonl", "not found"]),
        Case("chunk-input_directory", ["chunk", "--input", "{d}/dd", "--out", "{d}/c.jsonl"], {"dd": DIR}, ["dd", "directory"]),
        Case("score-input_missing", ["score", "--input", "{d}/nope.jsonl", "--out", "{d}/s.jsonl"], {}, ["nope.jsonl", "not found"]),
        Case("coldstart-input_missing", ["coldstart", "--input", "{d}/nope.jsonl", "--out", "{d}/cs"], {}, ["nope.jsonl", "not found"]),
        Case("coldstart-annotation_file", ["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/cs"],
             {"in.jsonl": line({"id": "a", "chunks": ["x"]})}, ["in.jsonl:1"]),
        Case("chunk-annotation_file", ["chunk", "--input", "{d}/in.jsonl", "--out", "{d}/c.jsonl"],
             {"in.jsonl": line({"id": "a", "chunks": ["x"]})}, ["in.jsonl:1", "annotation"]),
        Case("chunk-response_list_of_two", ["chunk", "--input", "{d}/in.jsonl", "--out", "{d}/c.jsonl"],
             {"in.jsonl": line({**TRACE, "response": ["a", "b"]})}, ["in.jsonl:1", "response"]),
        Case("score-bad_answer_latex", ["score", "--input", "{d}/in.jsonl", "--out", "{d}/s.jsonl"],
             {"in.jsonl": line({**TRACE, "answer": "\\frac{1}{2"})}, ["in.jsonl:1", "answer"]),
        Case("sft-data_missing", ["sft", "--role", "long", "--data", "{d}/nope.jsonl", "--model", "tiny-random",
                                  "--out", "{d}/m"], {}, ["nope.jsonl", "not found"]),
        Case("rl-data_directory", ["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", "{d}/dd",
                                   "--out", "{d}/m"], {"dd": DIR}, ["dd", "directory"]),
    ]


def held_out_cases() -> list[Case]:
    """Variants found by a second hostile pass (issue 11): the newer commands (export, rl's managed
    partner server, per-role server URLs), JSON numbers Python cannot convert, values a `gt=0`
    bound lets through, traces too large to chunk, outputs a command writes whole."""
    rl = ["rl", "--long", "tiny-random", "--short", "tiny-random", "--data", "{d}/in.jsonl", "--out", "{d}/rl"]
    managed = rl + ["--partner-server", "managed"]
    sft = ["sft", "--role", "long", "--data", "{d}/in.jsonl", "--model", "tiny-random", "--out", "{d}/m"]
    exp = ["export", "--model", "tiny-random", "--input", "{d}/in.jsonl", "--out", "{d}/x"]
    chunk = ["chunk", "--input", "{d}/in.jsonl", "--out", "{d}/c.jsonl"]
    score = ["score", "--input", "{d}/in.jsonl", "--out", "{d}/s.jsonl", "--model", "tiny-random"]
    cold = ["coldstart", "--input", "{d}/in.jsonl", "--out", "{d}/cs", "--tokenizer", "none"]
    p, t = {"in.jsonl": line(PROBLEM)}, {"in.jsonl": line(TRACE)}
    sc, sf = {"in.jsonl": line(SCORED)}, {"in.jsonl": line(SFT)}
    many_steps = "<think>" + "Step one.\n\n" * 12_000 + "</think>"
    metrics = {"benchmark": "x", "mode": "collab", "accuracy": 0.5, "problems": 2, "samples_per_problem": 1,
               "pass_at_1": {"mean": 0.5, "low": 0.1, "high": 0.9, "n": 2, "method": "normal"},
               "tokens": {"total": 10, "long": 5, "short": 5}, "turns": 2, "finish_by_length_rate": 0,
               "format_violation_rate": 0}
    cases = [
        # export: everything checkable is checked before the tokenizer loads
        Case("export-name_with_slash", exp + ["--name", "../evil"], sf, ["--name", "../evil"]),
        Case("export-name_with_space", exp + ["--name", "my data"], sf, ["--name"]),
        Case("export-model_unknown", [x if x != "tiny-random" else "no-such-model" for x in exp], sf,
             ["--model", "no-such-model"]),
        Case("export-long_model_empty", exp + ["--long-model", " "], sf, ["--long-model", "empty model spec"]),
        Case("export-out_subdir_is_file", exp, {**sf, "x/trl": "a file\n"}, ["trl", "not a directory"]),
        Case("export-dataset_info_list", exp, {**sf, "x/llamafactory/dataset_info.json": "[]\n"},
             ["dataset_info.json", "JSON object"]),
        Case("export-dataset_info_not_json", exp, {**sf, "x/llamafactory/dataset_info.json": "{oops\n"},
             ["dataset_info.json", "not JSON"]),
        Case("export-input_inside_out", [x.replace("in.jsonl", "x/trl/sft_long.jsonl") for x in exp],
             {"x/trl/sft_long.jsonl": line(SFT)}, ["sft_long.jsonl", "input"]),
        # rl: the managed partner server and the partner's URL
        Case("rl-partner_command_empty", managed + ["--partner-server-command", ""], p,
             ["partner_server_command", "empty"]),
        Case("rl-partner_command_empty_list", managed + ["--config", "{d}/c.yaml"],
             {**p, "c.yaml": "partner_server_command: []\n"}, ["partner_server_command", "empty"]),
        Case("rl-partner_command_without_managed", rl + ["--partner-server-command", ""], p,
             ["partner_server_command", "managed"]),
        Case("rl-partner_timeout_inf_config", managed + ["--config", "{d}/c.yaml"],
             {**p, "c.yaml": "partner_server_timeout: .inf\n"}, ["partner_server_timeout", "finite"]),
        Case("rl-partner_base_url_empty", rl + ["--partner-base-url", ""], p, ["partner_base_url", "empty"]),
        Case("rl-partner_base_url_no_scheme", rl + ["--partner-base-url", "localhost:8000"], p,
             ["partner_base_url", "not a server URL"]),
        Case("rl-partner_base_url_bad_port", rl + ["--partner-base-url", "http://127.0.0.1:99999/v1"], p,
             ["partner_base_url", "Port"]),
        Case("rl-long_unknown_model", ["rl", "--long", "no-such-model", "--short", "tiny-random", "--data",
                                       "{d}/in.jsonl", "--out", "{d}/rl"], p, ["--long", "no-such-model"]),
        # sft: the model spec and non-finite config values, before the trainer is built
        Case("sft-model_unknown", [x if x != "tiny-random" else "no-such-model" for x in sft], sf,
             ["--model", "no-such-model"]),
        Case("sft-model_empty", [x if x != "tiny-random" else "" for x in sft], sf, ["--model", "empty model spec"]),
        Case("config-sft-yaml_1e400", sft + ["--config", "{d}/c.yaml"], {**sf, "c.yaml": "lr: 1e400\n"},
             ["lr", "finite"]),
        Case("config-sft-yaml_huge_integer", sft + ["--config", "{d}/c.yaml"],
             {**sf, "c.yaml": "seed: " + "9" * 5000 + "\n"}, ["c.yaml:1", "digits"]),
        # chunk / score: traces too large to chunk, undecodable text, options that would be ignored
        Case("chunk-response_too_long", chunk, {"in.jsonl": line({**TRACE, "response": "x " * 600_000})},
             ["in.jsonl:1", "response", "too long"]),
        Case("chunk-response_too_many_steps", chunk, {"in.jsonl": line({**TRACE, "response": many_steps})},
             ["in.jsonl:1", "response", "too many steps"]),
        Case("score-response_too_many_steps", score, {"in.jsonl": line({**TRACE, "response": many_steps})},
             ["in.jsonl:1", "response", "too many steps"]),
        Case("chunk-response_lone_surrogate", chunk,
             {"in.jsonl": line({**TRACE, "response": "<think>a \udcff</think>"})},
             ["in.jsonl:1", "response", "Unicode"]),
        Case("chunk-answer_1e400", chunk, {"in.jsonl": line(TRACE).replace('"answer": "2"', '"answer": 1e400')},
             ["in.jsonl:1", "answer", "finite"]),
        Case("chunk-gold_line_number", chunk + ["--method", "gold"], {"in.jsonl": "\n\n" + line(TRACE)},
             ["in.jsonl:3", "gold_thoughts"]),
        Case("chunk-base_url_without_openai", chunk + ["--base-url", "http://127.0.0.1:8000/v1"], t,
             ["--base-url", "openai"]),
        Case("chunk-llm_model_unknown", chunk + ["--method", "llm", "--model", "no-such-model"], t,
             ["--model", "no-such-model"]),
        Case("score-model_unknown", [x if x != "tiny-random" else "no-such-model" for x in score], t,
             ["--model", "no-such-model"]),
        Case("score-base_url_not_a_url", score + ["--engine", "openai", "--base-url", "localhost:8000"], t,
             ["--base-url", "not a server URL"]),
        Case("score-chunked_id_list", score, {"in.jsonl": line({**CHUNKED, "id": ["a"]})}, ["in.jsonl:1", "id"]),
        Case("score-chunked_id_bool", score, {"in.jsonl": line({**CHUNKED, "id": True})}, ["in.jsonl:1", "id"]),
        # coldstart: the fields it reads, the files it writes whole, nothing to train on
        Case("coldstart-response_missing", cold, {"in.jsonl": line(SCORED) + line(
            {k: v for k, v in {**SCORED, "id": "b"}.items() if k != "response"})}, ["in.jsonl:2", "response"]),
        Case("coldstart-response_list", cold, {"in.jsonl": line({**SCORED, "response": ["x"]})},
             ["in.jsonl:1", "response"]),
        Case("coldstart-choices_string", cold, {"in.jsonl": line({**SCORED, "choices": "a, b"})},
             ["in.jsonl:1", "choices"]),
        Case("coldstart-thought_start_missing", cold,
             {"in.jsonl": line({**SCORED, "thoughts": [{"text": "x", "score": 1}]})},
             ["in.jsonl:1", "thoughts.0.start"]),
        Case("coldstart-thought_start_after_end", cold, {"in.jsonl": line(
            {**SCORED, "thoughts": [{"text": "x", "score": 1, "start": 3, "end": 2}]})}, ["in.jsonl:1", "thoughts.0"]),
        Case("coldstart-thought_text_surrogate", cold, {"in.jsonl": line(
            {**SCORED, "thoughts": [{**SCORED["thoughts"][0], "text": "a \udcff"}]})},
             ["in.jsonl:1", "thoughts.0.text"]),
        Case("coldstart-gold_thoughts_string", cold, {"in.jsonl": line({**SCORED, "gold_thoughts": "x"})},
             ["in.jsonl:1", "gold_thoughts"]),
        Case("coldstart-all_incorrect", cold, {"in.jsonl": line({**SCORED, "answer": "3"})},
             ["in.jsonl", "no SFT examples", "--keep-incorrect"]),
        Case("coldstart-out_holds_user_file", cold, {**sc, "cs/sft_long.jsonl": "my notes\n"},
             ["sft_long.jsonl", "will not overwrite"]),
        Case("coldstart-out_holds_user_stats", cold, {**sc, "cs/stats.json": '{"mine": 1}\n'},
             ["stats.json", "will not overwrite"]),
        Case("coldstart-input_is_an_output", ["coldstart", "--input", "{d}/cs/sft_short.jsonl", "--out", "{d}/cs",
                                              "--tokenizer", "none"], {"cs/sft_short.jsonl": line(SCORED)},
             ["sft_short.jsonl", "input"]),
        Case("coldstart-tokenizer_unknown", cold[:-1] + ["no-such-model"], sc, ["--tokenizer", "no-such-model"]),
        Case("coldstart-base_url_without_openai", cold + ["--base-url", "http://127.0.0.1:8000/v1"], sc,
             ["--base-url", "openai"]),
        # synth: a size that would run for days
        Case("synth-n_trillion", ["synth", "--n", "1000000000000", "--out", "{d}/s.jsonl"], {}, ["--n"]),
        # solve / eval: server URLs
        Case("solve-base_url_without_openai", ["solve", "x", "--base-url", "http://127.0.0.1:8000/v1"], {},
             ["--base-url", "openai"]),
        Case("solve-base_url_not_a_url", ["solve", "x", "--engine", "openai", "--base-url", "nope"], {},
             ["--base-url", "not a server URL"]),
        Case("eval-long_base_url_spaces", ["eval", "--benchmark", "{d}/in.jsonl", "--out", "{d}/run", "--engine",
                                           "openai", "--long-base-url", "http://a b/v1", "--short-base-url",
                                           "http://b/v1"], p, ["--long-base-url", "spaces"]),
        Case("eval-benchmark_empty", ["eval", "--benchmark", " ", "--out", "{d}/run"], {}, ["benchmark", "empty"]),
        # grade: text no output can hold
        Case("grade-pred_lone_surrogate", ["grade", "\udcff", "1"], {}, ["PRED", "Unicode"]),
        Case("grade-gold_lone_surrogate", ["grade", "1", "\udcff"], {}, ["GOLD", "Unicode"]),
        Case("grade-gold_5MB", ["grade", "1", "1" * 5_000_000], {}, ["GOLD", "too long"]),
        # compare: metrics.json of the wrong shape; outputs that are not its own
        Case("compare-metrics_missing_field", ["compare", "{d}/r", "--plot", "{d}/p.png"],
             {"r/metrics.json": json.dumps({k: v for k, v in metrics.items() if k != "problems"})},
             ["metrics.json", "problems", "missing"]),
        Case("compare-metrics_pass_at_1_string", ["compare", "{d}/r", "--plot", "{d}/p.png"],
             {"r/metrics.json": json.dumps({**metrics, "pass_at_1": "50%"})}, ["metrics.json", "pass_at_1"]),
        Case("compare-metrics_tokens_string", ["compare", "{d}/r", "--plot", "{d}/p.png"],
             {"r/metrics.json": json.dumps({**metrics, "tokens": {"total": "ten", "long": 5, "short": 5}})},
             ["metrics.json", "tokens.total"]),
        Case("compare-md_is_a_user_file", ["compare", "{d}/r", "--plot", "{d}/notes.png"],
             {"r/metrics.json": json.dumps(metrics), "notes.md": "# my notes\n"}, ["notes.md", "will not overwrite"]),
        Case("compare-png_is_not_a_png", ["compare", "{d}/r", "--plot", "{d}/notes.png"],
             {"r/metrics.json": json.dumps(metrics), "notes.png": "not an image\n"},
             ["notes.png", "will not overwrite"]),
    ]
    return cases


CASES = build_cases()


# ----------------------------------------------------------------------------- the harness


def _make(d: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            p.mkdir(exist_ok=True)
        elif content is FIFO:
            os.mkfifo(p)
        elif isinstance(content, Link):
            p.symlink_to(d / content.target)
        elif isinstance(content, tuple) and content[0] == "RO":
            p.write_text(content[1])
            p.chmod(0o444)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8", newline="")


def snapshot(d: Path) -> dict[str, str]:
    """Every path under `d` with a hash of its content (files), its kind otherwise."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_fifo():
            out[rel] = "fifo"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class _ModelLoaded(Exception):
    pass


@pytest.fixture
def no_models(monkeypatch):
    """A model, tokenizer or engine built during a bad-input case is a failure: checks come first."""
    import longshort.engines
    import longshort.models

    def refuse(*a, **k):
        raise _ModelLoaded(f"a model/tokenizer/engine was loaded before the input was refused: {a!r}")

    for mod, name in ((longshort.models, "load_model"), (longshort.models, "load_tokenizer"),
                      (longshort.engines, "make_engine")):
        monkeypatch.setattr(mod, name, refuse)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # pragma: no cover - main() returns its code
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def test_corpus_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 200


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, no_models):
    if case.root_skip and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    d = tmp_path / "case"
    d.mkdir()
    _make(d, case.files)
    monkeypatch.chdir(d)
    before = snapshot(d)
    argv = [a.replace("{d}", str(d)) for a in case.argv]
    t0 = time.monotonic()
    rc, out, err = run_cli(argv)
    elapsed = time.monotonic() - t0
    assert "Traceback" not in out + err, err
    assert rc != 0, f"exit 0 for a bad input; stdout: {out[-500:]!r}"
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got: {err!r}"
    for needle in case.expect:
        assert needle.replace("{d}", str(d)) in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(d) == before, "a file was created, changed or removed"
    assert elapsed < BOUND_S
