"""hrm_jax.eval.tasks / sources / runner without a model: each benchmark's schema read from
the invented fixtures (JSONL and parquet, and through `datasets`), gold answers, the prompts
of every benchmark against the reference format written out, per-row generation budgets,
AIME metrics against hand-computed values, and clear errors for bad data."""

import json
import pathlib

import datasets
import pytest

from hrm_jax.data import demo
from hrm_jax.eval import drop_shots, runner, scoring, sources, tasks
from hrm_jax.tokenizer import Tokenizer, TokenizerInfo

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "eval"
REGISTRY = tasks.benchmarks(aime_samples=4)


def expected_prompts() -> list[dict]:
  """The blocks of fixtures/eval/expected_prompts.txt as dump records."""
  text = (FIXTURES / "expected_prompts.txt").read_text(encoding="utf-8").removesuffix("\n")
  out = []
  for block in text.split("\n=== ")[1:]:  # [0] is the file's explanation
    header, _, prompt = block.partition("\n")
    name, index, condition = header.split(" ")
    out.append({"benchmark": name, "index": int(index), "condition": condition,
                "prompt": prompt})
  return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  built = demo.build_tokenizer()
  built.save(str(path))
  return Tokenizer.load(str(path), TokenizerInfo.default(str(path), built.get_vocab_size()))


def load(name: str, limit=None):
  return runner.load_examples(REGISTRY[name], str(FIXTURES), limit)


def prompts(name: str) -> list[str]:
  return [tasks.prompt(REGISTRY[name], ex, load(name)[1]) for ex in load(name)[0]]


def test_gold_answers_of_every_schema():
  golds = lambda name: [ex.gold for ex in load(name)[0]]
  assert golds("GSM8K") == [42, 2400, 18]                       # '#### 2,400' -> 2400
  assert golds("MATH") == [r"\frac{1}{2}", "32", "5"]           # last box of the solution
  assert golds("DROP") == [[("Dale Pim",)], [("600",)], [("Otters", "Herons")], [("1811",)]]
  assert golds("MMLU") == ["C", "B", "C", "A", "B"]             # read from parquet
  assert [ex.group for ex in load("MMLU")[0]][2:] == [
      "elementary_mathematics", "virology", "high_school_european_history"]
  assert golds("ARC-C") == ["B", "A", "B", "E"]                 # digit key "1" -> first, A
  assert golds("HellaSwag") == ["A", "B", "A"]
  assert golds("Winogrande") == ["B", "A"]                      # answer "2" -> option2
  assert golds("BoolQ") == ["A", "B", "A"]                      # True -> A. Yes
  assert golds("AIME") == [1, 24]
  assert golds("MMLU-Pro") == ["D", "B", "A"]
  # Shots: only the rows used are read (MMLU: every dev row, picked per subject).
  assert [len(load(n)[1]) for n in ("MMLU", "ARC-C", "HellaSwag", "BoolQ", "DROP")] == [
      16, 25, 10, 5, 0]
  assert len(load("GSM8K", limit=2)[0]) == 2


def test_prompts_of_every_benchmark_match_the_reference_format():
  """Every fixture prompt equals the block written out in expected_prompts.txt."""
  expected = expected_prompts()
  got = [r for name in REGISTRY for r in runner.prompt_records(REGISTRY[name], *load(name))]
  assert [(r["benchmark"], r["index"]) for r in got] == [
      (r["benchmark"], r["index"]) for r in expected]
  for g, e in zip(got, expected):
    assert g == e, g["benchmark"]


