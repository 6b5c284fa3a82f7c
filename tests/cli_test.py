"""experiments/convert.py and experiments/generate.py end to end (subprocesses)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

import hrm_jax
from hrm_jax import hf
from hf_test import hf_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|box_end|>", "<|object_ref_start|>",
            "<|object_ref_end|>", "<|quad_start|>", "<|quad_end|>"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                        text=True, env=env, check=True, timeout=600)


def test_convert_hf_to_native_and_back_is_exact(tmp_path):
  hf_model("h2l3").save_pretrained(tmp_path / "hf")
  run("experiments/convert.py", f"--from_hf={tmp_path / 'hf'}", f"--to={tmp_path / 'ckpt'}")
  run("experiments/convert.py", f"--from={tmp_path / 'ckpt'}", f"--to_hf={tmp_path / 'back'}")
  a, b = load_file(tmp_path / "hf" / hf.WEIGHTS), load_file(tmp_path / "back" / hf.WEIGHTS)
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_generate_cli_on_a_hugging_face_directory(tmp_path):
  """A word-level tokenizer.json over the model's 67 ids, saved beside the weights."""
  model = hf_model("h2l3")
  model.save_pretrained(tmp_path)
  words = [f"w{i}" for i in range(67 - len(SPECIALS) - 1)]
  vocab = {t: i for i, t in enumerate(["[UNK]"] + SPECIALS + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS)
  tok.save(str(tmp_path / "tokenizer.json"))
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
  assert "3/3 prompts" in out.stderr
