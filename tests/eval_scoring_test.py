"""hrm_jax.eval.scoring: every scorer on hand-made right / wrong / invalid answers, both MATH
scorers against hand judgement on fixture cases, DROP against lm-evaluation-harness itself,
pass@k against the exact binomial formula."""

import fractions
import json
import math
import pathlib
import random

import pytest
from lm_eval.tasks.drop import utils as lm_eval_drop

from hrm_jax.eval import scoring

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "eval"


def test_last_boxed_follows_the_reference_extraction():
  assert scoring.last_boxed(r"first \boxed{1} then \boxed{\frac{2}{3}} end") == r"\frac{2}{3}"
  assert scoring.last_boxed(r"\boxed{a{b}c}") == "a{b}c"
  assert scoring.last_boxed(r"\boxed{ 4 }") == "4"                 # stripped
  assert scoring.last_boxed(r"\fbox{3}") == "3"                    # \fbox when no \boxed
  assert scoring.last_boxed(r"\boxed{2} then \fbox{1}") == "2"     # any \boxed wins
  assert scoring.last_boxed(r"\boxed 5 and {x}") == "x"            # the first group after it
  assert scoring.last_boxed(r"\boxed{}") == ""
  assert scoring.last_boxed("no box here") is None
  assert scoring.last_boxed(r"\boxed{never closed") is None
  assert scoring.last_boxed(r"\boxed{1} \boxed 2") is None        # the last has no group


@pytest.mark.parametrize("text, expected", [
    (r"so the total is \boxed{42}.", 42),             # right, boxed
    (r"\boxed{1,234}", 1234),                         # commas stripped
    (r"\boxed{\$18}", None),                          # a backslash stays: not a number
    (r"cost \boxed{$18}", 18),                        # $ stripped
    (r"\boxed{7.9}", 7),                              # int(float(.)) truncates
    (r"\boxed{-3}", -3),
    (r"\fbox{12}", 12),
    ("  56 ", 56),                                    # no box: the whole text
    ("The answer is 56", None),                       # whole text is not a number
    (r"\boxed{1} and later \boxed{2}", 2),            # the last box
    (r"\boxed{x}", None),                             # invalid content
    (r"\boxed{}", None),                              # empty box: the whole text, no number
    (r"\boxed{inf}", None),                           # int(float('inf')) overflows
    (r"\boxed{nan}", None),
])
def test_gsm8k_answer(text, expected):
  assert scoring.gsm8k_answer(text) == expected


def math_cases() -> list[dict]:
  """Outputs, golds and a hand judgement of whether the output is mathematically right."""
  return [json.loads(l) for l in (FIXTURES / "math_scorer_cases.jsonl").read_text().splitlines()]


def test_math_scorers_against_hand_judgement():
  """The reference scorer (bare strings) and the latex one ($...$) on the fixture cases: the
  counts docs/evaluation.md quotes. Bare LaTeX falls back to plain-expression parsing, which reads
  `\\sqrt{2}`, `(1,2)` or `\\text{..}` as nothing and `2\\pi` as 2."""
  cases = math_cases()
  wrong = {s: [c for c in cases if scoring.math_correct(c["output"], c["gold"], s)
               is not c["correct"]] for s in scoring.MATH_SCORERS}
  assert len(cases) == 34
  assert [c["gold"] for c in wrong["latex"]] == ["18"]           # `\\$18` keeps its backslash
  ref = wrong["reference"]
  assert len(ref) == 15
  assert [c["gold"] for c in ref if not c["correct"]] == [r"2\pi", r"6\pi", r"2\sqrt{2}"]
  assert all(c["correct"] for c in ref[:2]) and ref[0]["gold"] == r"\frac{1}{2}"  # \dfrac
  # On integer golds, the bulk of MATH's answers, the two scorers agree.
  for c in cases:
    if c["gold"].lstrip("-").isdigit():
      assert scoring.math_correct(c["output"], c["gold"], "reference") is scoring.math_correct(
          c["output"], c["gold"], "latex"), c
  with pytest.raises(ValueError, match="math scorer 'sympy'"):
    scoring.math_correct("1", "1", "sympy")


@pytest.mark.parametrize("text, gold, expected", [
    (r"Thus \boxed{\frac{1}{2}}.", r"\frac{1}{2}", True),   # right
    (r"Thus \boxed{0.5}.", r"\frac{1}{2}", True),           # equivalent value
    (r"Thus \boxed{\frac{1}{3}}.", r"\frac{1}{2}", False),  # wrong
    ("32", "32", True),                                     # no box: the whole text
    ("I do not know", "32", False),                         # invalid
    (r"\boxed{5} first, finally \boxed{6}", "5", False),    # only the last box counts
])
def test_math_correct_reference_scorer(text, gold, expected):
  assert scoring.math_correct(text, gold) is expected


def test_mmlu_pro_letter():
  assert scoring.mmlu_pro_letter(r"so \boxed{(C)}", 10) == "C"
  assert scoring.mmlu_pro_letter("(A) looks right but (B) is", 4) == "B"   # last (X)
  assert scoring.mmlu_pro_letter("I pick A, then D.", 4) == "D"           # last bare letter
  assert scoring.mmlu_pro_letter("(E) or (A)", 4) == "A"                  # E is no option
  assert scoring.mmlu_pro_letter("DA BAD", 4) is None                     # not standing alone
  assert scoring.mmlu_pro_letter(r"\boxed{} the answer is (J)", 10) == "J"  # empty box: text


