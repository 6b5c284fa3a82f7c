"""The benchmarks of REFERENCE section 6: data schema, prompt template, shots, condition,
generation settings and per-item scoring of each.

| benchmark  | condition | shots (from)    | generation                         | metric      |
|------------|-----------|-----------------|------------------------------------|-------------|
| GSM8K      | synth,cot | 0               | greedy, context 3072               | accuracy    |
| MATH       | synth,cot | 0               | greedy, context 3072               | accuracy    |
| DROP       | direct    | 3 (train)       | greedy, <= 128 new tokens          | f1 (and em) |
| MMLU       | direct    | 5 (dev, subject)| one token, the letter              | macro acc.  |
| ARC-C      | direct    | 25 (train)      | one token, the letter              | accuracy    |
| HellaSwag  | direct    | 10 (train)      | one token, the letter              | accuracy    |
| Winogrande | direct    | 5 (train)       | one token, the letter              | accuracy    |
| BoolQ      | direct    | 5 (train)       | one token, the letter              | accuracy    |
| AIME       | synth,cot | 0               | n samples at temperature 0.6, 3072 | maj@n       |

Shots are the first rows of the shot split (MMLU: the subject's dev rows), joined by blank
lines before the question; every prompt is boq + condition + text + eoq (the bidirectional
prefix) and generation stops at eoa. Multiple-choice prompts list the choices as `A. ...`
and end with `Answer:`; the single generated token is the answer letter.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence

from hrm_jax.eval import scoring
from hrm_jax.eval.sources import EvalDataError, Split

CONTEXT = 3072  # GSM8K / MATH / AIME: prompt + generation (REFERENCE section 6)
DROP_MAX_NEW = 128  # DROP answers are short spans; generation stops at eoa before that
AIME_TEMPERATURE = 0.6


@dataclasses.dataclass(frozen=True)
class GenSettings:
  """How a benchmark generates; benchmarks with equal settings share one stream.

  max_new_tokens: a fixed budget; context: instead, prompt + generation <= context.
  """
  temperature: float = 0.0
  top_p: float = 1.0
  samples: int = 1
  max_new_tokens: Optional[int] = None
  context: Optional[int] = None

  @property
  def open_ended(self) -> bool:
    """Long free-form generation (the --max_new_tokens cap applies)."""
    return self.max_new_tokens is None or self.max_new_tokens > 1


@dataclasses.dataclass(frozen=True)
class Example:
  """One benchmark item. `text` is what follows the shots (for multiple choice it ends with
  `Answer:`); `target` completes it when the item serves as a shot."""
  text: str
  target: str
  gold: Any
  num_choices: int = 0
  group: str = ""  # MMLU subject (macro-average and per-subject shots)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  folder: str  # <data_dir>/<folder>/<split>.jsonl|.parquet
  eval_split: Split
  shot_split: Optional[Split]
  shots: int
  condition: str
  columns: tuple[str, ...]  # documented in the missing-file error
  parse: Callable[[dict, str], Example]  # (row, "file:row") -> Example
  score: Callable[[Example, list[str]], dict[str, float]]  # item metrics from its outputs
  metric: str  # the headline metric, one of score's keys
  settings: GenSettings
  header: Callable[[Example], str] = lambda ex: ""
  macro_by_group: bool = False


# --- parsing rows of each source schema -----------------------------------------------------

def _field(row: dict, name: str, where: str, kind: type | tuple = str) -> Any:
  if name not in row or row[name] is None:
    raise EvalDataError(f"{where}: missing field {name!r} (has {sorted(row)})")
  value = row[name]
  if not isinstance(value, kind):
    raise EvalDataError(f"{where}: field {name!r} should be {kind}, got {type(value).__name__} "
                        f"{value!r:.80}")
  return value


def _choices_text(question: str, choices: Sequence[str]) -> str:
  if not 2 <= len(choices) <= len(scoring.LETTERS):
    raise EvalDataError(f"need 2..26 choices, got {len(choices)}")
  lines = [question] + [f"{scoring.LETTERS[i]}. {c}" for i, c in enumerate(choices)]
  return "\n".join(lines) + "\nAnswer:"


def _mcq(question: str, choices: Sequence[str], gold_index: int, where: str,
         group: str = "") -> Example:
  if not 0 <= gold_index < len(choices):
    raise EvalDataError(f"{where}: answer index {gold_index} outside the {len(choices)} choices")
  try:
    text = _choices_text(question, [str(c) for c in choices])
  except EvalDataError as e:
    raise EvalDataError(f"{where}: {e}") from e
  letter = scoring.LETTERS[gold_index]
  return Example(text, f" {letter}", letter, len(choices), group)


def _int_field(row: dict, name: str, where: str) -> int:
  value = _field(row, name, where, (int, str))
  try:
    return int(value)
  except ValueError as e:
    raise EvalDataError(f"{where}: field {name!r} should be an integer, got {value!r}") from e


def parse_gsm8k(row: dict, where: str) -> Example:
  answer = _field(row, "answer", where)
  if "####" not in answer:
    raise EvalDataError(f"{where}: field 'answer' has no '#### <number>' final answer")
  gold = scoring.gsm8k_answer(answer.split("####")[-1].strip())
  if gold is None:
    raise EvalDataError(f"{where}: the '####' answer {answer.split('####')[-1]!r} is not a number")
  return Example(_field(row, "question", where), answer, gold)


def parse_math(row: dict, where: str) -> Example:
  """Gold = the `answer` column when present, else the last boxed of `solution`."""
  problem = _field(row, "problem", where)
  gold = row.get("answer")
  if not isinstance(gold, str) or not gold.strip():
    gold = scoring.last_boxed(_field(row, "solution", where))
    if gold is None:
      raise EvalDataError(f"{where}: no 'answer' field and no \\boxed{{}} in 'solution'")
  return Example(problem, str(row.get("solution", gold)), gold)


def parse_aime(row: dict, where: str) -> Example:
  answer = _field(row, "answer", where, (int, str))
  gold = scoring.gsm8k_answer(str(answer))
  if gold is None:
    raise EvalDataError(f"{where}: field 'answer' {answer!r} is not an integer")
  return Example(_field(row, "problem", where), str(answer), gold)


def drop_golds(row: dict, where: str) -> list[tuple[str, ...]]:
  """Gold answers as span tuples. EleutherAI/drop: `answer` plus `validated_answers`, as
  lm-evaluation-harness (number, else spans, else the date 'day month year'), deduplicated;
  ucinlp/drop: `answers_spans` = {spans, types}, one gold of all its spans."""
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
  golds = drop_golds(row, where)
  text = (f"Passage: {_field(row, 'passage', where)}\n"
          f"Question: {_field(row, 'question', where)}\nAnswer:")
  return Example(text, " " + ", ".join(golds[0]), golds)


def parse_mmlu(row: dict, where: str) -> Example:
  choices = _field(row, "choices", where, list)
  return _mcq(f"Question: {_field(row, 'question', where).strip()}", choices,
              _int_field(row, "answer", where), where, _field(row, "subject", where))


def parse_arc(row: dict, where: str) -> Example:
  """The answer key is matched to the choice labels by position, so digit keys ("1".."4")
  and letter keys score alike."""
  choices = _field(row, "choices", where, dict)
  texts, labels = choices.get("text"), choices.get("label")
  if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
    raise EvalDataError(f"{where}: field 'choices' needs equal-length 'text' and 'label' lists")
  key = str(_field(row, "answerKey", where, (str, int)))
  if key not in [str(l) for l in labels]:
    raise EvalDataError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
  return _mcq(f"Question: {_field(row, 'question', where)}", texts,
              [str(l) for l in labels].index(key), where)


def _hellaswag_clean(text: str) -> str:
  """lm-evaluation-harness's HellaSwag preprocessing (WikiHow markup)."""
  text = text.strip().replace(" [title]", ". ")
  return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def parse_hellaswag(row: dict, where: str) -> Example:
  context = _field(row, "ctx", where)
  label = row.get("activity_label")
  if isinstance(label, str) and label:
    context = f"{label}: {context}"
  endings = [_hellaswag_clean(e) for e in _field(row, "endings", where, list)]
  return _mcq(f"Context: {_hellaswag_clean(context)}\nQuestion: Which ending is the most "
              "plausible?", endings, _int_field(row, "label", where), where)