def test_multiple_choice_format_details():
  """The edge cases the issue names, spelled out: no header, no `Question:` prefix of the
  format's own, shots joined by a blank line, `Answer: L` after each shot."""
  mmlu = prompts("MMLU")
  # Whitespace stripped around the query and each choice; a subject with 2 dev rows gets 2
  # shots, high_school_european_history 3 of its 4.
  assert mmlu[3] == ("Invented virology question 0?\nA. p\nB. q\nC. r\nD. s\nAnswer: B\n\n"
                     "Invented virology question 1?\nA. p\nB. q\nC. r\nD. s\nAnswer: D\n\n"
                     "Which invented virus infects the Zor moths?\n"
                     "A. Kalo\nB. Mebb\nC. Tusk\nD. Ivo\nAnswer:")
  assert mmlu[4].count("Answer: ") == 3 and "history question 3" not in mmlu[4]
  arc = prompts("ARC-C")
  # Shots are the first 25 rows of validation; the first one's spaces are stripped.
  assert arc[0].startswith("Invented science fact number 0 is about?\nA. rocks\nB. stars\n")
  assert arc[0].count("Answer: ") == 25 and "number 25 " not in arc[0]
  assert arc[1].endswith("\n\nWhat do seeds of the invented plant Tavra need to sprout?\n"
                         "A. water\nB. sand\nC. salt\nD. ice\nAnswer:")  # digit labels
  assert arc[2].endswith("Which unit measures force?\nA. meter\nB. newton\nC. liter\nAnswer:")
  assert arc[3].endswith("Which of these invented moons is largest?\nA. Io-2\nB. Pell\n"
                         "C. Quan\nD. Rhe\nE. Sorn\nAnswer:")
  hellaswag = prompts("HellaSwag")
  assert hellaswag[0].startswith("A runner ties shoe 0. She\nQuestion: Which is the most "
                                 "logical continuation?\nA. starts to jog.\n")
  # ctx_b "then the Chef adds SALT" -> str.capitalize: "Then the chef adds salt".
  assert hellaswag[2].endswith("\n\nA chef chops onions. Then the chef adds salt\nQuestion: "
                               "Which is the most logical continuation?\nA. to the pot.\n"
                               "B. to the sky.\nC. to his shoe.\nD. to the cat.\nAnswer:")
  # Empty ctx_b: the space after ctx_a stays (only the whole prompt is stripped).
  assert "Check the soil. \nQuestion:" in hellaswag[1]
  boolq = prompts("BoolQ")
  assert boolq[0].startswith("Fact 0 is false.\nQuestion: Is fact 0 true?\nA. Yes\nB. No\n"
                             "Answer: B\n\nFact 1 is true.\n")
  assert boolq[2].endswith("\n\nLake Vorn freezes every January.\nQuestion: Does lake vorn "
                           "freeze in winter?\nA. Yes\nB. No\nAnswer:")
  assert prompts("Winogrande")[1].endswith(
      "Answer: A\n\nAna lent Bo a pen because _ had two of them.\nA. Ana\nB. Bo\nAnswer:")


def test_free_form_prompts():
  assert prompts("GSM8K")[0] == "A crate holds 6 lemons. How many lemons are in 7 crates?"
  assert prompts("MATH")[1] == "What is $2^5$?"
  assert prompts("AIME") == ["Find the remainder when 7^4 is divided by 100.",
                             "How many positive divisors does 360 have?"]
  assert prompts("MMLU-Pro")[1] == "What is 12 * 12?\nOptions:\n(A) 124\n(B) 144\n(C) 142\n(D) 132"
  drop = prompts("DROP")
  shots = [f"{p}\nQ: {q}\nA: {a}" for p, q, a in drop_shots.SHOTS]
  assert shots[0].startswith("To start the season, the Lions traveled south to Tampa")
  assert shots[0].endswith("\nQ: How many points did the buccaneers need to tie in the first?"
                           "\nA: 3")
  assert shots[1].endswith("\nQ: How many games had the Bills won before this game?\nA: 0")
  assert shots[2].endswith("\nQ: How many years before Navarrase used the captivity of John "
                           "II?\nA: 9")
  assert drop[0] == "\n\n".join(shots) + (
      "\n\nThe Otters scored two field goals in the first half, then the Herons answered with "
      "a 40-yard touchdown run by Dale Pim.\nQ: Who scored the touchdown?\nA:")
  assert [b.condition for b in REGISTRY.values()] == [
      "synth,cot", "synth,cot", "direct", "direct", "direct", "direct", "direct", "direct",
      "synth,cot", "synth,cot"]


def test_arc_digit_answer_keys_score_by_position():
  """The row with labels 1..4 and answerKey '1': answering A (the first choice) is right."""
  ex = load("ARC-C")[0][1]
  assert tasks.score_mcq(ex, ["A"]) == {"accuracy": 1.0, "invalid": 0.0}
  assert tasks.score_mcq(ex, ["B"])["accuracy"] == 0.0
  assert tasks.score_mcq(ex, ["1"]) == {"accuracy": 0.25, "invalid": 1.0}
  three, five = load("ARC-C")[0][2:4]
  assert tasks.score_mcq(three, ["D"])["accuracy"] == pytest.approx(1 / 3)  # not a choice
  assert tasks.score_mcq(five, [" e"]) == {"accuracy": 1.0, "invalid": 0.0}
  assert tasks.score_mcq(five, [""])["accuracy"] == pytest.approx(1 / 5)  # prompt too long


