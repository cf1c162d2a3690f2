"""The `segment` chunker: model-free thoughts at the granularity people use (DESIGN §5).

A thought is a stretch of reasoning with one purpose: understanding the problem, a plan, one
derivation or solution attempt, a verification pass, an alternative approach, the conclusion.
It is not one thought per discourse marker: a long trace says "Wait" and "let me check"
dozens of times inside one derivation, and a person reading it groups those lines with the
derivation they belong to.

How it works, in three parts:

1. **Evidence per step** that a new thought starts there, from signals that do not depend on
   one model's (or our generator's) phrasing:
   - a generic discourse cue at the start of the step, by function (verification, alternative,
     conclusion, reflection, transition, understanding, planning), in English and Chinese;
   - lexical cohesion: the share of the step's content words and numbers that the previous
     few steps did not use (a topic / number-set shift), and whether the step first uses a
     number given in the problem (reaching for a new given = a new sub-task);
   - a new equation after a stretch without one (a computation starts), an equation seen
     before (a recomputation = a check);
   - continuation evidence against a boundary: the previous step ends with ":" (this step is
     its content), the step opens in lower case or with an operator, is a bare formula line,
     continues a numbered list, or opens with a consequence word ("so", "therefore", "which").
2. **Granularity from the trace's length**: a target number of thoughts that grows slowly
   with the number of steps (about 9 for 15-150 steps, +4 per doubling beyond) and a minimum
   thought length that grows with the trace, so a 2-paragraph check inside a 100-paragraph
   derivation stays inside it while a 2-paragraph check in a 15-paragraph trace is a thought.
3. **Selection**: boundaries are accepted strongest first, at least `min_len` steps apart;
   beyond the target count only boundaries with very strong evidence are added.

Each thought gets the category of the strongest cue among its first steps (the first thought
"understanding", a thought holding the final answer "conclusion", "computation" by default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

# --------------------------------------------------------------------------- cues

_LEAD = r"(?:[a-z' ]{1,28},\s+)?(?:(?:wait|hmm+|hold on|okay|ok|alright|all right|so|now|well|but|and|also|then|right|oh|ah|yes|no|actually|anyway)[,.!:]?\s+)*"
_WE = r"(?:let me|let's|let us|i(?:'ll| will| should| can| could| need to| want to| must| have to| might)?|we(?:'ll| will| should| can| could| need to| must)?)"
_VERIFY_VERB = (r"(?:double[- ]?check|triple[- ]?check|re-?check|check|verify|confirm|make sure|be sure|ensure|test|validate"
                r"|re-?examine|re-?compute|recalculate|re-?calculate|re-?do|re-?derive|re-?evaluate|re-?visit|review"
                r"|go (?:back )?over|sanity[- ]check|cross[- ]check|plug (?:it|this|these|them|the values?) back|substitute back)")

# (category, strength, pattern on the normalised head of a step)
CUES: list[tuple[str, float, re.Pattern[str]]] = [
    ("conclusion", 3.0, re.compile(
        r"^(?:final answer|the final answer|answer\s*:|\\boxed|\$\\boxed"
        rf"|{_LEAD}(?:so|thus|therefore|hence|in (?:the )?end|finally|overall|altogether)?,?\s*(?:the|my|our) (?:final )?(?:answer|result)\s+(?:is|should be|must be|would be|=)"
        r"|in conclusion|to conclude|to summari[sz]e|in summary|summing up|putting (?:it|this|everything|all) (?:all )?together"
        r"|(?:so|thus|therefore)?,?\s*after all (?:that|this)|i(?:'m| am) (?:confident|fairly confident|sure)"
        r"|所以答案|最终答案|因此答案|综上|答案是)")),
    ("verification", 3.0, re.compile(
        rf"^{_LEAD}(?:{_WE}\s+)?(?:just |quickly |also |now |first |briefly )?(?:{_VERIFY_VERB})\b.{{0,40}}?"
        r"\b(?:all|these|those|everything|whole|entire|original|answer|solution|result|results|values|both|each|work|steps|again|from the (?:start|beginning))\b"
        r"|^(?:going|looking) (?:back )?over (?:the|my|everything|it all)|^(?:a|one) (?:full|final|last) (?:pass|check|review)")),
    ("transition", 2.3, re.compile(
        r"^(?:(?:okay|ok|alright|all right|so|and|well|hmm)[,.!]?\s+)*(?:now|next|then|moving on|after that|with that)\b[,.]?\s*"
        r"(?:[\w']+[,.?]?\s+){0,10}"
        r"(?:find|solve|compute|determine|calculate|figure out|work out|get|turn to|handle|tackle|consider|look at|deal with|move on|plug|substitute|evaluate|count|use)\b")),
    ("verification", 1.7, re.compile(
        rf"^{_LEAD}(?:{_WE}\s+)?(?:just |quickly |also |now |first |briefly )?(?:{_VERIFY_VERB})\b"
        r"|^(?:to (?:verify|check|confirm|be (?:safe|sure|certain)|double[- ]check)|as a (?:check|sanity check)|checking|verification|verifying"
        r"|sanity check|double[- ]checking|let me see if (?:this|that|it) (?:works|holds|makes sense|is right|is correct)"
        r"|is (?:this|that) (?:right|correct)\?|does (?:this|that|it) (?:make sense|work|hold|check out)"
        r"|(?:going|looking) (?:back )?over|one more (?:check|time)|recomput|re-?doing|redo)"
        r"|^(?:验证|检查|核对|再确认|确认一下)")),
    ("alternative", 2.5, re.compile(
        rf"^{_LEAD}(?:alternatively|alternative(?:ly)?(?: approach| method)?|another (?:way|approach|method|idea|option|strategy|thought|angle)"
        r"|(?:a|an|some) (?:different|other|better|simpler|cleaner|easier|smarter|faster|more direct) (?:way|approach|method|idea|route)"
        r"|or,? (?:maybe|perhaps|instead|alternatively)|instead,|instead of|what if (?:i|we)\b|on second thought"
        rf"|{_WE}\s+(?:try|use|consider|think about|approach)\s+(?:a |an |this |it |the problem )?(?:different(?:ly)?|another|again|other)"
        r"|(?:maybe|perhaps) (?:there(?:'s| is) (?:a|an)|i (?:can|could|should) (?:use|try) (?:a|an|another)) (?:better|simpler|different|easier|smarter|other|more)"
        r"|(?:let me|let's) (?:start over|try (?:something|a different|another)|think (?:about (?:it|this) )?differently|approach (?:it|this) differently)"
        r"|could (?:i|we) (?:also|instead)|(?:i|we) could also)"
        r"|^(?:另一种|换个|换一种|或者)")),
    ("conclusion", 2.0, re.compile(
        r"^(?:(?:so|thus|therefore|hence),?\s+)?(?:i think )?(?:that(?:'s| is) (?:the answer|it|correct|consistent|right)"
        r"|(?:everything|all) (?:checks out|is consistent|matches|agrees)|the (?:answer|result) (?:is|checks)|we (?:get|have|obtain) (?:the )?(?:answer|final))")),
    ("understanding", 1.6, re.compile(
        rf"^{_LEAD}(?:the (?:problem|question|task|statement|prompt) (?:says|said|asks|states|gives|is asking|wants|tells|mentions)"
        r"|(?:we|i) (?:are|am|were|was)(?: being)? (?:given|asked|told)|(?:we|i) (?:need|have|want) to (?:find|determine|compute|figure out|calculate|show|prove|evaluate|count)"
        rf"|{_WE}\s+(?:first )?(?:read|re-?read|restate|parse|understand|look (?:at|back at)|go back to|revisit) (?:the|this|what)"
        r"|let me make sure i (?:understand|read)|(?:did|does) the (?:problem|question) (?:say|ask|mean)"
        r"|(?:let me |let's |i |we )?(?:recall|remember|note) (?:that|the|how)|we know that|(?:i|we) (?:have|got) (?:this|a|an) (?:problem|question)|(?:this|the) problem (?:is|involves|asks)|given that|题目|问题是)")),
    ("planning", 1.6, re.compile(
        rf"^{_LEAD}(?:(?:(?:the|a|my) )?(?:simplest|easiest|best|natural|obvious|most direct|quickest|cleanest|standard) (?:route|way|approach|method|plan|strategy|path)"
        r"|(?:my|the|our|a) (?:plan|strategy|approach|idea|goal|key(?: idea| step| insight)?)\s+(?:is|here|would be|will be|should be)"
        r"|(?:the )?(?:plan|strategy|approach|idea)\s*:|to (?:solve|tackle|approach|handle|find) (?:this|the|it)"
        rf"|{_WE}\s+(?:start|begin|plan|outline|break (?:this|it|the problem) (?:down|into)|set up|organi[sz]e|structure|proceed|approach|tackle|handle (?:each|the|this)|go through|work through|think about how)"
        r"|(?:first|to start|to begin),? (?:i|we|let me|let's) (?:need|should|will|'ll|can|must|have)|one (?:way|approach) (?:is|would be|to)"
        r"|(?:i|we) (?:should|could|can|might) (?:use|apply|try|consider)|(?:maybe|perhaps) (?:i|we) (?:can|could|should)|思路|计划)")),
    ("transition", 1.3, re.compile(
        r"^(?:(?:okay|ok|alright|all right|so|and)[,.!]?\s+)?(?:the )?(?:now|next|then|after (?:that|this)|afterwards?|following (?:that|this)|subsequently|moving (?:on|to)|finally|lastly|last|final|first(?:ly)?|second(?:ly)?|third(?:ly)?"
        r"|to start|to begin|starting with|similarly|likewise|in the same way|by the same|for (?:the )?(?:next|second|third|fourth|last|remaining|other|first)"
        r"|(?:step|case|part|stage|phase|scenario|subcase|option) (?:\d+|[ivx]+|[a-d])\b|\(?[a-d]\)|\d+\)|now that|with (?:that|this|these) (?:done|in hand|known)"
        r"|going back|back to|returning to|首先|接下来|然后|现在|最后|其次)")),
    ("verification", 1.6, re.compile(
        r"^(?:(?:wait|hmm+|but|so|hold on)[,.!]?\s+)*(?:am i|are we|is (?:that|this|it)|was (?:that|this|it)|did i|do i|does (?:that|this|it)|have i|can (?:that|this) be)\b[^.?!]{0,80}\?")),
    ("reflection", 1.0, re.compile(
        r"^(?:wait|hmm+|hold on|hang on|oh|ah|oops|uh|huh|whoa|actually|no,|nope|but wait|but hold on|hmm,|well,? (?:wait|hmm)|等等|等一下|不对|嗯)")),
]

_HEAD_STRIP = re.compile(r"^[\s*#>\-–•_`]+")
_CONSEQ = re.compile(r"^(?:so|therefore|thus|hence|which|that|this|then|giving|gives|thereby|and so|because|since)\b[,]?", re.I)
_ANAPHOR = re.compile(r"^(?:(?:wait|hmm+|but|no|oh|ah|well|okay|ok|yes|right|hold on)[,.!]?\s+)*(?:that|this|it|these|those|such)\b(?!\s+(?:is|was) (?:the|my) (?:answer|final))")
_LIST_ITEM = re.compile(r"^\(?(\d{1,2})[.)]\s")
_EQ = re.compile(r"(?<![<>!=])=(?!=)")
_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*[a-zA-Z])")
_WORD = re.compile(r"[a-zA-Z]{3,}|[\u4e00-\u9fff]{2}")
_STOP = frozenset(
    "the and that this with from have then they them there their what which when would could should "
    "about into also some just like each only these those were been does make need know think right "
    "okay first next wait maybe because let's let for are but not you can was has had its our out "
    "get got see say says said now how any all one two way yes well hmm will can't don't it's that's "
    "here where other more most very much such than too again same still even back over down take "
    "use used using want try find give gives given going doing done thing things something".split())


def normalize_head(text: str, chars: int = 160) -> str:
    """The start of a step, lower-cased, without markdown bullets/emphasis and LaTeX dollars."""
    head = _HEAD_STRIP.sub("", text)[:chars]
    head = head.replace("**", "").replace("__", "")
    return head.strip().lower()


_FIRST_SENTENCE = re.compile(r"^.*?(?:[.?!:](?=\s|$)|$)", re.S)
_INNER = [
    ("verification", re.compile(rf"\b{_WE}\s+(?:just |quickly |also |now |briefly )?(?:{_VERIFY_VERB})\b")),
    ("alternative", re.compile(r"\b(?:alternatively|another (?:way|approach|method)|a different (?:way|approach|method)"
                               r"|try (?:something|a different|another) (?:approach|way|method))\b")),
]


def step_cue(text: str) -> tuple[str | None, float]:
    """(category, strength) of the strongest generic cue opening a step, or (None, 0).

    Cues at the very start count in full; a verification or alternative announced later in the
    first sentence ("That seems easy, but let me double-check it.") counts at 0.7.
    """
    head = normalize_head(text)
    best: tuple[str | None, float] = (None, 0.0)
    for cat, strength, rx in CUES:
        if strength > best[1] and rx.search(head):
            best = (cat, strength)
    first = _FIRST_SENTENCE.match(head)
    sentence = first.group(0) if first else head
    for cat, rx in _INNER:
        if rx.search(sentence):
            full = max((st for c, st, r in CUES if c == cat and r.search(sentence[rx.search(sentence).start():])),
                       default=1.7)
            if 0.7 * full > best[1]:
                best = (cat, 0.7 * full)
    return best


def _stem(w: str) -> str:
    w = w.lower()
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_tokens(text: str) -> set[str]:
    """Content words (stemmed, stop words out) and numbers of a text."""
    words = {_stem(w) for w in _WORD.findall(text)} - _STOP
    return words | {"#" + n.lstrip("0") for n in _NUM.findall(text)}


def numbers(text: str) -> set[str]:
    return {n.lstrip("0") or "0" for n in _NUM.findall(text)}


def _equations(text: str) -> set[str]:
    """Normalised 'lhs=rhs' pieces of a text (whitespace and $ removed), short ones only."""
    out = set()
    for line in re.split(r"[\n;]|(?<=\.)\s", text):
        if not _EQ.search(line) and not re.search(r"\b(?:gives|equals|makes|yields)\b", line):
            continue
        line = re.sub(r"\b(?:gives|is|equals|makes|yields|leaves)\b", "=", line)
        line = re.sub(r"[a-zA-Z]{2,}", " ", line)
        norm = re.sub(r"[\s$\\,]", "", line).rstrip(".")
        norm = re.sub(r"^[^0-9a-zA-Z(]*", "", norm)
        if 3 <= len(norm) <= 120 and re.search(r"\d", norm):
            # keep the arithmetic core: operands/operators around "="
            core = re.findall(r"[0-9a-zA-Z^/*+\-().]+=[0-9a-zA-Z^/*+\-().=]+", norm)
            out.update(c for c in core if re.search(r"\d", c))
    return out


def _alpha_words(text: str) -> int:
    return len(re.findall(r"[a-zA-Z]{2,}|[\u4e00-\u9fff]", text))


# --------------------------------------------------------------------------- config


class SegmentConfig(BaseModel):
    """Settings of the `segment` chunker (see the module docstring)."""

    base_thoughts: float = Field(9.0, gt=0, description="Target thoughts for traces of up to "
                                 "`base_steps` steps: about what people mark in a worked solution "
                                 "(problem, plan, a few derivations, checks, conclusion).")
    base_steps: int = Field(150, ge=1, description="Trace length (steps) up to which the target stays "
                            "at `base_thoughts`; longer traces get more thoughts.")
    per_doubling: float = Field(4.0, ge=0, description="Extra target thoughts per doubling of the "
                                "trace beyond `base_steps` (long traces hold more attempts and checks).")
    short_ratio: float = Field(0.65, gt=0, le=1.0, description="Target at most this share of steps "
                               "as thoughts in short traces (a 10-step trace has at most ~6 thoughts).")
    min_len_ratio: float = Field(0.3, ge=0, le=1.0, description="Minimum thought length as a share of "
                                 "the mean target length (steps/target); 0.3 lets a short check stand "
                                 "alone only where thoughts are short anyway.")
    threshold: float = Field(1.2, ge=0, description="Least evidence for a boundary at all (a lone "
                             "'Hmm' or a weak topic shift is not enough).")
    strong: float = Field(3.2, ge=0, description="Evidence above which a boundary is kept even beyond "
                          "the target count (an explicit alternative or verification pass that "
                          "also shifts topic).")
    window: int = Field(3, ge=1, description="Steps of context for the lexical shift in short traces; "
                        "grows with the target thought length in long ones.")
    shift_weight: float = Field(1.6, ge=0, description="Weight of lexical novelty (0..1) in the evidence.")
    number_weight: float = Field(0.9, ge=0, description="Weight of first use of a number given in "
                                 "the problem (a new given = a new sub-task).")
    block_weight: float = Field(0.5, ge=0, description="Weight of the block-level vocabulary shift "
                                "(z-score, long traces only: windows of >= 4 steps).")
    equation_weight: float = Field(0.9, ge=0, description="Weight of a new equation after a step without "
                                   "one (a computation starts).")


def target_thoughts(n_steps: int, cfg: SegmentConfig) -> float:
    """How many thoughts a person would mark in a trace of `n_steps` steps (see SegmentConfig)."""
    t = cfg.base_thoughts + cfg.per_doubling * math.log2(max(1.0, n_steps / cfg.base_steps))
    return max(1.0, min(t, cfg.short_ratio * n_steps))


# --------------------------------------------------------------------------- evidence


def boundary_evidence(steps: Sequence[str], problem: str = "", cfg: SegmentConfig | None = None
                      ) -> tuple[list[float], list[str | None]]:
    """Evidence (>= 0 when for, < 0 against) that a thought starts at each step, and its cue."""
    cfg = cfg or SegmentConfig()
    n = len(steps)
    target = target_thoughts(n, cfg)
    mean_len = n / target
    win = max(cfg.window, int(round(mean_len / 2)))
    cues = [step_cue(s) for s in steps]
    # "Therefore, m + n = 33." right before a bare final-answer line: the conclusion starts there
    for j in range(n - 1):
        if (cues[j][0] is None and _CONSEQ.match(normalize_head(steps[j])) and cues[j + 1][0] == "conclusion"
                and len(_HEAD_STRIP.sub("", steps[j + 1])) <= 60):
            cues[j] = ("conclusion", 2.5)
    toks = [content_tokens(s) for s in steps]
    eqs = [_equations(s) for s in steps]
    given = numbers(problem)
    block = _block_shift(toks, win, cfg.block_weight) if win >= 4 else [0.0] * n
    used: set[str] = set()
    seen_eq: set[str] = set()
    ev: list[float] = [0.0] * n
    before = _Window()  # the words of the `win` steps before j, slid along (linear in the trace)
    for j, s in enumerate(steps):
        cat, strength = cues[j]
        e = strength
        if j > 0:
            prev = steps[j - 1].rstrip()
            before.add(toks[j - 1])
            if j - 1 - win >= 0:
                before.remove(toks[j - 1 - win])
            if toks[j]:
                novelty = sum(1 for t in toks[j] if t not in before.counts) / len(toks[j])
                # a 2-word step says little about a topic shift: trust novelty by its length
                e += cfg.shift_weight * (novelty - 0.45) * min(1.0, len(toks[j]) / 6)
            e += block[j]
            nums_j = numbers(s)
            new_given = (nums_j & given) - used
            if new_given and cat not in ("verification", "conclusion") and (eqs[j] or seen_eq):
                e += cfg.number_weight
            if eqs[j]:
                if eqs[j] <= seen_eq and cat is None:
                    e += 0.6  # an old equation again: a recomputation (check) begins
                elif not eqs[j - 1] and eqs[j] - seen_eq and cat is None:
                    e += cfg.equation_weight * 0.6
            # continuation evidence
            head = _HEAD_STRIP.sub("", s)[:40]
            if prev.endswith((":", "：")) or prev.endswith(("=", "\\")):
                e -= 3.0
            if head[:1].islower() and cat is None:
                e -= 0.8
            if head[:1] in "=+-−*/^)]}" or head.startswith(("\\[", "\\(", "$$")):
                e -= 1.2
            if _alpha_words(s) < 3:
                e -= 1.0
            m, mp = _LIST_ITEM.match(head), _LIST_ITEM.match(_HEAD_STRIP.sub("", prev)[:10])
            if m and int(m.group(1)) > 1 and (mp is not None or cat is None):
                e -= 2.0
            if cat is None and _CONSEQ.match(head):
                e -= 0.7
            if cat in (None, "reflection") and _ANAPHOR.match(normalize_head(s)):
                e -= 1.2  # "Hmm, that gets messy": judging the step before, not a new purpose
            if cat == "conclusion" and cues[j - 1][0] == "conclusion":
                e -= 3.0  # "So the answer is 5." then "**Final Answer** \boxed{5}": one conclusion
        used |= numbers(s)
        seen_eq |= eqs[j]
        ev[j] = e
    return ev, [c for c, _ in cues]


class _Window:
    """Word counts of a sliding window of steps, with their squared norm and the dot product
    with a partner window, kept up to date one word at a time (integers, so exact)."""

    def __init__(self, partner: _Window | None = None) -> None:
        self.counts: dict[str, int] = {}
        self.sq = 0
        self.dot = 0
        self.partner = partner

    def _bump(self, word: str, d: int) -> None:
        v = self.counts.get(word, 0)
        self.sq += 2 * v * d + 1  # (v + d)^2 - v^2 for d = +-1
        if self.partner is not None:
            w = self.partner.counts.get(word, 0)
            self.dot += d * w
            self.partner.dot = self.dot
        if v + d:
            self.counts[word] = v + d
        else:
            del self.counts[word]

    def add(self, words: set[str]) -> None:
        for w in words:
            self._bump(w, 1)

    def remove(self, words: set[str]) -> None:
        for w in words:
            self._bump(w, -1)


def _block_shift(toks: Sequence[set[str]], win: int, weight: float) -> list[float]:
    """TextTiling-style evidence: how much less the `win` steps after j share words with the
    `win` steps before j than is usual in this trace (z-score of 1 - cosine, clipped). Both
    windows slide one step at a time, so a trace costs time linear in its words."""
    n = len(toks)
    raw = [0.0] * n
    a = _Window()
    b = _Window(partner=a)
    a.partner = b
    for t in toks[0:win]:
        b.add(t)
    for j in range(1, n):
        # a: steps [j - win, j); b: steps [j, j + win)
        a.add(toks[j - 1])
        if j - 1 - win >= 0:
            a.remove(toks[j - 1 - win])
        b.remove(toks[j - 1])
        if j + win - 1 < n:
            b.add(toks[j + win - 1])
        na, nb = math.sqrt(a.sq), math.sqrt(b.sq)
        raw[j] = 1.0 - (a.dot / (na * nb) if na and nb else 0.0)
    vals = raw[1:]
    if len(vals) < 3:
        return [0.0] * n
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals)) or 1.0
    return [0.0] + [weight * max(-1.0, min(2.0, (v - mu) / sd)) for v in vals]


# --------------------------------------------------------------------------- selection


def select_boundaries(evidence: Sequence[float], cfg: SegmentConfig | None = None) -> list[int]:
    """0-based step indices that start a thought (0 always), chosen by evidence and granularity."""
    cfg = cfg or SegmentConfig()
    n = len(evidence)
    if n == 0:
        return []
    target = target_thoughts(n, cfg)
    min_len = max(1, int(round(cfg.min_len_ratio * n / target)))
    order = sorted(range(1, n), key=lambda j: (-evidence[j], j))
    chosen: list[int] = []
    for j in order:
        e = evidence[j]
        if e < cfg.threshold:
            break
        if len(chosen) + 1 >= target and e < cfg.strong:
            continue
        if j < min_len or n - j < min_len:
            continue
        if any(abs(j - c) < min_len for c in chosen):
            continue
        chosen.append(j)
    return [0] + sorted(chosen)


def _segment_category(cats: Sequence[str | None], steps: Sequence[str], k: int, last: bool) -> str:
    text = " ".join(steps)
    if last and ("\\boxed" in text or re.search(r"final answer", text, re.I)) and len(steps) <= 6:
        return "conclusion"
    if k == 0:
        return "understanding"
    for c in cats[:2]:
        if c in ("verification", "alternative", "conclusion", "understanding", "planning"):
            return c
    if cats and cats[0] == "reflection":
        return "other" if len(steps) <= 2 and not _equations(text) else "computation"
    return "computation"


_TYPE_NAMES = {"understanding": "problem understanding", "planning": "planning",
               "computation": "derivation", "verification": "verification",
               "alternative": "alternative approach", "conclusion": "conclusion", "other": "reflection"}


def segment_chunk(steps: Sequence[str], problem: str = "", config: SegmentConfig | None = None
                  ) -> list[dict[str, Any]]:
    """Thoughts `{start, end, type, category, text}` of a trace's steps (see module docstring)."""
    from longshort.thoughts.steps import make_thought

    cfg = config or SegmentConfig()
    n = len(steps)
    if n == 0:
        return []
    ev, cats = boundary_evidence(steps, problem, cfg)
    starts = select_boundaries(ev, cfg)
    out = []
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else n
        cat = _segment_category(cats[s:e], steps[s:e], k, e == n)
        out.append(make_thought(steps, s + 1, e, _TYPE_NAMES[cat], cat))
    return out
