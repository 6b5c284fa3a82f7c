"""Benchmark scorers (the reference protocol, docs/evaluation.md), pure Python: no JAX.

- `last_boxed`: the reference's answer extraction (last `\\boxed`, else last `\\fbox`).
- GSM8K: the integer of the box (else of the whole text), `gsm8k_answer`.
- MATH: math-verify equivalence of the gold and the box (else the text), `math_correct`, with
  the reference's bare strings (`scorer="reference"`) or in `$...$` (`scorer="latex"`).
- DROP: lm-evaluation-harness's EM / F1 (`lm_eval/tasks/drop/utils.py`), `drop_em_f1`.
- Multiple choice: one generated token read as the letter; an invalid answer earns
  1/num_choices (the expected credit of a uniform guess), `mcq_credit`; MMLU-Pro's
  free-form answers give their letter through `mmlu_pro_letter`.
- AIME: integer votes `aime_vote`, `maj_pass_at_k` over the most frequent votes, and the
  unbiased `pass_at_k` of Chen et al. (2021) with math-verify correctness `aime_correct`.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Hashable, Optional, Sequence

import numpy as np

LETTERS = string.ascii_uppercase
MATH_SCORERS = ("reference", "latex")


def last_boxed(text: str) -> Optional[str]:
  """The reference's extraction: after the last `\\boxed` (or, when there is none, the last
  `\\fbox`), the content of the first brace group (nested braces balanced), stripped; None
  when there is neither or the group never closes."""
  start = text.rfind("\\boxed")
  if start < 0:
    start = text.rfind("\\fbox")
    if start < 0:
      return None
  depth, left = 0, None
  for i in range(start, len(text)):
    if text[i] == "{":
      depth += 1
      left = i if left is None else left
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return None if left is None else text[left + 1:i].strip()
  return None


def gsm8k_answer(text: str) -> Optional[int]:
  """A non-empty box's content (else the whole text), commas and `$` removed, stripped, as
  `int(float(...))`; None when that fails (not a number, inf, nan)."""
  raw = last_boxed(text) or text
  try:
    return int(float(raw.replace(",", "").replace("$", "").strip()))
  except (ValueError, OverflowError):
    return None


def _as_latex(answer: str) -> str:
  """Bare LaTeX in math delimiters: math-verify's LaTeX extraction looks for them and its
  fallback reads `\\sqrt{2}` as nothing and `2\\pi` as 2."""
  return answer if "$" in answer else f"${answer}$"


def math_correct(text: str, gold: str, scorer: str = "reference") -> bool:
  """math-verify: `verify(parse(gold), parse(box, else the whole text))`. "reference" parses
  the bare strings as the reference does; "latex" first wraps gold and box in `$...$`."""
  from math_verify import parse, verify  # imported here: sympy/antlr load take seconds
  if scorer not in MATH_SCORERS:
    raise ValueError(f"math scorer {scorer!r}: expected one of {MATH_SCORERS}")
  boxed = last_boxed(text)
  if scorer == "reference":
    return bool(verify(parse(gold), parse(text if boxed is None else boxed)))
  return bool(verify(parse(_as_latex(gold)), parse(text if boxed is None else _as_latex(boxed))))


# --- DROP, as lm-evaluation-harness 0.4 (lm_eval/tasks/drop/utils.py) ---------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _normalize_token(token: str) -> str:
  token = token.lower()
  if not _is_number(token):
    token = "".join(ch for ch in token if ch not in _PUNCT)
  if _is_number(token):
    token = str(float(token))
  return " ".join(_ARTICLES.sub(" ", token).split())


def _normalize(span: str) -> str:
  tokens = [_normalize_token(t) for t in re.split(" |-", span)]
  return " ".join(t for t in tokens if t.strip()).strip()


def _bags(spans: Sequence[str]) -> tuple[list[str], list[set[str]]]:
  normalized = [_normalize(s) for s in spans]
  return normalized, [set(n.split()) for n in normalized]


def _f1(pred: set[str], gold: set[str]) -> float:
  common = len(gold & pred)
  precision = common / len(pred) if pred else 1.0
  recall = common / len(gold) if gold else 1.0
  if precision == 0.0 and recall == 0.0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def _numbers_match(gold: set[str], pred: set[str]) -> bool:
  """A gold bag with numbers only matches a predicted bag sharing one of them."""
  gold_numbers = {w for w in gold if _is_number(w)}
  return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def _drop_metrics(pred_spans: Sequence[str], gold_spans: Sequence[str]) -> tuple[float, float]:
  """(EM, F1) of one prediction against one gold answer (both lists of spans): EM compares
  the normalised span sets; F1 averages the best one-to-one alignment of token bags."""
  from scipy.optimize import linear_sum_assignment
  pred_norm, pred_bags = _bags(pred_spans)
  gold_norm, gold_bags = _bags(gold_spans)
  em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
  scores_GxP = np.zeros((len(gold_bags), len(pred_bags)))
  for g, gold in enumerate(gold_bags):
    for p, pred in enumerate(pred_bags):
      if _numbers_match(gold, pred):
        scores_GxP[g, p] = _f1(pred, gold)
  rows, cols = linear_sum_assignment(-scores_GxP)
  best = np.zeros(max(len(gold_bags), len(pred_bags)))
  for r, c in zip(rows, cols):
    best[r] = max(best[r], scores_GxP[r, c])
  return em, float(round(np.mean(best), 2))  # numpy's rounding, as lm-eval


def drop_em_f1(text: str, golds: Sequence[Sequence[str]]) -> tuple[float, float]:
  """(EM, F1) of a generated answer: the maximum over gold answers (each a tuple of spans;
  golds whose first span is blank are skipped), the prediction being one span."""
  em, f1 = 0.0, 0.0
  for gold in golds:
    gold = tuple(gold)
    g_em, g_f1 = _drop_metrics([text], gold)
    if gold and gold[0].strip():
      em, f1 = max(em, g_em), max(f1, g_f1)
  return em, f1


# --- multiple choice ------------------------------------------------------------------------

def mcq_credit(text: str, num_choices: int, gold_letter: str) -> float:
  """1 for the gold letter, 0 for another valid letter, 1/num_choices for anything else."""
  if not 1 <= num_choices <= len(LETTERS):
    raise ValueError(f"mcq_credit: num_choices={num_choices} must be in [1, {len(LETTERS)}]")
  answer = text.strip().upper()
  if len(answer) != 1 or answer not in LETTERS[:num_choices]:
    return 1.0 / num_choices
  return float(answer == gold_letter)


# --- MMLU-Pro ---------------------------------------------------------------------------------

def mmlu_pro_letter(text: str, num_options: int) -> Optional[str]:
  """The answer letter of a free-form MMLU-Pro output: in the box if there is a non-empty one
  (else the whole text), the last `(X)` of a valid letter, else the last valid letter
  standing alone as a word; None if there is none."""
  text = last_boxed(text) or text
  letters = "|".join(LETTERS[:num_options])
  for pattern in (rf"\(({letters})\)", rf"\b({letters})\b"):
    found = re.findall(pattern, text)
    if found:
      return found[-1]
  return None


# --- AIME: votes, majority and pass@k -------------------------------------------------------

def aime_vote(text: str) -> Optional[int]:
  """The box's content (else the whole text) read by `int()`, if it lies in 1..999 (an AIME
  answer); None otherwise."""
  boxed = last_boxed(text)
  try:
    value = int(text if boxed is None else boxed)
  except ValueError:
    return None
  return value if 1 <= value <= 999 else None


def aime_correct(text: str, gold: int) -> bool:
  """math-verify of the box (else the text) against the gold integer's string."""
  from math_verify import parse, verify
  boxed = last_boxed(text)
  return bool(verify(str(gold), parse(text if boxed is None else boxed)))


def maj_pass_at_k(votes: Sequence[Optional[Hashable]], gold: Hashable, k: int) -> float:
  """1.0 if `gold` is among the k most frequent valid votes of all samples (ties in the
  order first seen; None votes are not counted)."""
  if k < 1:
    raise ValueError(f"maj_pass@k: need k >= 1, got {k}")
  ranked = collections.Counter(v for v in votes if v is not None).most_common()
  return float(gold in [v for v, _ in ranked[:k]])


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), evaluated as
  the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al. 2021)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k: need 0 <= c={c} <= n={n} and 1 <= k={k} <= n")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
