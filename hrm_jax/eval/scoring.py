"""Benchmark scorers (REFERENCE section 6), pure Python: no JAX, no model.

- GSM8K / AIME: the integer in the last `\\boxed{}` (or the whole text), `gsm8k_answer`.
- MATH: math-verify equivalence of the gold and the last boxed content, `math_correct`.
- DROP: lm-evaluation-harness's EM / F1 (`lm_eval/tasks/drop/utils.py`), `drop_em_f1`.
- Multiple choice: one generated token read as the letter; an invalid answer earns
  1/num_choices (the expected credit of a uniform guess), `mcq_credit`.
- AIME sampling: majority vote `maj_at_k` and the unbiased `pass_at_k` of Chen et al. (2021).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Hashable, Optional, Sequence

import numpy as np

LETTERS = string.ascii_uppercase
_BOXED = "\\boxed{"


def last_boxed(text: str) -> Optional[str]:
  """Content of the last `\\boxed{...}` (nested braces balanced), or None if there is none or
  it is never closed."""
  start = text.rfind(_BOXED)
  if start < 0:
    return None
  depth, i = 1, start + len(_BOXED)
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return None


def gsm8k_answer(text: str) -> Optional[int]:
  """The last boxed content (else the whole text), commas and `$` stripped, as
  `int(float(...))`; None when that fails (not a number, inf, nan)."""
  boxed = last_boxed(text)
  raw = (text if boxed is None else boxed).replace(",", "").replace("$", "")
  try:
    return int(float(raw))
  except (ValueError, OverflowError):
    return None


def _as_latex(answer: str) -> str:
  """Bare LaTeX in math delimiters: math-verify's LaTeX extraction looks for them and its
  fallback reads `\\sqrt{2}` as nothing and `2\\pi` as 2."""
  return answer if "$" in answer else f"${answer}$"


def math_correct(text: str, gold: str) -> bool:
  """math-verify: `verify(parse(gold), parse(last boxed content, else the whole text))`,
  boxed content and gold read as LaTeX (`$...$`)."""
  from math_verify import parse, verify  # imported here: sympy/antlr load take seconds
  boxed = last_boxed(text)
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


# --- sampling: majority vote and pass@k -----------------------------------------------------

def majority(answers: Sequence[Optional[Hashable]]) -> Optional[Hashable]:
  """The most frequent non-None answer (ties: the one seen first); None if none is valid."""
  counts = collections.Counter(a for a in answers if a is not None)
  return counts.most_common(1)[0][0] if counts else None


def maj_at_k(answers: Sequence[Optional[Hashable]], gold: Hashable, k: int) -> float:
  """1.0 if the majority vote of the first k samples is the gold answer."""
  if not 1 <= k <= len(answers):
    raise ValueError(f"maj@k: need 1 <= k={k} <= samples={len(answers)}")
  return float(majority(answers[:k]) == gold)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), evaluated as
  the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al. 2021)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k: need 0 <= c={c} <= n={n} and 1 <= k={k} <= n")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
