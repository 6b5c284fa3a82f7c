"""The benchmarks of the reference protocol (docs/evaluation.md): data schema, prompt, shots,
condition, generation settings and per-item scoring of each.

| benchmark  | condition | shots                        | generation (context)             |
|------------|-----------|------------------------------|----------------------------------|
| GSM8K      | synth,cot | 0                            | greedy, to the context (3072)    |
| MATH       | synth,cot | 0                            | greedy, to the context (3072)    |
| DROP       | direct    | 3 fixed (`drop_shots`)       | greedy, to the context (3072)    |
| MMLU       | direct    | 5 dev rows of the subject    | one token (4096)                 |
| ARC-C      | direct    | first 25 of validation       | one token (4096)                 |
| HellaSwag  | direct    | first 10 of train            | one token (4096)                 |
| Winogrande | direct    | first 5 of train (debiased)  | one token (4096)                 |
| BoolQ      | direct    | first 5 of train             | one token (4096)                 |
| AIME       | synth,cot | 0                            | 256 samples at T 0.6 (4096)      |
| MMLU-Pro   | synth,cot | 0                            | greedy, to the context (3072)    |

A prompt is the text `prompt()` returns (already stripped, as the reference engine strips
it); the engine wraps it in boq + condition tokens + text + eoq. AIME and MMLU-Pro are not in
the default run (`DEFAULT`), as in the reference's default configuration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

from hrm_jax.eval import drop_shots, scoring
from hrm_jax.eval.sources import EvalDataError, Split

CONTEXT = 3072  # GSM8K, MATH, DROP, MMLU-Pro: prompt + generation
MCQ_CONTEXT = 4096  # the five one-token multiple-choice benchmarks
AIME_CONTEXT = 4096
AIME_TEMPERATURE = 0.6
AIME_SAMPLES = 256
AIME_KS = (1, 10, 100)
MMLU_SHOTS = 5
MMLU_SPECIAL_SHOTS = (("high_school_european_history", 3),)  # its 5-shot prompts are too long
DEFAULT = ("GSM8K", "MATH", "DROP", "MMLU", "ARC-C", "HellaSwag", "Winogrande", "BoolQ")


@dataclasses.dataclass(frozen=True)
class GenSettings:
  """How a benchmark generates; benchmarks with equal settings share one stream.

  context: prompt + generation fit in it; a longer prompt gets an empty output (invalid).
  max_new_tokens: a fixed budget (one token for multiple choice); None: to the context.
  """
  context: int
  max_new_tokens: Optional[int] = None
  temperature: float = 0.0
  samples: int = 1

  @property
  def open_ended(self) -> bool:
    """Generation to the context (the --max_new_tokens cap applies)."""
    return self.max_new_tokens is None


@dataclasses.dataclass(frozen=True)
class Example:
  """One benchmark item: its own text (a multiple-choice query, a bare problem, DROP's
  passage and question), the gold answer, the choices of a multiple-choice item and its group
  (MMLU subject, MMLU-Pro category)."""
  text: str
  gold: Any
  choices: tuple[str, ...] = ()
  group: str = ""


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  folder: str  # <data_dir>/<folder>/<split>.jsonl|.parquet
  eval_split: Split
  shot_split: Optional[Split]
  shots: int
  condition: str
  columns: tuple[str, ...]  # documented in the missing-file error
  parse: Callable[[dict, str], Example]  # (row, "file: row i") -> Example
  render: Callable[[Example, Sequence[Example]], str]  # (item, its shots) -> prompt text
  score: Callable[[Example, list[str]], dict[str, float]]  # item metrics from its outputs
  metric: str  # the headline metric, one of score's keys
  settings: GenSettings
  special_shots: tuple[tuple[str, int], ...] = ()  # (group, shots) exceptions
  macro_by_group: bool = False


# --- prompts ---------------------------------------------------------------------------------

def mcq_block(ex: Example, with_answer: bool) -> str:
  """`query`, one `L. choice` line per choice, then `Answer: L` (a shot) or `Answer:`."""
  lines = [ex.text.strip()] + [f"{scoring.LETTERS[i]}. {c.strip()}"
                               for i, c in enumerate(ex.choices)]
  return "\n".join(lines) + ("\nAnswer: " + ex.gold if with_answer else "\nAnswer:")


def render_mcq(ex: Example, shots: Sequence[Example]) -> str:
  return "".join(mcq_block(s, True) + "\n\n" for s in shots) + mcq_block(ex, False)


DROP_PREFIX = "".join(f"{p}\nQ: {q}\nA: {a}\n\n" for p, q, a in drop_shots.SHOTS)


def render_drop(ex: Example, shots: Sequence[Example]) -> str:
  del shots  # DROP's shots are fixed
  return DROP_PREFIX + ex.text


def render_bare(ex: Example, shots: Sequence[Example]) -> str:
  del shots
  return ex.text


def shot_pool(bench: Benchmark, shot_examples: Sequence[Example], ex: Example) -> list[Example]:
  """The shots of `ex`: the first `bench.shots` shot rows (MMLU: of its subject, fewer when
  the subject has fewer or is one of `special_shots`)."""
  if bench.macro_by_group:
    k = dict(bench.special_shots).get(ex.group, bench.shots)
    return [s for s in shot_examples if s.group == ex.group][:k]
  return list(shot_examples[:bench.shots])


def prompt(bench: Benchmark, ex: Example, shot_examples: Sequence[Example]) -> str:
  """The exact text the model reads between boq + condition and eoq (stripped)."""
  return bench.render(ex, shot_pool(bench, shot_examples, ex)).strip()


# --- parsing rows of each source schema -----------------------------------------------------

def _field(row: dict, name: str, where: str, kind: type | tuple = str) -> Any:
  if name not in row or row[name] is None:
    raise EvalDataError(f"{where}: missing field {name!r} (has {sorted(row)})")
  value = row[name]
  if not isinstance(value, kind):
    raise EvalDataError(f"{where}: field {name!r} should be {kind}, got {type(value).__name__} "
                        f"{value!r:.80}")
  return value


def _int_field(row: dict, name: str, where: str) -> int:
  value = _field(row, name, where, (int, str))
  try:
    return int(value)
  except ValueError as e:
    raise EvalDataError(f"{where}: field {name!r} should be an integer, got {value!r}") from e


def _mcq(query: str, choices: Sequence[Any], gold_index: int, where: str,
         group: str = "") -> Example:
  if not 2 <= len(choices) <= len(scoring.LETTERS):
    raise EvalDataError(f"{where}: need 2..26 choices, got {len(choices)}")
  if not 0 <= gold_index < len(choices):
    raise EvalDataError(f"{where}: answer index {gold_index} outside the {len(choices)} choices")
  return Example(query, scoring.LETTERS[gold_index], tuple(str(c) for c in choices), group)


def parse_gsm8k(row: dict, where: str) -> Example:
  answer = _field(row, "answer", where)
  if "####" not in answer:
    raise EvalDataError(f"{where}: field 'answer' has no '#### <number>' final answer")
  final = answer.split("####")[-1].strip().replace(",", "")
  try:
    gold = int(final)
  except ValueError as e:
    raise EvalDataError(f"{where}: the '####' answer {final!r} is not an integer") from e
  return Example(_field(row, "question", where), gold)


def parse_math(row: dict, where: str) -> Example:
  """Gold = the last box of `solution` (EleutherAI/hendrycks_math has no answer column)."""
  gold = scoring.last_boxed(_field(row, "solution", where))
  if gold is None:
    raise EvalDataError(f"{where}: field 'solution' has no \\boxed{{}} answer")
  return Example(_field(row, "problem", where), gold)


def parse_aime(row: dict, where: str) -> Example:
  """Gold = the integer `answer`, else the last box of `solution`."""
  answer = row.get("answer")
  if answer is None and isinstance(row.get("solution"), str):
    answer = scoring.last_boxed(row["solution"])
  try:
    gold = int(answer)
  except (TypeError, ValueError) as e:
    raise EvalDataError(f"{where}: field 'answer' should be an integer (or 'solution' hold a "
                        f"boxed one), got {answer!r}") from e
  return Example(_field(row, "problem", where), gold)


def drop_golds(row: dict, where: str) -> list[tuple[str, ...]]:
  """Gold answers as span tuples, as lm-evaluation-harness's DROP `process_docs`:
  `answer` plus `validated_answers` (number, else spans, else the date 'day month year'),
  deduplicated. ucinlp/drop rows (`answers_spans`) give one gold of all their spans."""
  if "answers_spans" in row:
    spans = _field(row, "answers_spans", where, dict).get("spans")
    if not isinstance(spans, list) or not spans:
      raise EvalDataError(f"{where}: field 'answers_spans' needs a non-empty 'spans' list")
    return [tuple(str(s) for s in spans)]

  def parse(ans: dict) -> tuple[str, ...]:
    if ans["number"] != "":
      return (str(ans["number"]),)
    if ans["spans"]:
      return tuple(ans["spans"])
    date = ans["date"]
    return (" ".join([date["day"], date["month"], date["year"]]).strip(),)

  answer = _field(row, "answer", where, dict)
  validated = row.get("validated_answers") or {"number": [], "date": [], "spans": []}
  try:
    candidates = [answer] + [{"number": validated["number"][i], "date": validated["date"][i],
                              "spans": validated["spans"][i]}
                             for i in range(len(validated["number"]))]
    golds: list[tuple[str, ...]] = []
    for cand in candidates:
      gold = parse(cand)
      if gold not in golds:
        golds.append(gold)
  except (KeyError, TypeError, IndexError) as e:
    raise EvalDataError(f"{where}: field 'answer'/'validated_answers' should follow the "
                        f"EleutherAI/drop schema (number, date{{day,month,year}}, spans): {e}")
  return golds


def parse_drop(row: dict, where: str) -> Example:
  text = f"{_field(row, 'passage', where)}\nQ: {_field(row, 'question', where)}\nA:"
  return Example(text, drop_golds(row, where))


def parse_mmlu(row: dict, where: str) -> Example:
  return _mcq(_field(row, "question", where), _field(row, "choices", where, list),
              _int_field(row, "answer", where), where, _field(row, "subject", where))


def parse_arc(row: dict, where: str) -> Example:
  """The answer key is found among the choice labels by position, so digit keys ("1".."4")
  and letter keys alike give the letter of that position."""
  choices = _field(row, "choices", where, dict)
  texts, labels = choices.get("text"), choices.get("label")
  if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
    raise EvalDataError(f"{where}: field 'choices' needs equal-length 'text' and 'label' lists")
  key = str(_field(row, "answerKey", where, (str, int)))
  labels = [str(l) for l in labels]
  if key not in labels:
    raise EvalDataError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
  return _mcq(_field(row, "question", where), texts, labels.index(key), where)


def parse_hellaswag(row: dict, where: str) -> Example:
  """`ctx_a`, a space, `ctx_b` through `str.capitalize` (first letter up, the rest down)."""
  query = (f"{_field(row, 'ctx_a', where)} {_field(row, 'ctx_b', where).capitalize()}\n"
           "Question: Which is the most logical continuation?")
  return _mcq(query, _field(row, "endings", where, list), _int_field(row, "label", where), where)


def parse_winogrande(row: dict, where: str) -> Example:
  options = [_field(row, "option1", where), _field(row, "option2", where)]
  return _mcq(_field(row, "sentence", where), options, _int_field(row, "answer", where) - 1,
              where)


def parse_boolq(row: dict, where: str) -> Example:
  """`question` through `str.capitalize` and a `?`; True is A (Yes)."""
  query = (f"{_field(row, 'passage', where)}\n"
           f"Question: {_field(row, 'question', where).capitalize()}?")
  return _mcq(query, ["Yes", "No"], 0 if _field(row, "answer", where, bool) else 1, where)


def parse_mmlu_pro(row: dict, where: str) -> Example:
  """`question`, `Options:`, one `(L) option` line each; gold = the `answer` letter."""
  options = _field(row, "options", where, list)
  if not 1 <= len(options) <= len(scoring.LETTERS):
    raise EvalDataError(f"{where}: need 1..26 options, got {len(options)}")
  answer = _field(row, "answer", where)
  if answer not in scoring.LETTERS[:len(options)]:
    raise EvalDataError(f"{where}: answer {answer!r} is not one of the {len(options)} option "
                        f"letters")
  text = (_field(row, "question", where) + "\nOptions:\n"
          + "".join(f"({scoring.LETTERS[i]}) {o}\n" for i, o in enumerate(options)))
  return Example(text, answer, tuple(str(o) for o in options), _field(row, "category", where))


# --- per-item scores -------------------------------------------------------------------------

def score_mcq(ex: Example, outputs: list[str]) -> dict[str, float]:
  answer = outputs[0].strip().upper()
  valid = len(answer) == 1 and answer in scoring.LETTERS[:len(ex.choices)]
  return {"accuracy": scoring.mcq_credit(outputs[0], len(ex.choices), ex.gold),
          "invalid": float(not valid)}


def score_gsm8k(ex: Example, outputs: list[str]) -> dict[str, float]:
  answer = scoring.gsm8k_answer(outputs[0])
  return {"accuracy": float(answer == ex.gold), "invalid": float(answer is None)}


def score_math(ex: Example, outputs: list[str], scorer: str = "reference") -> dict[str, float]:
  return {"accuracy": float(scoring.math_correct(outputs[0], ex.gold, scorer)),
          "invalid": float(scoring.last_boxed(outputs[0]) is None)}


def score_drop(ex: Example, outputs: list[str]) -> dict[str, float]:
  em, f1 = scoring.drop_em_f1(outputs[0].strip(), ex.gold)
  return {"em": em, "f1": f1}


def score_mmlu_pro(ex: Example, outputs: list[str]) -> dict[str, float]:
  letter = scoring.mmlu_pro_letter(outputs[0], len(ex.choices))
  credit = 1.0 / len(ex.choices) if letter is None else float(letter == ex.gold)
  return {"accuracy": credit, "invalid": float(letter is None)}


def score_aime(ex: Example, outputs: list[str]) -> dict[str, float]:
  """maj_pass@k for every k of AIME_KS, pass@k for those <= the samples, the number of valid
  votes and the size of the largest vote."""
  votes = [scoring.aime_vote(o) for o in outputs]
  correct = sum(scoring.aime_correct(o, ex.gold) for o in outputs)
  valid = [v for v in votes if v is not None]
  out = {"valid": float(len(valid)),
         "consensus": float(max((valid.count(v) for v in set(valid)), default=0))}
  for k in AIME_KS:
    out[f"maj_pass@{k}"] = scoring.maj_pass_at_k(votes, ex.gold, k)
    if k <= len(outputs):
      out[f"pass@{k}"] = scoring.pass_at_k(len(outputs), correct, k)
  return out


# --- the registry ----------------------------------------------------------------------------

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
GREEDY = GenSettings(context=CONTEXT)
ONE_TOKEN = GenSettings(context=MCQ_CONTEXT, max_new_tokens=1)


def benchmarks(aime_samples: int = AIME_SAMPLES, math_scorer: str = "reference"
               ) -> dict[str, Benchmark]:
  """Every benchmark by name; AIME draws `aime_samples` samples per problem; MATH is scored
  by `math_scorer` ("reference" or "latex", `scoring.math_correct`)."""
  if aime_samples < 1:
    raise ValueError(f"aime_samples={aime_samples} must be >= 1")
  if math_scorer not in scoring.MATH_SCORERS:
    raise ValueError(f"math_scorer={math_scorer!r}: expected one of {scoring.MATH_SCORERS}")
  mcq = dict(condition="direct", render=render_mcq, score=score_mcq, metric="accuracy",
             settings=ONE_TOKEN)
  items = [
      Benchmark("GSM8K", "gsm8k", Split("test", "openai/gsm8k", ("main",), "test"), None, 0,
                "synth,cot", ("question", "answer ('... #### N')"), parse_gsm8k, render_bare,
                score_gsm8k, "accuracy", GREEDY),
      Benchmark("MATH", "math", Split("test", "EleutherAI/hendrycks_math", MATH_SUBJECTS,
                                      "test"), None, 0, "synth,cot",
                ("problem", "solution (gold = its last \\boxed{})"), parse_math, render_bare,
                functools.partial(score_math, scorer=math_scorer), "accuracy", GREEDY),
      Benchmark("DROP", "drop", Split("validation", "EleutherAI/drop", (None,), "validation"),
                None, len(drop_shots.SHOTS), "direct",
                ("passage", "question", "answer + validated_answers (EleutherAI/drop)"),
                parse_drop, render_drop, score_drop, "f1", GREEDY),
      Benchmark("MMLU", "mmlu", Split("test", "cais/mmlu", ("all",), "test"),
                Split("dev", "cais/mmlu", ("all",), "dev"), MMLU_SHOTS,
                columns=("question", "subject", "choices", "answer (index)"), parse=parse_mmlu,
                special_shots=MMLU_SPECIAL_SHOTS, macro_by_group=True, **mcq),
      Benchmark("ARC-C", "arc_challenge",
                Split("test", "allenai/ai2_arc", ("ARC-Challenge",), "test"),
                Split("validation", "allenai/ai2_arc", ("ARC-Challenge",), "validation"), 25,
                columns=("question", "choices {text, label}", "answerKey"), parse=parse_arc,
                **mcq),
      Benchmark("HellaSwag", "hellaswag",
                Split("validation", "Rowan/hellaswag", (None,), "validation"),
                Split("train", "Rowan/hellaswag", (None,), "train"), 10,
                columns=("ctx_a", "ctx_b", "endings", "label"), parse=parse_hellaswag, **mcq),
      Benchmark("Winogrande", "winogrande",
                Split("validation", "allenai/winogrande", ("winogrande_debiased",),
                      "validation"),
                Split("train", "allenai/winogrande", ("winogrande_debiased",), "train"), 5,
                columns=("sentence", "option1", "option2", "answer ('1'/'2')"),
                parse=parse_winogrande, **mcq),
      Benchmark("BoolQ", "boolq", Split("validation", "google/boolq", (None,), "validation"),
                Split("train", "google/boolq", (None,), "train"), 5,
                columns=("question", "passage", "answer (bool)"), parse=parse_boolq, **mcq),
      Benchmark("AIME", "aime", Split("test", "math-ai/aime25", (None,), "test"), None, 0,
                "synth,cot", ("problem", "answer (integer)"), parse_aime, render_bare,
                score_aime, "maj_pass@1",
                GenSettings(context=AIME_CONTEXT, temperature=AIME_TEMPERATURE,
                            samples=aime_samples)),
      Benchmark("MMLU-Pro", "mmlu_pro", Split("test", "TIGER-Lab/MMLU-Pro", ("default",),
                                              "test"), None, 0, "synth,cot",
                ("question", "options", "answer (letter)", "category"), parse_mmlu_pro,
                render_bare, score_mmlu_pro, "accuracy", GREEDY, macro_by_group=True),
  ]
  return {b.name: b for b in items}


def select(names: Optional[str], aime_samples: int = AIME_SAMPLES,
           math_scorer: str = "reference") -> list[Benchmark]:
  """Benchmarks named in a comma list (case-insensitive), in registry order; `DEFAULT` (the
  reference's default run) when `names` is None."""
  registry = benchmarks(aime_samples, math_scorer)
  if names is None:
    return [registry[n] for n in DEFAULT]
  by_lower = {n.lower(): n for n in registry}
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  if not wanted:
    raise ValueError(f"--run_only={names!r} selects no benchmark; name at least one of "
                     f"{list(registry)}")
  unknown = [n for n in wanted if n.lower() not in by_lower]
  if unknown:
    raise ValueError(f"--run_only: unknown benchmark(s) {unknown}; known: {list(registry)}")
  chosen = {by_lower[n.lower()] for n in wanted}
  return [b for n, b in registry.items() if n in chosen]
