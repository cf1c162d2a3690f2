"""Reference segmentations of real traces from sentence-level annotation files.

Public annotations label sentences or sentence chunks, not the blank-line steps our chunkers
group. `step_labels` maps labelled text units onto the steps of a trace (each step takes the
label covering most of its characters, matching on whitespace-normalised text), and
`label_segments` turns runs of one label into reference thoughts, so `quality.boundary_prf`
can compare a chunker with them. Readers for the two files in `../shared/longcot/`:

- `sat_deepseek_r1_sentences.jsonl`: Schoenfeld episodes per sentence (`gt-class-2`: Read,
  Analyze, Plan, Implement, Explore, Verify, Monitor);
- `thought_anchors_chunks.jsonl`: Thought-Anchors function tags per chunk (first tag).

>>> steps = ["Read the problem. It asks for x.", "Compute: x = 2.", "Check: 2 works."]
>>> units = [("Read the problem.", "Read"), ("It asks for x.", "Read"), ("Compute: x = 2.", "Implement"),
...          ("Check: 2 works.", "Verify")]
>>> step_labels(steps, units)
['Read', 'Implement', 'Verify']
>>> [(t["start"], t["end"]) for t in label_segments(["A", "A", "B"])]
[(1, 2), (3, 3)]
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def step_labels(steps: Sequence[str], units: Sequence[tuple[str, str]]) -> list[str | None]:
    """The label of each step: that of the units covering most of its characters (None when no
    unit was found in it). Units are searched in order in the whitespace-normalised steps."""
    offsets = []
    parts = []
    pos = 0
    for s in steps:
        t = _norm(s)
        offsets.append((pos, pos + len(t)))
        parts.append(t)
        pos += len(t) + 1
    full = " ".join(parts)
    cover: list[Counter[str]] = [Counter() for _ in steps]
    cursor = 0
    for text, label in units:
        u = _norm(text)
        if not u:
            continue
        a = full.find(u, cursor)
        if a < 0:
            a = full.find(u)
            if a < 0:
                continue
        b = a + len(u)
        cursor = b
        for k, (sa, sb) in enumerate(offsets):
            ov = min(b, sb) - max(a, sa)
            if ov > 0:
                cover[k][label] += ov
    return [c.most_common(1)[0][0] if c else None for c in cover]


def label_segments(labels: Sequence[str | None]) -> list[dict[str, Any]]:
    """Runs of one label as thoughts `{start, end, type}` (an unlabelled step joins the run before)."""
    out: list[dict[str, Any]] = []
    for k, lab in enumerate(labels, start=1):
        if out and (lab is None or lab == out[-1]["type"]):
            out[-1]["end"] = k
        else:
            out.append({"start": k, "end": k, "type": lab or "unlabelled"})
    return out


def _read(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_reference(annotation: str | os.PathLike, traces: str | os.PathLike
                   ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(trace record, reference thoughts) for every annotated trace found in `traces`.

    The annotation kind is read from the rows: `sentences` with `gt-class-2` (Schoenfeld
    episodes) or `chunks` with `function_tags` (Thought Anchors).
    """
    from longshort.thoughts.ingest import load_traces
    from longshort.thoughts.steps import split_steps

    by_id = {r["id"]: r for r in load_traces(traces)}
    out = []
    for row in _read(annotation):
        rec = by_id.get(row.get("id"))
        if rec is None:
            continue
        if "sentences" in row:
            units = [(s["text"], s.get("gt-class-2") or s.get("gt-class-1") or "?") for s in row["sentences"]]
        elif "chunks" in row:
            units = [(c["chunk"], (c.get("function_tags") or ["?"])[0]) for c in row["chunks"]]
        else:
            continue
        steps = split_steps(rec["response"]).steps
        out.append((rec, label_segments(step_labels(steps, units))))
    return out


REFERENCE_FILES = {
    "SAT Schoenfeld episodes": ("sat_deepseek_r1_sentences.jsonl", "sat_deepseek_r1.jsonl"),
    "Thought-Anchors functions": ("thought_anchors_chunks.jsonl", "thought_anchors_math.jsonl"),
}


def available_references(longcot_dir: str | os.PathLike) -> dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Every reference of REFERENCE_FILES present in a directory like ../shared/longcot/."""
    d = Path(longcot_dir)
    out = {}
    for name, (ann, tr) in REFERENCE_FILES.items():
        if (d / ann).exists() and (d / tr).exists():
            out[name] = load_reference(d / ann, d / tr)
    return out