def test_per_row_budgets_to_the_context(tok):
  """Each row generates to the end of its own context; prompts that fill it get nothing."""
  examples, _ = load("GSM8K")
  p = runner.build_prompts(REGISTRY["GSM8K"], examples, [], tok, max_seq_len=4096)
  assert p.window == tasks.CONTEXT
  assert [len(i) + n for i, n in zip(p.ids, p.max_new)] == [tasks.CONTEXT] * 3
  assert len(set(p.max_new)) == 2  # two prompt lengths, two budgets
  capped = runner.build_prompts(REGISTRY["GSM8K"], examples, [], tok, 4096, cap=16)
  assert capped.max_new == [16] * 3
  assert p.ids[0] == tok.format_prompt(examples[0].text.strip(), "synth,cot")
  # A 60-token window: rows of 59 tokens or more cannot generate; no shot is ever dropped.
  lengths = [len(i) for i in p.ids]
  small = runner.build_prompts(REGISTRY["GSM8K"], examples, [], tok, max_seq_len=60)
  assert small.max_new == [max(60 - n, 0) for n in lengths] and small.too_long >= 1
  mcq = runner.build_prompts(REGISTRY["BoolQ"], *load("BoolQ"), tok, max_seq_len=4096)
  assert mcq.window == tasks.MCQ_CONTEXT and mcq.max_new == [1, 1, 1]
  assert mcq.shots_used == [5, 5, 5]
  tight = runner.build_prompts(REGISTRY["BoolQ"], *load("BoolQ"), tok,
                               max_seq_len=len(mcq.ids[1]) + 1)
  assert tight.max_new[1] == 1 and tight.too_long == sum(len(i) > len(mcq.ids[1]) for i in mcq.ids)
  assert runner.row_budget(tasks.ONE_TOKEN, 10, 9) == 1
  assert runner.row_budget(tasks.ONE_TOKEN, 10, 10) == 0
  assert runner.row_budget(tasks.GREEDY, 10, 3, cap=100) == 7


def test_missing_files_are_one_error_listing_what_is_expected(tmp_path):
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "test.jsonl").write_text((FIXTURES / "gsm8k" / "test.jsonl").read_text())
  benches = tasks.select("gsm8k,MMLU,drop,arc-c,mmlu-pro")
  with pytest.raises(sources.EvalDataError) as e:
    sources.check_local(str(tmp_path), runner.needed_files(benches))
  msg = str(e.value)
  assert "gsm8k" not in msg.split("expected:")[1]
  for path in ("mmlu/test", "mmlu/dev", "drop/validation", "arc_challenge/validation",
               "arc_challenge/test", "mmlu_pro/test"):
    assert str(tmp_path / path) + ".jsonl|.parquet" in msg
  assert "drop/train" not in msg  # DROP's shots are fixed
  assert "question, subject, choices, answer (index)" in msg
  with pytest.raises(sources.EvalDataError, match="not a directory"):
    sources.check_local(str(tmp_path / "nope"), runner.needed_files(benches))