def test_aime_votes_and_correctness():
  assert scoring.aime_vote(r"\boxed{ 70 }") == 70
  assert scoring.aime_vote("  7 ") == 7
  assert [scoring.aime_vote(t) for t in ("0", "1000", "70.0", r"\boxed{x}", "-5")] == [None] * 5
  assert scoring.aime_correct(r"so \boxed{70}", 70)
  assert scoring.aime_correct("The answer is 70", 70)  # math-verify reads the text
  assert not scoring.aime_correct(r"\boxed{70.0}", 70)
  assert not scoring.aime_correct(r"\boxed{71}", 70)


def test_mcq_credit_right_wrong_invalid():
  assert scoring.mcq_credit("B", 4, "B") == 1.0
  assert scoring.mcq_credit(" b\n", 4, "B") == 1.0        # stripped and upper-cased
  assert scoring.mcq_credit("C", 4, "B") == 0.0
  assert scoring.mcq_credit("E", 4, "B") == 0.25          # not a valid letter for 4 choices
  assert scoring.mcq_credit("", 4, "B") == 0.25
  assert scoring.mcq_credit("AB", 4, "A") == 0.25
  assert scoring.mcq_credit("<|box_end|>", 2, "A") == 0.5
  with pytest.raises(ValueError, match="num_choices=0"):
    scoring.mcq_credit("A", 0, "A")


def test_drop_worked_cases():
  """Hand-computed: EM on normalised spans, F1 over token bags, numbers must match."""
  assert scoring.drop_em_f1("Dale Pim", [("Dale Pim",)]) == (1.0, 1.0)
  assert scoring.drop_em_f1("the Dale Pim.", [("Dale Pim",)]) == (1.0, 1.0)  # article, punct.
  # {dale} vs {dale, pim}: precision 1, recall 1/2 -> F1 2/3 -> 0.67.
  assert scoring.drop_em_f1("Dale", [("Dale Pim",)]) == (0.0, 0.67)
  assert scoring.drop_em_f1("600", [("600",)]) == (1.0, 1.0)
  assert scoring.drop_em_f1("600.0", [("600",)]) == (1.0, 1.0)    # numbers normalised
  assert scoring.drop_em_f1("600 people", [("600",)]) == (0.0, 0.67)
  assert scoring.drop_em_f1("601 people", [("600 people",)]) == (0.0, 0.0)  # number mismatch
  # Multi-span gold, one predicted span: bags {otters herons} vs {otters}, {herons}; the
  # best assignment gives otters<->otters (F1 2/3), herons unmatched (0): mean 1/3.
  assert scoring.drop_em_f1("Otters Herons", [("Otters", "Herons")]) == (0.0, 0.33)
  # Max over golds; a gold with a blank first span is skipped.
  assert scoring.drop_em_f1("1811", [("",), ("1811",)]) == (1.0, 1.0)
  assert scoring.drop_em_f1("x", [("",)]) == (0.0, 0.0)


WORDS = ["the", "a", "an", "Dale", "Pim", "Otters", "herons", "field", "goal", "two", "2",
         "2.0", "1,000", "1000", "40-yard", "run.", "Vell's", "-", "3.50", "(a)", "", "  ",
         "January", "1811", "touch-down", "AN", "The"]


def random_span(rng: random.Random) -> str:
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4)))


def test_drop_matches_lm_evaluation_harness_on_random_cases():
  """Exact equality (no tolerance) with lm_eval.tasks.drop.utils.process_results."""
  rng = random.Random(0)
  for _ in range(3000):
    pred = random_span(rng)
    golds = [tuple(random_span(rng) for _ in range(rng.randint(1, 3)))
             for _ in range(rng.randint(1, 3))]
    want = lm_eval_drop.process_results({"answers": golds}, [pred])
    assert scoring.drop_em_f1(pred, golds) == (want["em"], want["f1"]), (pred, golds)


def test_pass_at_k_is_the_exact_binomial_estimator():
  """1 - C(n-c, k)/C(n, k) in exact rationals; the stable product agrees to 1e-12."""
  for n in range(1, 25):
    for c in range(n + 1):
      for k in range(1, n + 1):
        exact = 1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k))
        assert scoring.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
  assert scoring.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
  assert scoring.pass_at_k(10, 0, 5) == 0.0 and scoring.pass_at_k(10, 6, 5) == 1.0
  assert 0.0 < scoring.pass_at_k(1000, 1, 1) < 0.01  # large n: no overflow
  with pytest.raises(ValueError, match="k=11"):
    scoring.pass_at_k(10, 1, 11)


def test_maj_pass_at_k():
  votes = [5, None, 7, 7, 5, 5, 9]
  assert scoring.maj_pass_at_k(votes, 5, 1) == 1.0              # 5 x3, 7 x2, 9 x1
  assert scoring.maj_pass_at_k(votes, 7, 1) == 0.0
  assert scoring.maj_pass_at_k(votes, 7, 2) == 1.0
  assert scoring.maj_pass_at_k(votes, 9, 2) == 0.0 and scoring.maj_pass_at_k(votes, 9, 100) == 1.0
  assert scoring.maj_pass_at_k([3, 4], 4, 1) == 0.0            # tie: the first seen ranks first
  assert scoring.maj_pass_at_k([None] * 3, 0, 10) == 0.0
  with pytest.raises(ValueError, match="k >= 1"):
    scoring.maj_pass_at_k(votes, 5, 0)