def parse_winogrande(row: dict, where: str) -> Example:
  options = [_field(row, "option1", where), _field(row, "option2", where)]
  return _mcq(f"Sentence: {_field(row, 'sentence', where)}\nQuestion: Which option fills the "
              "blank (_)?", options, _int_field(row, "answer", where) - 1, where)


def parse_boolq(row: dict, where: str) -> Example:
  question = _field(row, "question", where).strip()
  question = question[0].upper() + question[1:] if question else question
  if not question.endswith("?"):
    question += "?"
  answer = _field(row, "answer", where, bool)
  return _mcq(f"Passage: {_field(row, 'passage', where)}\nQuestion: {question}", ["yes", "no"],
              0 if answer else 1, where)


# --- per-item scores -------------------------------------------------------------------------

def score_mcq(ex: Example, outputs: list[str]) -> dict[str, float]:
  answer = outputs[0].strip().upper()
  valid = len(answer) == 1 and answer in scoring.LETTERS[:ex.num_choices]
  return {"accuracy": scoring.mcq_credit(outputs[0], ex.num_choices, ex.gold),
          "invalid": float(not valid)}


def score_gsm8k(ex: Example, outputs: list[str]) -> dict[str, float]:
  return {"accuracy": float(scoring.gsm8k_answer(outputs[0]) == ex.gold)}


