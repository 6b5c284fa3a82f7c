"""experiments/eval.py end to end, in-process: a tiny random HRM (Hugging Face and native
checkpoints, the demo character tokenizer) on every invented fixture benchmark; the engine's
batched outputs, each row with its own budget, against direct `generate` calls; the depth
sweep's table and PNG; --dump_prompts against the written-out prompts; flag and offline
errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import app, flags

import hrm_jax
from experiments import eval as eval_cli
from hrm_jax import hf, native_weights
from hrm_jax.data import demo
from hrm_jax.eval import runner, scoring, sources, tasks
from hrm_jax.tokenizer import Tokenizer, TokenizerInfo

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "eval"
ALL = ",".join(tasks.benchmarks())
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expected_prompts() -> list[dict]:
  """fixtures/eval/expected_prompts.txt as dump records (its format: that file's header)."""
  text = (FIXTURES / "expected_prompts.txt").read_text(encoding="utf-8").removesuffix("\n")
  records = []
  for block in text.split("\n=== ")[1:]:
    header, _, prompt = block.partition("\n")
    name, index, condition = header.split(" ")
    records.append({"benchmark": name, "index": int(index), "condition": condition,
                    "prompt": prompt})
  return records


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random hrm (hidden 32, one layer per stack, H1 L1, float32, context 1024) saved as
  Hugging Face, with the demo tokenizer (it has the direct, cot and synth condition tokens)
  beside it. Its character tokens make the 25-shot ARC, 10-shot HellaSwag and 3-shot DROP
  prompts longer than 1024: those get empty outputs, as in the reference."""
  root = tmp_path_factory.mktemp("ckpt")
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=2,
                                vocab_size=256, max_seq_len=1024, H_cycles=1, L_cycles=1)
  batch = {"inputs": np.ones((1, 4), np.int32), "positions": np.arange(4, dtype=np.int32)[None],
           "segment_ids": np.ones((1, 4), np.int32), "prefix_mask": np.ones((1, 4), bool)}
  variables = jax.jit(hrm_jax.LanguageModel(config).init)(jax.random.PRNGKey(0), batch)
  hf.save(root / "hf", config, variables)
  tok_json = root / "hf" / "tokenizer.json"
  built = demo.build_tokenizer()
  built.save(str(tok_json))
  info = TokenizerInfo.default(str(tok_json), built.get_vocab_size(with_added_tokens=True))
  (root / "hf" / "tokenizer_info.json").write_text(json.dumps(info.to_dict()))
  return root / "hf", Tokenizer.load(str(tok_json), info)


def run_eval(*args: str) -> None:
  f = flags.FLAGS
  f(["eval.py", *args])
  try:
    eval_cli.main([])
  finally:
    f.unparse_flags()


def test_every_benchmark_end_to_end(checkpoint, tmp_path, capsys):
  path, tok = checkpoint
  out = tmp_path / "results.json"
  run_eval(f"--checkpoint={path}", f"--data_dir={FIXTURES}", "--limit=2", "--batch_size=4",
           "--max_new_tokens=8", "--aime_samples=2", f"--run_only={ALL}", f"--output={out}",
           "--noprogress")
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  results = saved["results"]
  assert list(results) == list(tasks.benchmarks())
  for name, r in results.items():
    assert 0.0 <= r["score"] <= 1.0 and r["n"] == 2, name
    if name != "AIME":
      assert f"| {name} | {r['metric']} | {100 * r['score']:.1f} | 2 |" in printed
  aime = results["AIME"]
  assert aime["metric"] == "maj_pass@1" and set(aime["metrics"]) == {
      "valid", "consensus", "maj_pass@1", "maj_pass@10", "maj_pass@100", "pass@1"}
  assert "| AIME | maj_pass@1 (2 samples) |" in printed
  assert set(results["DROP"]["metrics"]) == {"em", "f1"}
  assert saved["settings"]["H_cycles"] == 1 and saved["settings"]["max_seq_len"] == 1024
  assert saved["settings"]["math_scorer"] == "reference"
  # Prompts longer than the context get empty outputs, scored as invalid.
  for name in ("ARC-C", "HellaSwag", "DROP"):
    assert results[name]["too_long"] == 2 and results[name]["context"] == 1024, name
    assert [e["output"] for e in results[name]["examples"]] == ["", ""]
  assert results["ARC-C"]["score"] == 0.25 and results["ARC-C"]["metrics"]["invalid"] == 1.0
  assert results["MMLU"]["too_long"] == 0 and results["MMLU"]["reference_context"] == 4096
  # Multiple choice: the recorded one-token answers give the score (MMLU: macro over subjects).
  for name in ("Winogrande", "BoolQ"):
    examples, _ = runner.load_examples(tasks.benchmarks()[name], str(FIXTURES), 2)
    credits = [scoring.mcq_credit(e["output"], len(ex.choices), ex.gold)
               for e, ex in zip(results[name]["examples"], examples)]
    assert results[name]["score"] == pytest.approx(np.mean(credits), abs=1e-12)
    assert all(len(tok.encode_text(e["output"])) <= 1 for e in results[name]["examples"])
  mmlu = results["MMLU"]
  assert mmlu["score"] == pytest.approx(np.mean(list(mmlu["groups"].values())), abs=1e-12)
  # Sorting, batching and padding do not change any output: direct generate on GSM8K.
  config, variables = hf.load(path)
  bench = tasks.benchmarks()["GSM8K"]
  examples, shots = runner.load_examples(bench, str(FIXTURES), 2)
  prompts = runner.build_prompts(bench, examples, shots, tok, config.max_seq_len, 8)
  # (Four rows in another order: the runner's batch shape, so nothing recompiles.)
  direct = hrm_jax.generate(config, variables, prompts.ids[::-1] * 2, 8, eos_id=tok.eoa_id)
  assert [e["output"] for e in results["GSM8K"]["examples"]] == [
      tok.decode([t for t in d if t != tok.eoa_id]) for d in direct[1::-1]]


def test_each_row_keeps_its_own_budget(checkpoint):
  """Rows of one stream with budgets 3, 11 and 6: each output equals that row generated
  alone with its own budget (today's random model never emits eoa, so each is exactly its
  budget long); a row without budget gets an empty output."""
  path, tok = checkpoint
  config, variables = hf.load(path)
  prompts = [tok.format_prompt(t, "direct") for t in ("one two", "three", "four five six")]
  budgets = [3, 11, 6]
  requests = [runner.Request("x", i, tuple(p), n) for i, (p, n) in
              enumerate(zip(prompts, budgets))] + [runner.Request("x", 3, tuple(prompts[0]), 0)]
  texts = runner.run_stream(config, variables, tok, tasks.GREEDY, requests, 4,
                            jax.random.PRNGKey(0), "x", progress=False)
  alone = [hrm_jax.generate(config, variables, [p], n, eos_id=tok.eoa_id)[0]
           for p, n in zip(prompts, budgets)]
  assert [len(a) for a in alone] == budgets and tok.eoa_id not in sum(alone, [])
  assert texts == [tok.decode(a) for a in alone] + [""]


def test_dump_prompts_is_the_reference_protocol_and_loads_no_model(tmp_path, capsys):
  out = tmp_path / "prompts.jsonl"
  run_eval(f"--data_dir={FIXTURES}", f"--run_only={ALL}", f"--dump_prompts={out}")
  lines = out.read_text(encoding="utf-8").splitlines()
  assert [json.loads(l) for l in lines] == expected_prompts()
  assert f"wrote {len(lines)} prompts" in capsys.readouterr().out
  with pytest.raises(app.UsageError, match=r"--dump_prompts=.*exists; pass --overwrite"):
    run_eval(f"--data_dir={FIXTURES}", f"--dump_prompts={out}")
  run_eval(f"--data_dir={FIXTURES}", "--run_only=AIME", f"--dump_prompts={out}", "--overwrite")
  data = tmp_path / "data"
  (data / "aime").mkdir(parents=True)
  aime = (FIXTURES / "aime" / "test.jsonl").read_text()
  (data / "aime" / "test.jsonl").write_text(aime)
  with pytest.raises(app.UsageError, match="is one of the benchmark files this run reads"):
    run_eval(f"--data_dir={data}", "--run_only=AIME", "--overwrite",
             f"--dump_prompts={data / 'aime' / 'test.jsonl'}")
  assert (data / "aime" / "test.jsonl").read_text() == aime
  assert [json.loads(l)["benchmark"] for l in out.read_text().splitlines()] == ["AIME"] * 2


@pytest.mark.parametrize("args, message", [
    (["--run_only=,"], r"--run_only=',' selects no benchmark"),
    (["--run_only="], r"--run_only='' selects no benchmark"),
    (["--max_new_tokens=0"], r"--max_new_tokens=0 must be >= 1 \(leave it unset"),
    (["--aime_samples=0"], r"--aime_samples=0 must be >= 1"),
    (["--batch_size=0"], r"--batch_size=0 must be >= 1"),
])
def test_flag_errors_name_the_flag(args, message, tmp_path):
  with pytest.raises(app.UsageError, match=message):
    run_eval(f"--checkpoint={tmp_path}", f"--data_dir={FIXTURES}", *args)


def test_checkpoint_is_required_unless_dumping(tmp_path):
  with pytest.raises(app.UsageError, match=r"--checkpoint is required \(unless --dump_prompts\)"):
    run_eval(f"--data_dir={FIXTURES}")


@pytest.mark.slow  # spawns experiments/*.py
def test_without_data_dir_and_network_the_error_says_to_pass_data_dir(tmp_path):
  """A real subprocess with the hub unreachable (offline mode, an empty cache)."""
  env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
         "HF_DATASETS_OFFLINE": "1", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "eval.py"),
                         "--run_only=GSM8K", f"--dump_prompts={tmp_path / 'p.jsonl'}"],
                        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "could not load openai/gsm8k (main) split test from the Hugging Face hub" in proc.stderr
  assert "pass --data_dir=DIR" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "p.jsonl").exists()


def test_native_checkpoint_and_depth_sweep(checkpoint, tmp_path, capsys):
  path, _ = checkpoint
  config, variables = hf.load(path)
  native_weights.save(tmp_path / "native", config, variables, extra_files=[path / "tokenizer.json",
                                                                    path / "tokenizer_info.json"])
  out = tmp_path / "sweep" / "depth.json"
  run_eval(f"--checkpoint={tmp_path / 'native'}", f"--data_dir={FIXTURES}", "--limit=2",
           "--batch_size=4", "--run_only=arc-c,BoolQ", "--sweep_cycles=1,2", "--L_cycles=2",
           f"--output={out}", "--noprogress")
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  assert saved["settings"]["L_cycles"] == 2  # the override holds at every swept H_cycles
  sweep = saved["sweep"]
  assert sweep["axis"] == "H_cycles" and sweep["values"] == [1, 2]
  assert list(sweep["results"]["2"]) == ["ARC-C", "BoolQ"]
  table = (tmp_path / "sweep" / "depth_sweep.md").read_text()
  assert "| benchmark (metric) | H_cycles=1 | H_cycles=2 |" in table and table.strip() in printed
  png = (tmp_path / "sweep" / "depth_sweep.png").read_bytes()
  assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_missing_benchmark_files_exit_with_the_expected_layout(checkpoint, tmp_path):
  path, _ = checkpoint
  with pytest.raises(sources.EvalDataError) as e:  # cli.run prints it as one line, exit 2
    run_eval(f"--checkpoint={path}", f"--data_dir={tmp_path}", "--run_only=MATH,DROP")
  msg = str(e.value)
  assert "benchmark files missing" in msg
  for expected in ("math/test.jsonl|.parquet", "drop/validation.jsonl|.parquet"):
    assert str(tmp_path / expected) in msg
