"""Quality measures against planted truth (used by benchmarks and the pipeline report).

- `boundary_prf`: precision/recall/F1 of thought boundaries (the step indices where a new
  thought starts, the first thought excluded) against the gold thoughts, micro-averaged.
- `auroc`: area under the ROC curve (Mann-Whitney, ties count one half).
- `importance_auroc`: AUROC of importance scores, essential vs redundant. The unit is the
  scored thought: each gets the planted kind of the gold thought that covers most of its steps
  (`thought_kinds`; a tie goes to the earlier gold thought), so with the chunker's boundaries a
  thought that merges a computation with a re-check counts once, as what most of it is. With
  gold boundaries the two coincide. Neutral thoughts (setup, plan, conclusion) are left out.
- `spearman`: rank correlation (average ranks for ties), e.g. between two estimators' scores of
  the same thoughts (`estimator_agreement`).

>>> boundary_prf([[{"start": 1, "end": 2}, {"start": 3, "end": 4}]],
...              [[{"start": 1, "end": 2}, {"start": 3, "end": 3}, {"start": 4, "end": 4}]])
{'precision': 1.0, 'recall': 0.5, 'f1': 0.6667, 'tp': 1, 'pred': 1, 'gold': 2}
>>> auroc([0.9, 0.8, 0.1], [True, True, False])
1.0
>>> spearman([1, 2, 3, 4], [10, 30, 20, 40])
0.8
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def boundaries(thoughts: Sequence[dict[str, Any]]) -> set[int]:
    """Start steps of every thought but the first."""
    return {int(t["start"]) for t in thoughts[1:]}


def boundary_prf(pred: Sequence[Sequence[dict[str, Any]]], gold: Sequence[Sequence[dict[str, Any]]],
                 tolerance: int = 0) -> dict[str, float]:
    """Micro precision/recall/F1 of boundaries over traces; `tolerance` steps of slack."""
    tp = n_pred = n_gold = 0
    for p, g in zip(pred, gold, strict=True):
        bp, bg = boundaries(p), boundaries(g)
        n_pred += len(bp)
        n_gold += len(bg)
        if tolerance == 0:
            tp += len(bp & bg)
        else:
            used: set[int] = set()
            for b in sorted(bp):
                match = next((x for x in sorted(bg) if abs(x - b) <= tolerance and x not in used), None)
                if match is not None:
                    used.add(match)
                    tp += 1
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "pred": n_pred, "gold": n_gold}


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counted 1/2; None if a class is empty."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return round(wins / (len(pos) * len(neg)), 4)


def gold_scores(thoughts: Sequence[dict[str, Any]], gold: Sequence[dict[str, Any]],
                key: str = "score") -> list[float | None]:
    """The score each gold thought gets: that of the scored thought covering most of its steps."""
    out: list[float | None] = []
    for g in gold:
        best, best_overlap = None, 0
        for t in thoughts:
            overlap = min(t["end"], g["end"]) - max(t["start"], g["start"]) + 1
            if overlap > best_overlap:
                best, best_overlap = t.get(key), overlap
        out.append(best)
    return out


def _kind(g: dict[str, Any]) -> str:
    return g.get("kind") or ("essential" if g.get("essential") else "redundant")


def thought_kinds(thoughts: Sequence[dict[str, Any]], gold: Sequence[dict[str, Any]]) -> list[str | None]:
    """The planted kind of each scored thought: that of the gold thought covering most of its
    steps (ties: the earlier gold thought); None when no gold thought overlaps it."""
    out: list[str | None] = []
    for t in thoughts:
        best, best_overlap = None, 0
        for g in gold:
            overlap = min(t["end"], g["end"]) - max(t["start"], g["start"]) + 1
            if overlap > best_overlap:
                best, best_overlap = _kind(g), overlap
        out.append(best)
    return out


def importance_auroc(records: Sequence[dict[str, Any]], key: str = "score") -> dict[str, Any]:
    """AUROC of importance, essential vs redundant thoughts, pooled over records that carry
    `gold_thoughts` and scored `thoughts`; each scored thought is labelled by `thought_kinds`
    (thoughts without a score and neutral ones are left out)."""
    scores: list[float] = []
    labels: list[bool] = []
    for r in records:
        gold = r.get("gold_thoughts")
        if not gold or not r.get("thoughts"):
            continue
        for t, kind in zip(r["thoughts"], thought_kinds(r["thoughts"], gold), strict=True):
            if t.get(key) is None or kind not in ("essential", "redundant"):
                continue
            scores.append(float(t[key]))
            labels.append(kind == "essential")
    return {"auroc": auroc(scores, labels), "essential": sum(labels),
            "redundant": len(labels) - sum(labels)}


def _ranks(x: Sequence[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and x[order[j + 1]] == x[order[k]]:
            j += 1
        for m in range(k, j + 1):
            ranks[order[m]] = (k + j) / 2 + 1
        k = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None with < 3 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs pairs: {len(a)} vs {len(b)} values")
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return round(cov / (va * vb) ** 0.5, 4)


def estimator_agreement(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]],
                        key: str = "score") -> dict[str, Any]:
    """Spearman between two scorings of the same traces (matched by id, thought by thought, both
    scored with the same boundaries), pooled over traces."""
    by_id = {str(r["id"]): r for r in second}
    a: list[float] = []
    b: list[float] = []
    for r in first:
        o = by_id.get(str(r["id"]))
        if o is None or len(o["thoughts"]) != len(r["thoughts"]):
            continue
        for x, y in zip(r["thoughts"], o["thoughts"], strict=True):
            if x.get(key) is not None and y.get(key) is not None:
                a.append(float(x[key]))
                b.append(float(y[key]))
    return {"spearman": spearman(a, b), "thoughts": len(a)}
