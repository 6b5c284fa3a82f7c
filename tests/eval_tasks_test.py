"""hrm_jax.eval.tasks / sources / runner without a model: each benchmark's schema read from
the invented fixtures (JSONL and parquet, and through `datasets`), gold answers, prompt
templates with shots dropped to fit, and clear errors for bad data."""

import json
import pathlib

import datasets
import pytest

from hrm_jax.data import demo
from hrm_jax.eval import runner, scoring, sources, tasks
from hrm_jax.tokenizer import Tokenizer, TokenizerInfo

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "eval"
REGISTRY = tasks.benchmarks(aime_samples=4)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  built = demo.build_tokenizer()
  built.save(str(path))
  return Tokenizer.load(str(path), TokenizerInfo.default(str(path), built.get_vocab_size()))


def load(name: str, limit=None):
  return runner.load_examples(REGISTRY[name], str(FIXTURES), limit)


def test_gold_answers_of_every_schema():
  golds = lambda name: [ex.gold for ex in load(name)[0]]
  assert golds("GSM8K") == [42, 2400, 18]                       # '#### 2,400' -> 2400
  assert golds("MATH") == [r"\frac{1}{2}", "32", "5"]           # last boxed, or `answer`
  assert golds("DROP") == [[("Dale Pim",)], [("600",)], [("Otters", "Herons")]]
  assert golds("MMLU") == ["C", "B", "C"]                       # read from parquet
  assert [ex.group for ex in load("MMLU")[0]] == ["astronomy", "astronomy",
                                                   "elementary_mathematics"]
  assert golds("ARC-C") == ["B", "A", "B"]                      # digit key "1" -> first, A
  assert golds("HellaSwag") == ["A", "B"]
  assert golds("Winogrande") == ["B", "A"]                      # answer "2" -> option2
  assert golds("BoolQ") == ["A", "B"]                           # True -> A. yes
  assert golds("AIME") == [1, 24]
  assert [len(load(n)[1]) for n in ("DROP", "MMLU", "ARC-C")] == [4, 10, 30]
  assert len(load("GSM8K", limit=2)[0]) == 2


def test_arc_digit_answer_keys_score_by_position():
  """The row with labels 1..4 and answerKey '1': answering A (the first choice) is right."""
  ex = load("ARC-C")[0][1]
  assert ex.text.splitlines()[1:3] == ["A. water", "B. sand"]
  assert tasks.score_mcq(ex, ["A"])["accuracy"] == 1.0
  assert tasks.score_mcq(ex, ["B"])["accuracy"] == 0.0
  assert tasks.score_mcq(ex, ["1"]) == {"accuracy": 0.25, "invalid": 1.0}
  three = load("ARC-C")[0][2]  # three choices: an invalid answer earns 1/3
  assert three.num_choices == 3 and tasks.score_mcq(three, ["D"])["accuracy"] == pytest.approx(1 / 3)


def test_prompt_templates():
  mmlu = load("MMLU")[0][0]
  assert mmlu.text == ("Question: Which planet in this invented system is closest to its star "
                       "Zor?\nA. Ulm\nB. Pek\nC. Dax\nD. Rin\nAnswer:")
  assert mmlu.target == " C"
  hs = load("HellaSwag")[0][1]  # WikiHow markup removed as lm-evaluation-harness does
  assert hs.text.splitlines()[0] == "Context: Home and Garden: How to water a fern. Check the soil."
  assert "B. If it is dry, pour water slowly at the base." in hs.text
  boolq = load("BoolQ")[0][0]
  assert "Question: Is the river kell longer than the river mor?\nA. yes\nB. no" in boolq.text
  drop = load("DROP")[0][0]
  assert drop.text.endswith("Question: Who scored the touchdown?\nAnswer:")
  assert load("DROP")[1][0].target == " 1811"  # a date answer: 'day month year' stripped


def test_drop_ucinlp_schema():
  row = {"passage": "p", "question": "q", "answers_spans": {"spans": ["A", "B"],
                                                            "types": ["span", "span"]}}
  assert tasks.parse_drop(row, "x").gold == [("A", "B")]


def test_shots_in_order_dropped_from_the_last_to_fit(tok):
  bench = REGISTRY["ARC-C"]
  examples, shots = load("ARC-C")
  full = runner.build_prompts(bench, examples[:1], shots, tok, max_seq_len=100_000)
  assert full.shots_used == [25] and full.shots_dropped == 0 and full.max_new == [1]
  text = tasks.prompt_text(bench, examples[0], shots[:25])
  assert full.ids[0] == tok.format_prompt(text, "direct")
  assert text.startswith(shots[0].text + shots[0].target + "\n\n" + shots[1].text)
  assert text.endswith(shots[24].target + "\n\n" + examples[0].text)
  budget = len(tok.format_prompt(tasks.prompt_text(bench, examples[0], shots[:7]), "direct"))
  fitted = runner.build_prompts(bench, examples[:1], shots, tok, max_seq_len=budget + 1)
  assert fitted.shots_used == [7] and fitted.shots_dropped == 1 and fitted.truncated == 0
  assert fitted.ids[0] == tok.format_prompt(tasks.prompt_text(bench, examples[0], shots[:7]),
                                            "direct")
  # MMLU takes the shots of the item's own subject.
  mmlu = runner.build_prompts(REGISTRY["MMLU"], *load("MMLU"), tok, max_seq_len=100_000)
  assert mmlu.shots_used == [5, 5, 5]
  assert "What is 1+1?" in tok.decode(mmlu.ids[2]) and "astronomy" not in tok.decode(mmlu.ids[2])


