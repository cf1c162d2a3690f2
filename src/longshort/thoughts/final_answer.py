"""Final-answer statements in a thought (cold start, DESIGN §5): the answer is the short role's.

A long turn must not state the final answer, so cold start finds final-answer statements
(`is_final_answer_sentence`: any ``\\boxed``, a "final answer"/"answer:" heading or label, or a
sentence that says what the answer is) and removes them from thoughts that go long
(`strip_final_answer`), keeping the math and the layout around them. Recognised by the wording
of answers in general, not by any one template.
"""

from __future__ import annotations

import re

# Math content: a digit, an operator, a LaTeX command or a dollar sign.
MATH_RE = re.compile(r"\d|=|\\[a-zA-Z]+|[+\-*/^<>≤≥×÷]|\$")

# A final-answer statement: a box, a "final answer"/"answer:" heading or label, or a sentence that
# says what the answer is. Deliberately about the wording of answers in general, not any template.
_FINAL_RE = re.compile(
    r"\\(?:boxed|fbox)\b"
    r"|\bfinal\s+(?:answer|result)s?\b"
    r"|^\W*(?:the\s+)?(?:final\s+)?answers?\W*$"                       # "**Answer**", "## Answer", "Answer."
    r"|^\W*(?:the\s+)?(?:final\s+)?answers?\s*(?:\*\*|__)?\s*[:：=]"   # "Answer: 8", "**Answer:** 8"
    r"|\banswers?\s*(?:\*\*|__)?\s*[:=]"                               # "... answer = 8", "answer: 8"
    r"|\banswers?\s+(?:is|are|should\s+be|must\s+be|would\s+be|will\s+be|equals|comes\s+out\s+to)\b"
    r"|\b(?:so|thus|therefore|hence)\b[^.!?\n]*?\banswers?\b\s*(?:[:=,]|is\b|\$|\d)",
    re.I | re.M)
# Where a final-answer clause can be cut off a sentence that also carries math.
_CLAUSE_CUT = re.compile(r"[,;:]\s*|\s+(?:and|so|thus|hence|which\s+means|giving|making)\s+", re.I)
# pieces of a paragraph: sentences (ending at . ! ? before a space) and lines
_PIECE_SEP = re.compile(r"((?<=[.!?])[ \t]+(?=\S)|\n)")
_DELIMITER_ONLY = re.compile(r"^\s*(?:\$\$?|\\\[|\\\]|\\\(|\\\)|\*\*|__|)\s*$")


def is_final_answer_sentence(text: str) -> bool:
    r"""Whether one sentence (or line) states the final answer (see `_FINAL_RE`).

    >>> [is_final_answer_sentence(t) for t in ["**Final Answer**", "$$\\boxed{12}$$", "Answer: 4",
    ...  "**Answer:** $x = 2$", "Therefore, the answer is 7.", "So the final answer is 3",
    ...  "THE ANSWER IS 5.", "Thus answer = 9."]]
    [True, True, True, True, True, True, True, True]
    >>> [is_final_answer_sentence(t) for t in ["I need the answer to how many apples.",
    ...  "So 9 + 5 = 14.", "Let me reconsider the answer choices", "Does the answer make sense?"]]
    [False, False, False, False]
    """
    return _FINAL_RE.search(text) is not None


def _trim_final_clause(piece: str) -> str:
    """The longest head of `piece`, cut at a clause boundary, that states no final answer, when
    it carries math ("So 8 − 3 = 5, so the answer is 5." → "So 8 − 3 = 5."), else ""."""
    for cut in reversed(list(_CLAUSE_CUT.finditer(piece))):
        head = piece[:cut.start()].rstrip()
        if _FINAL_RE.search(head):
            continue
        if not head or not MATH_RE.search(head) or head.count("$") % 2:
            return ""
        return head if head[-1] in ".!?" else head + "."
    return ""


def strip_final_answer(text: str) -> tuple[str, int]:
    r"""`text` without its final-answer statements (sentences or lines, see
    `is_final_answer_sentence`), keeping everything else verbatim; returns (text, how many
    statements were removed). Math delimiters orphaned by a removal are removed too.

    >>> strip_final_answer("So $x = 3$.\n\n**Answer:** $$\\boxed{3}$$")
    ('So $x = 3$.', 1)
    >>> strip_final_answer("Then 14 - 6 = 8, so the answer is 8. Done.")
    ('Then 14 - 6 = 8. Done.', 1)
    >>> strip_final_answer("Hence\n$$\n\\boxed{5}\n$$")
    ('Hence', 1)
    """
    removed = 0
    out_paras = []
    for para in re.split(r"\n[ \t]*\n", text):
        parts = _PIECE_SEP.split(para)
        pieces, seps = parts[0::2], parts[1::2] + [""]
        kept: list[tuple[str, str]] = []
        hit = False
        for piece, sep in zip(pieces, seps, strict=True):
            if piece.strip() and is_final_answer_sentence(piece):
                removed += 1
                hit = True
                head = _trim_final_clause(piece)
                if head:
                    kept.append((head, sep))
                continue
            kept.append((piece, sep))
        if hit:
            if not any(not _DELIMITER_ONLY.match(p) for p, _ in kept):
                continue
            kept = _drop_empty_math(kept)
        para = "".join(p + sp for p, sp in kept).strip()
        if para:
            out_paras.append(para)
    return "\n\n".join(out_paras), removed


def _drop_empty_math(kept: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove display-math delimiters left with nothing between them ("$$", "$$" once the box
    between them is gone)."""
    changed = True
    while changed:
        changed = False
        marks = [j for j, (p, _) in enumerate(kept) if p.strip() and _DELIMITER_ONLY.match(p)]
        for a, b in zip(marks, marks[1:], strict=False):
            if all(not kept[j][0].strip() for j in range(a + 1, b)):
                kept = kept[:a] + kept[b + 1:]
                changed = True
                break
    return kept


def has_final_answer(text: str) -> bool:
    return any(is_final_answer_sentence(p) for p in _PIECE_SEP.split(text)[0::2] if p.strip())