def test_bad_rows_name_the_file_row_and_field(tmp_path):
  bad = tmp_path / "gsm8k"
  bad.mkdir()
  (bad / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "12"}) + "\n")
  with pytest.raises(sources.EvalDataError, match=r"test.jsonl:1: field 'answer' has no "
                                                  "'#### <number>'"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  (bad / "test.jsonl").write_text(json.dumps({"prompt": "q", "answer": "#### 1"}) + "\n")
  with pytest.raises(sources.EvalDataError, match="test.jsonl:1: missing field 'question'"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  (bad / "test.jsonl").write_text("{not json\n")
  with pytest.raises(sources.EvalDataError, match=r"test.jsonl:1: not valid JSON"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  arc = {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}
  with pytest.raises(sources.EvalDataError, match=r"answerKey 'C' is not one of the labels"):
    tasks.parse_arc(arc, "arc.jsonl: row 3")
  with pytest.raises(sources.EvalDataError, match=r"row 1: field 'solution' has no \\boxed"):
    tasks.parse_math({"problem": "p", "solution": "42"}, "math.jsonl: row 1")
  with pytest.raises(sources.EvalDataError, match="answer 'K' is not one of the 4 option"):
    tasks.parse_mmlu_pro({"question": "q", "options": list("abcd"), "answer": "K",
                          "category": "c"}, "x")


def test_select_by_name():
  assert [b.name for b in tasks.select("math,DROP")] == ["MATH", "DROP"]
  assert [b.name for b in tasks.select(None)] == list(tasks.DEFAULT)  # no AIME, no MMLU-Pro
  assert len(tasks.select(",".join(REGISTRY))) == 10
  with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['SQuAD'\]"):
    tasks.select("MATH,SQuAD")
  for nothing in (",", "", " , "):
    with pytest.raises(ValueError, match="--run_only=.* selects no benchmark"):
      tasks.select(nothing)
  assert tasks.benchmarks()["AIME"].settings == tasks.GenSettings(
      context=4096, temperature=0.6, samples=256)
  assert tasks.benchmarks()["MMLU"].special_shots == (("high_school_european_history", 3),)


def test_hub_path_through_datasets(monkeypatch):
  """Without --data_dir rows come from datasets.load_dataset(path, config, split); here it is
  redirected to the fixture (no network) to check the calls and the rows."""
  calls = []
  real = datasets.load_dataset

  def fake(path, name=None, split=None):
    calls.append((path, name, split))
    return real("json", data_files=str(FIXTURES / "arc_challenge" / "validation.jsonl"),
                split="train")

  monkeypatch.setattr(datasets, "load_dataset", fake)
  examples, shots = runner.load_examples(REGISTRY["ARC-C"], None, limit=3)
  assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test"),
                   ("allenai/ai2_arc", "ARC-Challenge", "validation")]
  assert [ex.gold for ex in examples] == ["A", "B", "C"] and len(shots) == 25
  assert shots == load("ARC-C")[1]  # same Examples as the local JSONL path


def test_hub_failure_says_to_pass_data_dir(monkeypatch):
  def offline(path, name=None, split=None):
    raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

  monkeypatch.setattr(datasets, "load_dataset", offline)
  with pytest.raises(sources.EvalDataError) as e:
    runner.load_examples(REGISTRY["GSM8K"], None)
  assert "could not load openai/gsm8k (main) split test" in str(e.value)
  assert "ConnectionError" in str(e.value) and "pass --data_dir=DIR" in str(e.value)


AIME_OUTPUTS = ([r"so \boxed{24}"] * 3 + ["7"] * 4 + [r"\boxed{300}"] * 2
                + ["24.0", r"\boxed{1000}"] + ["I am not sure"] * 9)


def test_aime_metrics_against_hand_computed_values():
  """20 samples: votes 7 x4, 24 x3, 300 x2 (`24.0` and 1000 are no votes; 9 say nothing).
  Gold 24: top-1 vote is 7, so maj_pass@1 = 0 and @10 = @100 = 1; c = 3 correct, so
  pass@1 = 3/20 and pass@10 = 1 - C(17,10)/C(20,10) = 1 - (10*9*8)/(20*19*18) = 17/19.
  Gold 7: maj_pass@1 = 1; c = 4, pass@10 = 1 - (10*9*8*7)/(20*19*18*17) = 309/323."""
  assert len(AIME_OUTPUTS) == 20
  first = tasks.score_aime(tasks.Example("p", 24), AIME_OUTPUTS)
  assert first == pytest.approx({"valid": 9, "consensus": 4, "maj_pass@1": 0.0,
                                 "maj_pass@10": 1.0, "maj_pass@100": 1.0, "pass@1": 0.15,
                                 "pass@10": 17 / 19}, abs=1e-12)  # no pass@100 for n = 20
  second = tasks.score_aime(tasks.Example("p", 7), AIME_OUTPUTS)
  assert second["maj_pass@1"] == 1.0 and second["pass@1"] == pytest.approx(0.2)
  assert second["pass@10"] == pytest.approx(309 / 323, abs=1e-12)
  bench = tasks.benchmarks(aime_samples=20)["AIME"]
  both = runner.aggregate(bench, [tasks.Example("p", 24), tasks.Example("p", 7)],
                          [AIME_OUTPUTS, AIME_OUTPUTS])
  assert both["metric"] == "maj_pass@1" and both["score"] == 0.5
  assert both["metrics"]["pass@10"] == pytest.approx((17 / 19 + 309 / 323) / 2, abs=1e-12)
  assert both["metrics"]["valid"] == 9.0
  assert both["valid_votes"] == [9, 9] and both["consensus_votes"] == [4, 4]
  table = runner.markdown_table({"AIME": {**both, "settings": {"samples": 20}}})
  assert "| AIME | maj_pass@1 (20 samples) | 50.0 | 2 |" in table
  assert "| AIME | pass@10 (20 samples) |" in table
  assert scoring.maj_pass_at_k([None, 5, 7], 7, 1) == 0.0  # tie: the vote seen first ranks 1


def test_mmlu_pro_scores_macro_by_category():
  bench = REGISTRY["MMLU-Pro"]
  examples, _ = load("MMLU-Pro")
  outs = [[r"The answer is \boxed{(D)}"], ["(A) no, it is (B)"], ["no idea"]]
  r = runner.aggregate(bench, examples, outs)
  # engineering 1/1; math: right (1) and invalid (1/5): 0.6. Macro 0.8, micro (1+1+0.2)/3.
  assert r["groups"] == {"engineering": 1.0, "math": pytest.approx(0.6)}
  assert r["score"] == pytest.approx(0.8)
  assert r["metrics"]["micro_accuracy"] == pytest.approx(2.2 / 3)
  assert r["metrics"]["invalid"] == pytest.approx(0.25)