def test_context_budget_and_truncation(tok):
  gsm8k = REGISTRY["GSM8K"]
  examples, _ = load("GSM8K")
  p = runner.build_prompts(gsm8k, examples, [], tok, max_seq_len=4096)
  assert [len(i) + n for i, n in zip(p.ids, p.max_new)] == [tasks.CONTEXT] * 3  # context 3072
  capped = runner.build_prompts(gsm8k, examples, [], tok, max_seq_len=4096, cap=16)
  assert capped.max_new == [16] * 3
  short = runner.build_prompts(gsm8k, examples[:1], [], tok, max_seq_len=20)
  ids = short.ids[0]
  assert short.truncated == 1 and len(ids) == 19 and short.max_new == [1]
  cond = tok.condition_tokens("synth,cot")
  assert ids[:3] == [tok.boq_id, *cond] and ids[-1] == tok.eoq_id
  assert tok.decode(ids[3:-1]) == examples[0].text[-15:]  # keeps the end of the question


def test_missing_files_are_one_error_listing_what_is_expected(tmp_path):
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "test.jsonl").write_text((FIXTURES / "gsm8k" / "test.jsonl").read_text())
  benches = tasks.select("gsm8k,MMLU,drop")
  with pytest.raises(sources.EvalDataError) as e:
    sources.check_local(str(tmp_path), runner.needed_files(benches))
  msg = str(e.value)
  assert "gsm8k" not in msg.split("expected:")[1]
  for path in ("mmlu/test.jsonl|.parquet", "mmlu/dev.jsonl|.parquet", "drop/validation",
               "drop/train"):
    assert str(tmp_path / path.split("|")[0].split(".")[0]) in msg
  assert "question, subject, choices, answer (index)" in msg
  with pytest.raises(sources.EvalDataError, match="not a directory"):
    sources.check_local(str(tmp_path / "nope"), runner.needed_files(benches))


def test_bad_rows_name_the_file_row_and_field(tmp_path):
  bad = tmp_path / "gsm8k"
  bad.mkdir()
  (bad / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "12"}) + "\n")
  with pytest.raises(sources.EvalDataError, match=r"test.jsonl: row 0: field 'answer' has no "
                                                  "'#### <number>'"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  (bad / "test.jsonl").write_text(json.dumps({"prompt": "q", "answer": "#### 1"}) + "\n")
  with pytest.raises(sources.EvalDataError, match="row 0: missing field 'question'"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  (bad / "test.jsonl").write_text("{not json\n")
  with pytest.raises(sources.EvalDataError, match=r"test.jsonl:1: not valid JSON"):
    runner.load_examples(REGISTRY["GSM8K"], str(tmp_path))
  arc = {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}
  with pytest.raises(sources.EvalDataError, match=r"answerKey 'C' is not one of the labels"):
    tasks.parse_arc(arc, "arc.jsonl: row 3")


def test_select_by_name():
  assert [b.name for b in tasks.select("math,DROP")] == ["MATH", "DROP"]
  assert len(tasks.select(None)) == 9
  with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['SQuAD'\]"):
    tasks.select("MATH,SQuAD")
  assert tasks.benchmarks(8)["AIME"].metric == "maj@8" and tasks.sample_ks(8) == [1, 2, 4, 8]


def test_hub_path_through_datasets(monkeypatch):
  """Without --data_dir rows come from datasets.load_dataset(path, config, split); here it is
  redirected to the fixture (no network) to check the call and the rows."""
  calls = []
  real = datasets.load_dataset

  def fake(path, name=None, split=None):
    calls.append((path, name, split))
    return real("json", data_files=str(FIXTURES / "mmlu" / "dev.jsonl"), split="train")

  monkeypatch.setattr(datasets, "load_dataset", fake)
  examples, shots = runner.load_examples(REGISTRY["MMLU"], None, limit=3)
  assert calls == [("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")]
  assert [ex.gold for ex in examples] == ["A", "B", "C"] and len(shots) == 10
  assert examples == load("MMLU")[1][:3]  # same Examples as the local JSONL path


def test_score_aime_samples():
  ex = tasks.Example("p", "24", 24)
  out = tasks.score_aime(ex, [r"\boxed{24}", "24", "7", "junk"])
  assert out == {"maj@1": 1.0, "pass@1": 0.5, "maj@2": 1.0,
                 "pass@2": pytest.approx(1 - 1 / 6), "maj@4": 1.0, "pass@4": 1.0}
  assert scoring.majority([scoring.gsm8k_answer(o) for o in ["7", "7", "24"]]) == 7
