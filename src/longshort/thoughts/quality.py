"""Quality measures against planted truth (used by benchmarks and the pipeline report).

- `boundary_prf`: precision/recall/F1 of thought boundaries (the step indices where a new
  thought starts, the first thought excluded) against the gold thoughts, micro-averaged.
- `auroc`: area under the ROC curve (Mann-Whitney, ties count one half).
- `importance_auroc`: AUROC of importance scores for essential vs redundant gold thoughts;
  when the scored thoughts are not the gold ones, each gold thought takes the score of the
  scored thought that covers most of its steps.

>>> boundary_prf([[{"start": 1, "end": 2}, {"start": 3, "end": 4}]],
...              [[{"start": 1, "end": 2}, {"start": 3, "end": 3}, {"start": 4, "end": 4}]])
{'precision': 1.0, 'recall': 0.5, 'f1': 0.6667, 'tp': 1, 'pred': 1, 'gold': 2}
>>> auroc([0.9, 0.8, 0.1], [True, True, False])
1.0
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


def importance_auroc(records: Sequence[dict[str, Any]], key: str = "score") -> dict[str, Any]:
    """AUROC of importance, essential vs redundant gold thoughts, pooled over records that carry
    `gold_thoughts` and scored `thoughts` (thoughts without a score are left out)."""
    scores: list[float] = []
    labels: list[bool] = []
    for r in records:
        gold = r.get("gold_thoughts")
        if not gold or not r.get("thoughts"):
            continue
        for g, s in zip(gold, gold_scores(r["thoughts"], gold, key), strict=True):
            if s is None or g.get("kind", "essential" if g.get("essential") else "redundant") == "neutral":
                continue
            scores.append(float(s))
            labels.append(bool(g.get("essential")))
    return {"auroc": auroc(scores, labels), "essential": sum(labels),
            "redundant": len(labels) - sum(labels)}