def score_math(ex: Example, outputs: list[str]) -> dict[str, float]:
  return {"accuracy": float(scoring.math_correct(outputs[0], ex.gold))}


def score_drop(ex: Example, outputs: list[str]) -> dict[str, float]:
  em, f1 = scoring.drop_em_f1(outputs[0].strip(), ex.gold)
  return {"em": em, "f1": f1}


def sample_ks(n: int) -> list[int]:
  """k of maj@k / pass@k reported for n samples: powers of two below n, and n."""
  return sorted({1 << i for i in range(n.bit_length()) if 1 << i < n} | {n})


def score_aime(ex: Example, outputs: list[str]) -> dict[str, float]:
  answers = [scoring.gsm8k_answer(o) for o in outputs]
  correct = sum(a == ex.gold for a in answers)
  out = {}
  for k in sample_ks(len(outputs)):
    out[f"maj@{k}"] = scoring.maj_at_k(answers, ex.gold, k)
    out[f"pass@{k}"] = scoring.pass_at_k(len(outputs), correct, k)
  return out


# --- the registry ----------------------------------------------------------------------------

def _split(file: str, hub: str, configs: Sequence[Optional[str]], hub_split: str) -> Split:
  return Split(file, hub, tuple(configs), hub_split)


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
GREEDY_CONTEXT = GenSettings(context=CONTEXT)
ONE_TOKEN = GenSettings(max_new_tokens=1)


def _mmlu_header(ex: Example) -> str:
  return (f"The following are multiple choice questions (with answers) about "
          f"{ex.group.replace('_', ' ')}.\n\n")


