"""experiments/convert.py and experiments/generate.py end to end (subprocesses)."""

import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

import hrm_jax
from hrm_jax import hf
from helpers import run
from hf_test import hf_model

pytestmark = pytest.mark.slow  # every test spawns experiments/convert.py or generate.py
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|box_end|>", "<|object_ref_start|>",
            "<|object_ref_end|>", "<|quad_start|>", "<|quad_end|>"]


def word_model(path: pathlib.Path, max_seq_len: int | None = None) -> dict[str, int]:
  """The h2l3 model with a word-level tokenizer.json over its 67 ids; its vocabulary."""
  hf_model("h2l3").save_pretrained(path)
  if max_seq_len is not None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config,
                                                  "max_position_embeddings": max_seq_len}))
  words = [f"w{i}" for i in range(67 - len(SPECIALS) - 1)]
  vocab = {t: i for i, t in enumerate(["[UNK]"] + SPECIALS + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS)
  tok.save(str(path / "tokenizer.json"))
  return vocab


def test_convert_hf_to_native_and_back_is_exact(tmp_path):
  hf_model("h2l3").save_pretrained(tmp_path / "hf")
  run("experiments/convert.py", f"--from_hf={tmp_path / 'hf'}", f"--to={tmp_path / 'ckpt'}")
  run("experiments/convert.py", f"--from={tmp_path / 'ckpt'}", f"--to_hf={tmp_path / 'back'}")
  a, b = load_file(tmp_path / "hf" / hf.WEIGHTS), load_file(tmp_path / "back" / hf.WEIGHTS)
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_generate_cli_on_a_hugging_face_directory(tmp_path):
  """A word-level tokenizer.json over the model's 67 ids, saved beside the weights."""
  vocab = word_model(tmp_path)
  tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  out = run("experiments/generate.py", f"--checkpoint={tmp_path}", "--prompt=w1 w2 w3",
            "--condition=synth,cot", "--max_new_tokens=6")
  config, variables = hf.load(tmp_path)
  prompt = [vocab[t] for t in ["<|im_start|>", "<|quad_end|>", "<|object_ref_end|>",
                               "w1", "w2", "w3", "<|im_end|>"]]
  ids = hrm_jax.generate(config, variables, [prompt], 6, eos_id=vocab["<|box_end|>"])[0]
  # Special tokens the model emits stay visible in the completion (skip_special_tokens off).
  expected = tok.decode([i for i in ids if i != vocab["<|box_end|>"]], skip_special_tokens=False)
  assert out.stdout.strip().splitlines()[-1] == expected.strip()
  lines = tmp_path / "prompts.jsonl"
  lines.write_text("\n".join(json.dumps({"prompt": p}) for p in ["w1", "w4 w5", "w6"]) + "\n")
  out = run("experiments/generate.py", f"--checkpoint={tmp_path}", f"--prompts_jsonl={lines}",
            "--max_new_tokens=3", "--batch_size=2", "--temperature=0.7", "--seed=1")
  assert len([json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]) == 3
  assert "3/3" in out.stderr and "tokens/s" in out.stderr  # the progress bar


def test_generate_cli_enforces_max_seq_len(tmp_path):
  """Before: a prompt past max_seq_len ran and generated past it (a 404-token prompt on a
  256-token model). Prompts are boq + 2 condition tokens + words + eoq."""
  word_model(tmp_path, max_seq_len=16)
  long = " ".join(["w1"] * 13)  # 17 tokens
  out = run("experiments/generate.py", f"--checkpoint={tmp_path}", f"--prompt={long}",
            "--condition=synth,cot", ok=False)
  assert "--prompt has 17 tokens, longer than the model's max_seq_len=16" in out.stderr
  lines = tmp_path / "prompts.jsonl"
  lines.write_text(json.dumps({"prompt": "w1"}) + "\n\n" + json.dumps({"prompt": "w1 " * 9}))
  out = run("experiments/generate.py", f"--checkpoint={tmp_path}", f"--prompts_jsonl={lines}",
            "--condition=synth,cot", "--max_new_tokens=4", ok=False)
  assert (f"{lines}:3 has 13 tokens and max_new_tokens=4: 17 > the model's max_seq_len=16 "
          "(at most 3 new tokens fit)") in out.stderr
  assert not out.stdout  # checked before anything was generated
  # Left unset, --max_new_tokens is cut to what the context leaves (here 3, then 11).
  out = run("experiments/generate.py", f"--checkpoint={tmp_path}", f"--prompts_jsonl={lines}",
            "--condition=synth,cot", "--batch_size=1")
  completions = [json.loads(l)["completion"].split() for l in out.stdout.splitlines()]
  assert [len(c) <= n for c, n in zip(completions, (11, 3))] == [True, True]


def test_generate_cli_flag_and_prompts_jsonl_errors(tmp_path):
  """Before: --H_cycles=0 was ignored, and bad lines, a missing key, --batch_size=0 or a
  missing file ended in raw tracebacks without the file and line."""
  word_model(tmp_path)
  good = tmp_path / "good.jsonl"
  good.write_text(json.dumps({"prompt": "w1"}) + "\n")
  bad_json, no_key, bad_type = (tmp_path / f"{n}.jsonl" for n in ("json", "key", "type"))
  bad_json.write_text(json.dumps({"prompt": "w1"}) + "\n{not json\n")
  no_key.write_text(json.dumps({"prompt": "w1"}) + "\n" + json.dumps({"text": "w1"}) + "\n")
  bad_type.write_text(json.dumps({"prompt": "w1", "condition": ["synth"]}) + "\n")
  cases = [
      (["--prompt=w1", "--H_cycles=0"], "--H_cycles=0: must be >= 1"),
      (["--prompt=w1", "--L_cycles=-1"], "--L_cycles=-1: must be >= 1"),
      ([f"--prompts_jsonl={good}", "--batch_size=0"], "--batch_size=0: must be >= 1"),
      (["--prompt=w1", "--max_new_tokens=0"], "--max_new_tokens=0: must be >= 1"),
      ([f"--prompts_jsonl={tmp_path / 'missing.jsonl'}"],
       f"--prompts_jsonl={tmp_path / 'missing.jsonl'}: cannot read (No such file or directory)"),
      ([f"--prompts_jsonl={bad_json}"], f"{bad_json}:2: not valid JSON"),
      ([f"--prompts_jsonl={no_key}"], f'{no_key}:2: field "prompt" is missing'),
      ([f"--prompts_jsonl={bad_type}"], f'{bad_type}:1: field "condition" must be a string'),
      (["--prompt=w1", "--condition=nope"], "--prompt: unknown condition 'nope'"),
  ]
  for args, message in cases:
    out = run("experiments/generate.py", f"--checkpoint={tmp_path}", *args, ok=False)
    assert message in out.stderr, (args, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
