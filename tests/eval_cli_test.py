"""experiments/eval.py end to end, in-process: a tiny random HRM (Hugging Face and native
checkpoints, the demo character tokenizer) on every invented fixture benchmark; the engine's
batched outputs against direct `generate` calls; the depth sweep's table and PNG."""

import json
import pathlib

import jax
import numpy as np
import pytest
from absl import flags

import hrm_jax
from experiments import eval as eval_cli
from hrm_jax import hf, native
from hrm_jax.data import demo
from hrm_jax.eval import runner, scoring, tasks
from hrm_jax.tokenizer import Tokenizer, TokenizerInfo

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "eval"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random hrm (hidden 32, one layer per stack, H1 L1, float32) saved as Hugging Face,
  with the demo tokenizer (it has the direct, cot and synth condition tokens) beside it."""
  root = tmp_path_factory.mktemp("ckpt")
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=2,
                                vocab_size=256, max_seq_len=256, H_cycles=1, L_cycles=1)
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
           "--max_new_tokens=8", "--aime_samples=2", f"--output={out}", "--noprogress")
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  results = saved["results"]
  assert list(results) == list(tasks.benchmarks())
  for name, r in results.items():
    assert 0.0 <= r["score"] <= 1.0 and r["n"] == 2, name
    assert f"| {name} | {r['metric']} | {100 * r['score']:.1f} | 2 |" in printed
  assert results["AIME"]["metric"] == "maj@2" and set(results["AIME"]["metrics"]) == {
      "maj@1", "pass@1", "maj@2", "pass@2"}
  assert set(results["DROP"]["metrics"]) == {"em", "f1"}
  assert saved["settings"]["H_cycles"] == 1 and saved["settings"]["max_seq_len"] == 256
  # Multiple choice: the recorded one-token answers give the score (MMLU: macro over subjects).
  for name in ("ARC-C", "HellaSwag", "Winogrande", "BoolQ"):
    examples, _ = runner.load_examples(tasks.benchmarks()[name], str(FIXTURES), 2)
    credits = [scoring.mcq_credit(e["output"], ex.num_choices, ex.gold)
               for e, ex in zip(results[name]["examples"], examples)]
    assert results[name]["score"] == pytest.approx(np.mean(credits), abs=1e-12)
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


def test_native_checkpoint_and_depth_sweep(checkpoint, tmp_path, capsys):
  path, _ = checkpoint
  config, variables = hf.load(path)
  native.save(tmp_path / "native", config, variables, extra_files=[path / "tokenizer.json",
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
  with pytest.raises(SystemExit) as e:
    run_eval(f"--checkpoint={path}", f"--data_dir={tmp_path}", "--run_only=MATH,DROP")
  msg = str(e.value.code)
  assert "benchmark files missing" in msg
  for expected in ("math/test.jsonl|.parquet", "drop/validation.jsonl|.parquet",
                   "drop/train.jsonl|.parquet"):
    assert str(tmp_path / expected) in msg