def benchmarks(aime_samples: int = 16) -> dict[str, Benchmark]:
  """Every benchmark by name; AIME draws `aime_samples` samples per problem."""
  mcq = dict(condition="direct", score=score_mcq, metric="accuracy", settings=ONE_TOKEN)
  items = [
      Benchmark("GSM8K", "gsm8k", _split("test", "openai/gsm8k", ["main"], "test"), None, 0,
                "synth,cot", ("question", "answer ('... #### N')"), parse_gsm8k, score_gsm8k,
                "accuracy", GREEDY_CONTEXT),
      Benchmark("MATH", "math", _split("test", "EleutherAI/hendrycks_math", MATH_SUBJECTS,
                                       "test"), None, 0, "synth,cot",
                ("problem", "answer or solution (gold = last \\boxed{})"), parse_math,
                score_math, "accuracy", GREEDY_CONTEXT),
      Benchmark("DROP", "drop", _split("validation", "EleutherAI/drop", [None], "validation"),
                _split("train", "EleutherAI/drop", [None], "train"), 3, "direct",
                ("passage", "question", "answer + validated_answers (EleutherAI/drop) or "
                 "answers_spans (ucinlp/drop)"), parse_drop, score_drop, "f1",
                GenSettings(max_new_tokens=DROP_MAX_NEW)),
      Benchmark("MMLU", "mmlu", _split("test", "cais/mmlu", ["all"], "test"),
                _split("dev", "cais/mmlu", ["all"], "dev"), 5,
                columns=("question", "subject", "choices", "answer (index)"), parse=parse_mmlu,
                header=_mmlu_header, macro_by_group=True, **mcq),
      Benchmark("ARC-C", "arc_challenge",
                _split("test", "allenai/ai2_arc", ["ARC-Challenge"], "test"),
                _split("train", "allenai/ai2_arc", ["ARC-Challenge"], "train"), 25,
                columns=("question", "choices {text, label}", "answerKey"), parse=parse_arc,
                **mcq),
      Benchmark("HellaSwag", "hellaswag", _split("validation", "Rowan/hellaswag", [None],
                                                 "validation"),
                _split("train", "Rowan/hellaswag", [None], "train"), 10,
                columns=("ctx", "endings", "label"), parse=parse_hellaswag, **mcq),
      Benchmark("Winogrande", "winogrande",
                _split("validation", "allenai/winogrande", ["winogrande_xl"], "validation"),
                _split("train", "allenai/winogrande", ["winogrande_xl"], "train"), 5,
                columns=("sentence", "option1", "option2", "answer ('1'/'2')"),
                parse=parse_winogrande, **mcq),
      Benchmark("BoolQ", "boolq", _split("validation", "google/boolq", [None], "validation"),
                _split("train", "google/boolq", [None], "train"), 5,
                columns=("question", "passage", "answer (bool)"), parse=parse_boolq, **mcq),
      Benchmark("AIME", "aime", _split("test", "HuggingFaceH4/aime_2024", [None], "train"),
                None, 0, "synth,cot", ("problem", "answer (integer)"), parse_aime, score_aime,
                f"maj@{aime_samples}",
                GenSettings(temperature=AIME_TEMPERATURE, samples=aime_samples,
                            context=CONTEXT)),
  ]
  return {b.name: b for b in items}


def select(names: Optional[str], aime_samples: int = 16) -> list[Benchmark]:
  """Benchmarks named in a comma list (case-insensitive), in registry order; all if empty."""
  registry = benchmarks(aime_samples)
  if not names:
    return list(registry.values())
  by_lower = {n.lower(): n for n in registry}
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  unknown = [n for n in wanted if n.lower() not in by_lower]
  if unknown:
    raise ValueError(f"--run_only: unknown benchmark(s) {unknown}; known: {list(registry)}")
  chosen = {by_lower[n.lower()] for n in wanted}
  return [b for n, b in registry.items() if n in chosen]


def shot_pool(bench: Benchmark, shot_examples: list[Example], ex: Example) -> list[Example]:
  """The shots of `ex`: the first `bench.shots` shot rows (of its subject for MMLU)."""
  if bench.macro_by_group:
    return [s for s in shot_examples if s.group == ex.group][:bench.shots]
  return shot_examples[:bench.shots]


def prompt_text(bench: Benchmark, ex: Example, shots: Sequence[Example]) -> str:
  return bench.header(ex) + "".join(s.text + s.target + "\n\n" for s in shots) + ex.text
